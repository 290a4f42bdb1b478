"""FlowGRPO settings and models that cannot work are refused when the config or the trainer is built, not when the
first batch with an answer is scored (which can be hours into a run)."""

import logging
import math
import re
import types
import warnings

import pytest
import torch
from datasets import Dataset
from transformers import MambaConfig, MambaForCausalLM

from hf_flowcredit import FlowGRPOConfig, FlowGRPOTrainer
from hf_flowcredit.config import parse_flow_layers
from hf_flowcredit.grpo_trainer import _check_attention_capture
from kit.tiny import build_tokenizer, tiny_causal_lm

TOKENIZER = build_tokenizer()
SETTINGS = dict(output_dir="unused", report_to="none", use_cpu=True, per_device_train_batch_size=4, num_generations=4)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(high_weight=math.nan), "high_weight must be a finite number > 0"),
        (dict(high_weight=math.inf), "high_weight must be a finite number > 0"),
        (dict(high_weight=-1.5), "high_weight must be a finite number > 0"),
        (dict(high_weight=0.0), "high_weight must be a finite number > 0"),
        (dict(top_fraction=math.nan), r"top_fraction must be in \(0, 1\]"),
        (dict(top_fraction=1.5), r"top_fraction must be in \(0, 1\]"),
        (dict(answer_format="boxd"), r"Unknown answer_format='boxd'; use one of \('auto', 'boxed'"),
        (dict(answer_format="regex:(unclosed"), "not a valid regular expression"),
        (dict(flow_layers="midle"), r"flow_layers='midle' is not a layer selection; use one of \('middle'"),
        (dict(flow_layers=""), r"flow_layers='' is not a layer selection.*'8,10,12'"),
        (dict(flow_layers="8;10"), "flow_layers='8;10' is not a layer selection"),
        (dict(flow_layers="1,,2"), "flow_layers='1,,2' is not a layer selection"),
    ],
    ids=lambda value: str(value) if isinstance(value, dict) else None,
)
def test_bad_settings_are_refused_by_the_config(overrides, message):
    with pytest.raises(ValueError, match=message):
        FlowGRPOConfig(**SETTINGS, **overrides)


def test_flow_layers_forms():
    assert parse_flow_layers("middle") == "middle" and parse_flow_layers(" all ") == "all"
    assert parse_flow_layers("8, 10,12") == [8, 10, 12] and parse_flow_layers("-1") == [-1]


def _trainer(model, **overrides):
    return FlowGRPOTrainer(
        model=model,
        reward_funcs=lambda completions, **kwargs: [0.0] * len(completions),
        args=FlowGRPOConfig(**{**SETTINGS, **overrides}),
        train_dataset=Dataset.from_dict({"prompt": ["unused"] * 4}),
        processing_class=TOKENIZER,
    )


def _qwen3():
    return tiny_causal_lm("qwen3", TOKENIZER, hidden_size=32, num_layers=3, num_heads=2, num_kv_heads=1)


def test_layer_indices_the_model_lacks_are_refused_by_the_trainer():
    with pytest.raises(ValueError, match=r"flow_layers='1,99' does not fit Qwen3ForCausalLM \(3 layers\).*\[99\]"):
        _trainer(_qwen3(), flow_layers="1,99")


# A tiny model whose attention capture_attention cannot read: it has none. (Logit softcapping and attention sinks,
# Gemma 2 and GPT-OSS, are captured exactly: tests/flowcredit/test_grpo_trl_contract.py.)
_SIZES = dict(vocab_size=len(TOKENIZER), hidden_size=16, intermediate_size=32, num_hidden_layers=2)
UNCAPTURABLE = {"MambaForCausalLM": lambda: MambaForCausalLM(MambaConfig(**_SIZES, state_size=4))}


@pytest.mark.parametrize("model_class", sorted(UNCAPTURABLE))
def test_models_whose_attention_cannot_be_captured_are_refused_at_construction(model_class):
    torch.manual_seed(0)
    with pytest.raises(ValueError, match=rf"reads the attention of {model_class}.*token_scorer='entropy'"):
        _trainer(UNCAPTURABLE[model_class](), token_scorer="flow")


@pytest.mark.parametrize("token_scorer", ["none", "entropy"])
def test_scorers_that_do_not_read_attention_skip_the_capture_check(token_scorer):
    torch.manual_seed(0)
    trainer = _trainer(UNCAPTURABLE["MambaForCausalLM"](), token_scorer=token_scorer)
    assert (trainer.token_scorer is None) == (token_scorer == "none")


def test_capture_check_leaves_rng_mode_and_attention_implementation_alone():
    model = _qwen3().train()
    args = FlowGRPOConfig(**SETTINGS, token_scorer="attention", flow_layers="0,2")
    state = torch.random.get_rng_state()
    _check_attention_capture(model, args)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert model.training and model.config._attn_implementation == "sdpa"


