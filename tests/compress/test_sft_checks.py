"""The checks `hf_compress.sft` runs before training: recipe fields, chat template, assistant masks, eos, packing."""

import pytest
import torch
from datasets import Dataset

from hf_compress.sft import (
    EMBEDDED_CHAT_TEMPLATE,
    build_sft_trainer,
    check_assistant_masks,
    end_of_turn_token,
    parse_recipe,
    prepare_chat_template,
)
from kit.tiny import CHAT_TEMPLATE, build_tokenizer, make_task_dataset, tiny_causal_lm

TEMPLATE_WITHOUT_MARKERS = CHAT_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
# Marks the whole conversation as generated: the prompt would be trained on.
TEMPLATE_WITH_PROMPT_IN_LOSS = (
    "{% generation %}"
    + CHAT_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    + "{% endgeneration %}"
)


def messages_dataset(n: int = 24, seed: int = 0, max_ops: int = 2) -> Dataset:
    data = make_task_dataset("arithmetic", n, seed=seed, max_ops=max_ops)
    return data.map(lambda row: {"messages": row["prompt"] + row["completion"]}, remove_columns=data.column_names)


def recipe(tmp_path, **fields):
    base = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_length=128,
        packing=True,
        packing_strategy="bfd_split",
        num_train_epochs=1,
        report_to="none",
        save_strategy="no",
        activation_checkpointing=False,
        use_cpu=True,
        seed=0,
    )
    return parse_recipe({**base, **fields})


@pytest.fixture
def tokenizer():
    return build_tokenizer()


def test_unknown_recipe_field_is_named_with_a_suggestion(tmp_path):
    with pytest.raises(ValueError, match=r"'pakcing' \(did you mean 'packing'\?\)"):
        recipe(tmp_path, pakcing=True)


def test_recipe_mixes_sftconfig_modelconfig_and_script_fields(tmp_path):
    script_args, training_args, model_args = recipe(
        tmp_path, variant="answer_only", use_peft=True, lora_target_modules="all-linear", learning_rate=1e-4
    )
    assert script_args.variant == "answer_only"
    assert training_args.learning_rate == 1e-4 and training_args.packing_strategy == "bfd_split"
    assert model_args.use_peft and model_args.lora_target_modules == "all-linear"
    assert training_args.bf16 is (torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def test_template_without_generation_markers_fails_and_offers_the_embedded_one(tokenizer):
    tokenizer.chat_template = TEMPLATE_WITHOUT_MARKERS
    with pytest.raises(ValueError, match="use_embedded_chat_template"):
        prepare_chat_template(tokenizer)
    assert prepare_chat_template(tokenizer, use_embedded=True) is None
    assert tokenizer.chat_template == EMBEDDED_CHAT_TEMPLATE
    report = check_assistant_masks(messages_dataset(4), tokenizer)
    assert 0 < report.n_loss_tokens < report.n_tokens


def test_missing_template_fails_and_offers_the_embedded_one(tokenizer):
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="no chat template.*use_embedded_chat_template"):
        prepare_chat_template(tokenizer)


def test_masks_cover_exactly_the_assistant_turns(tokenizer):
    data = messages_dataset(8)
    report = check_assistant_masks(data, tokenizer)
    for messages in data["messages"]:
        full = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        prompt = tokenizer.apply_chat_template(
            messages[:1], tokenize=True, add_generation_prompt=True, return_dict=True
        )
        assert full[: len(prompt["input_ids"])] == prompt["input_ids"]
    assert report.n_examples == 8
    # Loss tokens are the assistant content plus <|im_end|>: everything after the generation prompt except "\n".
    expected_loss = sum(
        len(tokenizer.apply_chat_template(m, tokenize=True, return_dict=True)["input_ids"])
        - len(
            tokenizer.apply_chat_template(m[:1], tokenize=True, add_generation_prompt=True, return_dict=True)[
                "input_ids"
            ]
        )
        - 1
        for m in data["messages"]
    )
    assert report.n_loss_tokens == expected_loss


def test_empty_assistant_turn_is_rejected(tokenizer):
    data = messages_dataset(4).to_list()
    data[2]["messages"][1]["content"] = ""
    # The embedded template still trains <|im_end|> on an empty turn: a template that trains content only fails.
    tokenizer.chat_template = CHAT_TEMPLATE.replace(
        " + '<|im_end|>' }}{% endgeneration %}", " }}{% endgeneration %}<|im_end|>"
    )
    with pytest.raises(ValueError, match=r"1 example\(s\) have an empty assistant mask.*\[2\]"):
        check_assistant_masks(Dataset.from_list(data), tokenizer)


