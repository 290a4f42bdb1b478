"""FlowGRPOTrainer: exact GRPO when the weights are all 1, real reweighting otherwise, the TRL features it must keep
working (LoRA, gradient accumulation, several iterations per generation) and bad input."""

import math

import pytest
import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from hf_flowcredit import FlowGRPOConfig, FlowGRPOTrainer
from kit.tiny import build_tokenizer, make_task_dataset, tiny_causal_lm

TOKENIZER = build_tokenizer()


def uneven_reward(completions, **kwargs):
    """A reward that varies within every group (the random tiny model never answers correctly), so advantages and
    therefore gradients are non-zero."""
    return [float(len(str(c)) % 5) for c in completions]


def _dataset(n=16):
    return make_task_dataset("arithmetic", n, seed=0).select_columns(["prompt", "answer"])


def _settings(**overrides):
    settings = dict(
        output_dir="unused",
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=24,
        max_steps=3,
        learning_rate=1e-3,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        # Both trainers without bf16 (FlowGRPOConfig turns it off on a CPU by itself, GRPOConfig does not); activation
        # checkpointing still differs (on in GRPOConfig, off here on a CPU) and changes no bit of the results.
        bf16=False,
        seed=0,
        save_strategy="no",
        disable_tqdm=True,
    )
    settings.update(overrides)
    return settings


def _train(trainer_cls, config_cls, tmp_path, reward=uneven_reward, peft_config=None, **overrides):
    model = tiny_causal_lm("qwen3", TOKENIZER, hidden_size=32, num_layers=3, num_heads=2, num_kv_heads=1, seed=0)
    args = config_cls(**_settings(output_dir=str(tmp_path), **overrides))
    trainer = trainer_cls(
        model=model,
        reward_funcs=reward,
        args=args,
        train_dataset=_dataset(),
        processing_class=TOKENIZER,
        peft_config=peft_config,
    )
    trainer.train()
    return trainer


def _parameters(trainer):
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters()}


def _losses(trainer):
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


@pytest.mark.parametrize(
    "flow_settings, schedule",
    [
        (dict(token_scorer="flow", high_weight=1.0, missing_answer="last_tokens"), dict()),
        (dict(token_scorer="none"), dict()),
        (
            dict(token_scorer="flow", high_weight=1.0, missing_answer="last_tokens"),
            dict(gradient_accumulation_steps=2, num_iterations=2, max_steps=2),
        ),
    ],
    ids=["flow-weight-1", "scorer-none", "flow-weight-1-accumulation-iterations"],
)
def test_unit_weights_reproduce_trl_grpo_exactly(tmp_path, flow_settings, schedule):
    grpo = _train(GRPOTrainer, GRPOConfig, tmp_path / "grpo", **schedule)
    flow = _train(FlowGRPOTrainer, FlowGRPOConfig, tmp_path / "flow", **schedule, **flow_settings)
    assert _losses(flow) == _losses(grpo)
    flow_parameters, grpo_parameters = _parameters(flow), _parameters(grpo)
    assert all(torch.equal(flow_parameters[name], grpo_parameters[name]) for name in grpo_parameters)
    # The comparison is not vacuous: training moved the parameters away from their initial values.
    initial = dict(
        tiny_causal_lm(
            "qwen3", TOKENIZER, hidden_size=32, num_layers=3, num_heads=2, num_kv_heads=1
        ).named_parameters()
    )
    assert any(not torch.equal(initial[name], grpo_parameters[name]) for name in grpo_parameters)
    if flow_settings["token_scorer"] != "none":
        logged = [entry for entry in flow.state.log_history if "flow/mean_weight" in entry]
        assert logged and all(
            entry["flow/mean_weight"] == 1.0 and entry["flow/selected_frac"] == 0.0 for entry in logged
        )


def test_weights_change_the_update_and_are_logged(tmp_path):
    grpo = _train(GRPOTrainer, GRPOConfig, tmp_path / "grpo")
    flow = _train(
        FlowGRPOTrainer, FlowGRPOConfig, tmp_path / "flow", token_scorer="flow", missing_answer="last_tokens"
    )
    flow_parameters, grpo_parameters = _parameters(flow), _parameters(grpo)
    assert any(not torch.equal(flow_parameters[name], grpo_parameters[name]) for name in grpo_parameters)
    logged = [entry for entry in flow.state.log_history if "flow/selected_frac" in entry]
    assert len(logged) == 3
    for entry in logged:
        # Every completion is scored (last_tokens fallback): ~40% of the tokens get 1.5, so the mean is ~1.2.
        assert 0.3 <= entry["flow/selected_frac"] <= 0.5
        assert entry["flow/mean_weight"] == pytest.approx(1 + 0.5 * entry["flow/selected_frac"])
        assert entry["flow/answer_found_frac"] == 0.0  # the random tiny model never writes an answer
        assert entry["flow/seconds"] > 0


