"""The embedded kit: tokenizer, tiny models, tasks and rewards (shared by the demos and the other tests)."""

import json
import os

import pytest
import torch

from kit.tiny import (
    TINY_ARCHS,
    arithmetic_reward,
    build_tokenizer,
    countdown_reward,
    extract_final_answer,
    make_task_dataset,
    reward_for_task,
    tiny_causal_lm,
)


def test_tokenizer_is_deterministic_and_round_trips():
    first, second = build_tokenizer(), build_tokenizer()
    assert first.get_vocab() == second.get_vocab()
    text = "Compute 12 + 7 * 3 from left to right. The answer is \\boxed{57}. ünïcode"
    ids = first(text)["input_ids"]
    assert first.decode(ids) == text
    # Digits are split one per token.
    assert [t for t in first.convert_ids_to_tokens(first("12345")["input_ids"])] == list("12345")


def test_offsets_cover_the_text():
    tokenizer = build_tokenizer()
    text = "10 - 20 = -10. The answer is \\boxed{-10}."
    encoding = tokenizer(text, return_offsets_mapping=True)
    pieces = [text[start:end] for start, end in encoding["offset_mapping"]]
    assert "".join(pieces) == text


def test_chat_template_marks_only_the_assistant_turn():
    tokenizer = build_tokenizer()
    row = make_task_dataset("arithmetic", n=1, seed=0)[0]
    encoding = tokenizer.apply_chat_template(
        row["prompt"] + row["completion"], return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = encoding["input_ids"], encoding["assistant_masks"]
    assistant_text = tokenizer.decode([i for i, m in zip(ids, mask) if m])
    assert assistant_text == row["trace"] + "<|im_end|>"
    generation_prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
    assert generation_prompt.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_tiny_models_are_seeded_and_run(arch):
    tokenizer = build_tokenizer()
    model_a = tiny_causal_lm(arch, tokenizer, hidden_size=32, num_layers=2, seed=3)
    model_b = tiny_causal_lm(arch, tokenizer, hidden_size=32, num_layers=2, seed=3)
    for p_a, p_b in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(p_a, p_b)
    batch = tokenizer(["Compute 1 + 2.", "Hi"], return_tensors="pt", padding=True)
    logits = model_a(**batch).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()


def test_tasks_are_deterministic_and_splits_disjoint():
    train = make_task_dataset("arithmetic", n=400, seed=0, split="train")
    again = make_task_dataset("arithmetic", n=400, seed=0, split="train")
    test = make_task_dataset("arithmetic", n=100, seed=0, split="test")
    assert train["problem"] == again["problem"]
    assert not set(train["problem"]) & set(test["problem"])
    # Every worked trace ends in the gold answer.
    assert arithmetic_reward(train["completion"], train["answer"]) == [1.0] * len(train)


def test_countdown_traces_are_correct_and_reward_levels():
    data = make_task_dataset("countdown", n=50, seed=1)
    assert countdown_reward(data["trace"], data["numbers"], data["target"]) == [1.0] * 50
    numbers, target = [[2, 3, 4]], [14]
    assert countdown_reward(["<answer>2 + 3 * 4</answer>"], numbers, target) == [1.0]
    assert countdown_reward(["<answer>2 + 3 + 4</answer>"], numbers, target) == [0.1]  # well-formed, wrong value
    assert countdown_reward(["<answer>2 * 7</answer>"], numbers, target) == [0.1]  # right value, wrong numbers
    assert countdown_reward(["<answer>import os</answer>"], numbers, target) == [0.0]
    assert countdown_reward(["2 + 3 * 4"], numbers, target) == [0.0]


def test_answer_extraction_takes_the_last_answer():
    assert extract_final_answer("\\boxed{3} then \\boxed{4}") == "4"
    assert extract_final_answer("<answer> 7 </answer>") == "7"
    assert extract_final_answer("no answer") is None
    assert arithmetic_reward([[{"role": "assistant", "content": "\\boxed{5}"}]], ["5"]) == [1.0]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: make_task_dataset("sudoku", n=1), "task"),
        (lambda: make_task_dataset("arithmetic", n=0), "n must"),
        (lambda: make_task_dataset("arithmetic", n=1, seed=-1), "seed"),
        (lambda: make_task_dataset("arithmetic", n=1, split="dev"), "split"),
        (lambda: reward_for_task("sudoku"), "task"),
        (lambda: tiny_causal_lm("bert"), "arch"),
        (lambda: tiny_causal_lm("qwen3", seed=-2), "seed"),
    ],
)
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_tiny_sft_trains_and_reuses_a_finished_run(tmp_path):
    from kit.teacher import train_tiny_sft

    settings = dict(n_train=64, num_train_epochs=1.0, hidden_size=32, num_layers=1, batch_size=16)
    model_dir = train_tiny_sft(str(tmp_path), **settings)
    with open(os.path.join(model_dir, "log_history.json")) as f:
        losses = [entry["loss"] for entry in json.load(f) if "loss" in entry]
    assert losses and all(loss > 0 for loss in losses)
    stamp = os.path.getmtime(os.path.join(model_dir, "config.json"))
    assert train_tiny_sft(str(tmp_path), **settings) == model_dir
    assert os.path.getmtime(os.path.join(model_dir, "config.json")) == stamp