def test_prompt_in_the_loss_is_rejected(tokenizer):
    tokenizer.chat_template = TEMPLATE_WITH_PROMPT_IN_LOSS
    with pytest.raises(ValueError, match="puts prompt tokens in the loss in 4 example"):
        check_assistant_masks(messages_dataset(4), tokenizer)


def test_base_model_eos_becomes_the_end_of_turn_token(tmp_path, tokenizer):
    tokenizer.eos_token = "<|endoftext|>"  # a base model: eos ends documents, not chat turns
    assert end_of_turn_token(tokenizer) == "<|im_end|>"
    _, training_args, model_args = recipe(tmp_path)
    model = tiny_causal_lm("qwen3", tokenizer, hidden_size=32, num_layers=1)
    trainer, _ = build_sft_trainer(training_args, model_args, messages_dataset(8), model=model, tokenizer=tokenizer)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert trainer.processing_class.eos_token == "<|im_end|>"
    assert im_end in trainer.model.generation_config.eos_token_id


def test_truncation_that_would_drop_tokens_is_refused(tmp_path, tokenizer):
    model = tiny_causal_lm("qwen3", tokenizer, hidden_size=32, num_layers=1)
    for fields, fix in (({"packing": False}, "bfd_split"), ({"packing_strategy": "bfd"}, "splits it instead")):
        _, training_args, model_args = recipe(tmp_path, max_length=16, **fields)
        with pytest.raises(ValueError, match=f"> max_length=16.*{fix}"):
            build_sft_trainer(training_args, model_args, messages_dataset(8), model=model, tokenizer=tokenizer)


def _summed_nll(trainer) -> tuple[float, int]:
    """Sum of the next-token NLL over every loss token the trainer's dataloader yields, and their count."""
    total, count = 0.0, 0
    trainer.model.eval()
    with torch.no_grad():
        for batch in trainer.get_train_dataloader():
            labels = batch.pop("labels")[:, 1:]
            logits = trainer.model(**batch).logits[:, :-1]
            total += torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum"
            ).item()
            count += int((labels != -100).sum())
    return total, count


def test_packing_and_no_packing_give_the_same_loss(tmp_path, tokenizer):
    data = messages_dataset(24)
    results = {}
    for packing in (False, True):
        _, training_args, model_args = recipe(tmp_path, packing=packing, max_length=256 if packing else None)
        model = tiny_causal_lm("qwen3", tokenizer, hidden_size=64, num_layers=2, seed=0)
        trainer, report = build_sft_trainer(training_args, model_args, data, model=model, tokenizer=tokenizer)
        results[packing] = _summed_nll(trainer)
    assert len(trainer.train_dataset) < len(data)  # several examples share a packed row
    assert results[True][1] == results[False][1] == report.n_loss_tokens
    assert results[True][0] == pytest.approx(results[False][0], rel=1e-5)


def test_bfd_split_keeps_every_token_of_long_examples(tmp_path, tokenizer):
    data = messages_dataset(24)
    _, training_args, model_args = recipe(tmp_path, max_length=24)
    model = tiny_causal_lm("qwen3", tokenizer, hidden_size=32, num_layers=1)
    trainer, report = build_sft_trainer(training_args, model_args, data, model=model, tokenizer=tokenizer)
    assert report.longest > 24
    assert max(len(ids) for ids in trainer.train_dataset["input_ids"]) <= 24
    assert sum(len(ids) for ids in trainer.train_dataset["input_ids"]) == report.n_tokens
    assert sum(t != -100 for row in trainer.train_dataset["labels"] for t in row) == report.n_loss_tokens


def test_multi_turn_conversations_train_every_assistant_turn_only(tokenizer):
    turns = [
        {"role": "user", "content": "Compute 2 + 3 from left to right."},
        {"role": "assistant", "content": "2 + 3 = 5. The answer is \\boxed{5}."},
        {"role": "user", "content": "Compute 5 * 2 from left to right."},
        {"role": "assistant", "content": "5 * 2 = 10. The answer is \\boxed{10}."},
    ]
    report = check_assistant_masks(Dataset.from_list([{"messages": turns}]), tokenizer)
    # Each assistant turn trains its content and its <|im_end|>.
    expected = sum(len(tokenizer(t["content"] + "<|im_end|>")["input_ids"]) for t in turns if t["role"] == "assistant")
    assert report.n_loss_tokens == expected