def test_lora_model_trains_adapters_only(tmp_path):
    from peft import LoraConfig

    trainer = _train(
        FlowGRPOTrainer,
        FlowGRPOConfig,
        tmp_path,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        token_scorer="flow",
        missing_answer="last_tokens",
        learning_rate=1e-2,
    )
    initial = dict(
        tiny_causal_lm(
            "qwen3", TOKENIZER, hidden_size=32, num_layers=3, num_heads=2, num_kv_heads=1
        ).named_parameters()
    )
    changed_lora, changed_base = False, False
    for name, parameter in trainer.model.named_parameters():
        if "lora_B" in name:
            changed_lora |= bool(parameter.abs().sum() > 0)  # lora_B starts at zero
        elif "lora_" not in name:
            base_name = name.replace("base_model.model.", "").replace(".base_layer", "")
            changed_base |= not torch.equal(parameter, initial[base_name])
    assert changed_lora and not changed_base
    assert any("flow/mean_weight" in entry and entry["flow/mean_weight"] > 1.0 for entry in trainer.state.log_history)


def none_or_nan_reward(completions, **kwargs):
    """Unscorable rows (None) and NaN rewards, mixed with real ones."""
    values = [None, float("nan"), 1.0, 0.0]
    return [values[i % 4] for i in range(len(completions))]


def test_none_and_nan_rewards_do_not_crash(tmp_path):
    trainer = _train(
        FlowGRPOTrainer,
        FlowGRPOConfig,
        tmp_path,
        reward=none_or_nan_reward,
        token_scorer="flow",
        missing_answer="last_tokens",
        max_steps=2,
    )
    for entry in trainer.state.log_history:
        if "loss" in entry:
            assert math.isfinite(entry["loss"])
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_truncated_completions_masked_to_empty(tmp_path):
    """With mask_truncated_completions, every completion of the random model (never ends) has an empty mask."""
    trainer = _train(
        FlowGRPOTrainer,
        FlowGRPOConfig,
        tmp_path,
        token_scorer="flow",
        missing_answer="last_tokens",
        mask_truncated_completions=True,
        max_completion_length=8,
        max_steps=2,
    )
    logged = [entry for entry in trainer.state.log_history if "flow/mean_weight" in entry]
    assert logged and all(entry["flow/selected_frac"] == 0.0 for entry in logged)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(token_scorer="magic"), "token_scorer"),
        (dict(missing_answer="skip"), "missing_answer"),
        (dict(weight_sign="negative"), "weight_sign"),
        (dict(top_fraction=0.0), "top_fraction"),
        (dict(high_weight=-1.0), "high_weight"),
    ],
)
def test_bad_config_is_rejected_with_the_field_name(overrides, message):
    with pytest.raises(ValueError, match=message):
        FlowGRPOConfig(**_settings(**overrides))


def test_sequence_level_importance_sampling_is_rejected(tmp_path):
    model = tiny_causal_lm("qwen3", TOKENIZER, hidden_size=32, num_layers=3, num_heads=2, num_kv_heads=1)
    args = FlowGRPOConfig(**_settings(output_dir=str(tmp_path), importance_sampling_level="sequence"))
    with pytest.raises(ValueError, match="importance_sampling_level='token'"):
        FlowGRPOTrainer(
            model=model, reward_funcs=uneven_reward, args=args, train_dataset=_dataset(), processing_class=TOKENIZER
        )


def test_plain_grpo_config_is_rejected(tmp_path):
    model = tiny_causal_lm("qwen3", TOKENIZER, hidden_size=32, num_layers=3, num_heads=2, num_kv_heads=1)
    with pytest.raises(TypeError, match="FlowGRPOConfig"):
        FlowGRPOTrainer(
            model=model,
            reward_funcs=uneven_reward,
            args=GRPOConfig(**_settings(output_dir=str(tmp_path))),
            train_dataset=_dataset(),
            processing_class=TOKENIZER,
        )


def _tiny_trainer(tmp_path, **overrides):
    model = tiny_causal_lm("qwen3", TOKENIZER, hidden_size=32, num_layers=3, num_heads=2, num_kv_heads=1)
    args = FlowGRPOConfig(**_settings(output_dir=str(tmp_path), **overrides))
    dataset = Dataset.from_dict({"prompt": ["unused"] * 4})
    return FlowGRPOTrainer(
        model=model, reward_funcs=uneven_reward, args=args, train_dataset=dataset, processing_class=TOKENIZER
    )