# ----------------------------------------------------------------------------------------------------------------
# TRL coupling: the GRPOTrainer internals FlowGRPOTrainer relies on are checked when it is built
# ----------------------------------------------------------------------------------------------------------------


def test_trl_coupling_is_declared_and_holds_for_the_installed_trl():
    from trl import GRPOTrainer

    from hf_flowcredit.grpo_trainer import TRL_RELIES_ON

    trainer = _trainer(_qwen3(), token_scorer="entropy")
    assert all(callable(getattr(GRPOTrainer, name)) for name in TRL_RELIES_ON["method"])
    assert all(hasattr(trainer, name) for name in TRL_RELIES_ON["attribute"])


@pytest.mark.parametrize(
    "kind, name",
    [
        ("method", "_generate_and_score_completions"),
        ("attribute", "_metrics"),
        ("attribute", "_step"),
        ("class attribute", "_tag_names"),
    ],
)
def test_a_moved_trl_member_is_named_with_the_trl_version(monkeypatch, kind, name):
    import trl
    from trl import GRPOTrainer

    monkeypatch.setattr(trl, "__version__", "9.0.0")
    if kind == "attribute":  # set by GRPOTrainer.__init__: a TRL whose __init__ no longer sets it
        init = GRPOTrainer.__init__

        def init_without(self, *args, **kwargs):
            init(self, *args, **kwargs)
            delattr(self, name)

        monkeypatch.setattr(GRPOTrainer, "__init__", init_without)
    else:
        monkeypatch.delattr(GRPOTrainer, name)
    with pytest.raises(
        RuntimeError,
        match=rf"GRPOTrainer's {kind}\(s\) \['{name}'\], which trl 9\.0\.0 does not "
        r"have: it was tested with trl>=1\.16,<1\.17",
    ):
        _trainer(_qwen3(), token_scorer="entropy")


def test_a_missing_generation_output_key_is_named_at_the_first_batch(monkeypatch):
    import trl
    from trl import GRPOTrainer

    trainer = _trainer(_qwen3(), token_scorer="random")
    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", lambda self, inputs: {"prompt_ids": None})
    with pytest.raises(
        RuntimeError,
        match=r"output key\(s\) \['prompt_mask', 'completion_ids', 'completion_mask', "
        rf"'advantages'\], which trl {re.escape(trl.__version__)} does not",
    ):
        trainer._generate_and_score_completions([])


# ----------------------------------------------------------------------------------------------------------------
# Device defaults: TRL's GPU defaults (bf16, activation checkpointing) are turned off on the CPU unless set
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_cpu", [False, True], ids=["no accelerator", "use_cpu"])
def test_on_the_cpu_unset_bf16_and_checkpointing_are_off(caplog, use_cpu):
    assert not torch.accelerator.is_available()  # this suite runs on a CPU-only machine
    with caplog.at_level(logging.INFO, logger="hf_flowcredit.config"), warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # nor transformers' warning about `gradient_checkpointing`
        config = FlowGRPOConfig(output_dir="unused", report_to="none", use_cpu=use_cpu)
    assert config.bf16 is False and config.fp16 is False
    assert config.activation_checkpointing is False and config.gradient_checkpointing is False
    assert "training on the CPU, so bf16=False and activation_checkpointing=False" in caplog.text


@pytest.mark.parametrize(
    "given, expected",
    [
        (dict(bf16=True), dict(bf16=True, activation_checkpointing=False)),
        (dict(bf16=False), dict(bf16=False, activation_checkpointing=False)),
        (dict(activation_checkpointing=True), dict(bf16=False, activation_checkpointing=True)),
        (dict(gradient_checkpointing=True), dict(bf16=False, activation_checkpointing=True)),
        (dict(bf16=True, activation_checkpointing=True), dict(bf16=True, activation_checkpointing=True)),
    ],
    ids=lambda value: ",".join(f"{k}={v}" for k, v in value.items()),
)
def test_on_the_cpu_an_explicit_choice_is_kept(given, expected):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # `gradient_checkpointing` is deprecated: the user's choice
        config = FlowGRPOConfig(output_dir="unused", report_to="none", use_cpu=True, **given)
    assert {name: getattr(config, name) for name in expected} == expected
    assert config.gradient_checkpointing == config.activation_checkpointing


def test_with_an_accelerator_trl_defaults_stay(monkeypatch):
    """On a GPU machine (simulated: the config cannot be built here with bf16, which needs the hardware)."""
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    unset = dict(use_cpu=False, fp16=False, bf16=None, activation_checkpointing=None, gradient_checkpointing=None)
    args = types.SimpleNamespace(**unset)
    FlowGRPOConfig._resolve_device_defaults(args)
    assert args.bf16 is None and args.activation_checkpointing is True  # TRL then resolves bf16 to True
    args = types.SimpleNamespace(**{**unset, "use_cpu": True})
    FlowGRPOConfig._resolve_device_defaults(args)
    assert args.bf16 is False and args.activation_checkpointing is False