def _generation_output(prompts, completions, advantages):
    """The tensors TRL's `_generate_and_score_completions` returns: left-padded prompts, right-padded completions."""
    prompt_rows = [TOKENIZER(p)["input_ids"] for p in prompts]
    completion_rows = [TOKENIZER(c)["input_ids"] + [TOKENIZER.eos_token_id] if c else [] for c in completions]
    width_p, width_c = max(map(len, prompt_rows)), max(1, max(map(len, completion_rows)))
    pad = TOKENIZER.pad_token_id
    prompt_ids = torch.tensor([[pad] * (width_p - len(r)) + r for r in prompt_rows])
    completion_ids = torch.tensor([r + [pad] * (width_c - len(r)) for r in completion_rows])
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": (prompt_ids != pad).long(),
        "completion_ids": completion_ids,
        "completion_mask": (completion_ids != pad).long(),
        "advantages": torch.tensor(advantages),
    }


COMPLETIONS = [
    "3 + 4 = 7. 7 * 2 = 14. The answer is \\boxed{14}.",
    "3 + 4 = 7. 7 * 2 = 15. The answer is \\boxed{15}.",
    "3 + 4 = 7 and then I am not sure what to do next",
    "",
]


@pytest.mark.parametrize("missing_answer", ["uniform", "last_tokens"])
def test_token_weights_follow_the_selection_rule(tmp_path, missing_answer):
    trainer = _tiny_trainer(tmp_path, token_scorer="random", missing_answer=missing_answer)
    output = _generation_output(["Compute (3 + 4) * 2."] * 4, COMPLETIONS, [1.0, -1.0, 0.5, 0.0])
    weights, stats = trainer._completion_token_weights(output)
    mask = output["completion_mask"].bool()
    assert weights.shape == mask.shape and (weights[~mask] == 0).all()
    for row in (0, 1):  # answered: 40% of the tokens at 1.5, the rest at 1.0
        values = weights[row][mask[row]]
        assert set(values.tolist()) <= {1.0, 1.5}
        assert (values == 1.5).sum().item() == math.ceil(0.4 * mask[row].sum().item())
    no_answer = weights[2][mask[2]]
    if missing_answer == "uniform":
        assert (no_answer == 1.0).all()
    else:
        assert (no_answer == 1.5).sum().item() == math.ceil(0.4 * mask[2].sum().item())
    assert not mask[3].any() and (weights[3] == 0).all()  # empty completion: nothing to weight, no crash
    assert stats["answers_found"] == 2 and stats["rows"] == 4


def test_positive_weight_sign_leaves_non_positive_rows_uniform(tmp_path):
    trainer = _tiny_trainer(tmp_path, token_scorer="random", weight_sign="positive")
    output = _generation_output(["Compute (3 + 4) * 2."] * 2, COMPLETIONS[:2], [1.0, -1.0])
    weights, _ = trainer._completion_token_weights(output)
    mask = output["completion_mask"].bool()
    assert (weights[0][mask[0]] == 1.5).any()
    assert (weights[1][mask[1]] == 1.0).all()


def test_sequences_over_flow_max_length_are_left_unscored_with_a_warning(tmp_path):
    trainer = _tiny_trainer(tmp_path, token_scorer="random", flow_max_length=20)
    output = _generation_output(["Compute (3 + 4) * 2.", "Hi"], [COMPLETIONS[0], "\\boxed{1}"], [1.0, 1.0])
    with pytest.warns(UserWarning, match="flow_max_length"):
        weights, stats = trainer._completion_token_weights(output)
    mask = output["completion_mask"].bool()
    assert (weights[0][mask[0]] == 1.0).all() and (weights[1][mask[1]] == 1.5).any()
    assert stats["too_long"] == 1


def test_batch_without_any_answer_warns_and_keeps_grpo_weights(tmp_path):
    trainer = _tiny_trainer(tmp_path, token_scorer="flow")
    output = _generation_output(["Compute 1 + 1."] * 2, [COMPLETIONS[2], "no idea"], [1.0, -1.0])
    with pytest.warns(UserWarning, match="No completion of this batch has an answer span"):
        weights, stats = trainer._completion_token_weights(output)
    mask = output["completion_mask"].bool()
    assert (weights[mask] == 1.0).all() and stats["answers_found"] == 0
