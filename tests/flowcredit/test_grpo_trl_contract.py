"""FlowGRPOTrainer in the configurations TRL's own GRPO tests train on a CPU, with the token scorer really running.

What a user of TRL's `GRPOTrainer` expects to keep working after swapping in `FlowGRPOTrainer`, in one place:
construction without `args`, the loss types and importance-sampling levels, the model families of TRL's suite
(Gemma 2's logit softcapping and GPT-OSS's attention sinks, captured exactly; Qwen3-MoE), and the trainer features
(LoRA, gradient checkpointing, several iterations and steps per generation, reward models, several reward functions,
standard and conversational prompts, iterable datasets, truncated-completion masking, the entropy filter,
evaluation). Every training test checks that tokens were reweighted: answer spans found, `flow/selected_frac > 0`,
token weights other than 1.

The tiny random models write no `\\boxed{}` answer, so the tests use `answer_format` with a regular expression
that takes a completion's last word as its answer: spans are found by the answer finder itself (not by the
`missing_answer="last_tokens"` fallback), and `flow/answer_found_frac > 0` says so.
"""

import re

import pytest
import torch
from peft import LoraConfig
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    GptOssConfig,
    GptOssForCausalLM,
    Qwen3Config,
    Qwen3ForSequenceClassification,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)
from trl import GRPOConfig, GRPOTrainer

from hf_flowcredit import FlowGRPOConfig, FlowGRPOTrainer
from hf_flowcredit.attention import capture_attention, capture_queries_keys
from hf_flowcredit.grpo_trainer import PER_TOKEN_LOSS_TYPES
from hf_flowcredit.intervention import attention_blocking
from hf_flowcredit.scoring import SCORERS
from kit.tiny import build_tokenizer, make_task_dataset, tiny_causal_lm

TOKENIZER = build_tokenizer()
LAST_WORD = r"regex:(\S+)\s*$"  # the completion's last word is its answer (see the module docstring)
DOCS = __import__("pathlib").Path(__file__).resolve().parents[2] / "docs" / "hf_flowcredit.md"


# ----------------------------------------------------------------------------------------------------------------
# Tiny models, data, rewards and a trainer that keeps what the checks need
# ----------------------------------------------------------------------------------------------------------------

_SIZES = dict(
    vocab_size=len(TOKENIZER),
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=16,
    pad_token_id=TOKENIZER.pad_token_id,
    eos_token_id=TOKENIZER.eos_token_id,
    bos_token_id=TOKENIZER.eos_token_id,
)


def _qwen3():
    return tiny_causal_lm("qwen3", TOKENIZER, hidden_size=32, num_layers=3, num_heads=2, num_kv_heads=1, seed=0)


def _seeded(build):
    def seeded(**config):
        torch.manual_seed(0)
        return build(**config)

    return seeded


@_seeded
def _gemma2(**config):
    """Gemma 2: attention logit softcapping, sliding-window layers, final logit softcapping."""
    settings = {"attn_logit_softcapping": 50.0, "sliding_window": 4, "query_pre_attn_scalar": 16, **config}
    return Gemma2ForCausalLM(Gemma2Config(**_SIZES, **settings))


@_seeded
def _gpt_oss(**config):
    """GPT-OSS: attention sinks (one learned logit per head), sliding-window layers, mixture of experts."""
    model = GptOssForCausalLM(
        GptOssConfig(**_SIZES, num_local_experts=2, num_experts_per_tok=1, sliding_window=4, **config)
    )
    with torch.no_grad():  # sinks of a trained model's size (the default initialisation keeps them near 0)
        for layer in model.model.layers:
            layer.self_attn.sinks.normal_(0.0, 1.0)
    return model


@_seeded
def _qwen3_moe():
    return Qwen3MoeForCausalLM(
        Qwen3MoeConfig(**_SIZES, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
    )


def _text(completion) -> str:
    return completion if isinstance(completion, str) else completion[-1]["content"]


def length_reward(completions, **kwargs):
    """Varies within every group (the random models never answer right), so advantages are not zero."""
    return [float(len(_text(c)) % 5) for c in completions]


def space_reward(completions, **kwargs):
    return [float(_text(c).count(" ")) for c in completions]


@pytest.fixture(scope="module")
def conversational():
    return make_task_dataset("arithmetic", 8, seed=0).select_columns(["prompt", "answer"])


@pytest.fixture(scope="module")
def standard(conversational):
    return conversational.map(lambda row: {"prompt": row["prompt"][-1]["content"]})


class RecordingFlowGRPOTrainer(FlowGRPOTrainer):
    """FlowGRPOTrainer keeping, per generation batch, its token weights (with the completion mask and the mode), the
    advantages it hands to TRL, and the advantages each loss computation receives."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scored, self.generated, self.loss_inputs = [], [], []

    def _completion_token_weights(self, output):
        weights, stats = super()._completion_token_weights(output)
        mode = "train" if self.model.training else "eval"
        self.scored.append((mode, weights.clone(), output["completion_mask"].bool().clone()))
        return weights, stats

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        self.generated.append(output["advantages"].clone())
        return output

    def _compute_loss(self, model, inputs):
        self.loss_inputs.append(inputs["advantages"].detach().clone())
        return super()._compute_loss(model, inputs)


def _args(tmp_path, **overrides):
    settings = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        max_steps=1,
        learning_rate=1e-3,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        answer_format=LAST_WORD,
    )
    return FlowGRPOConfig(**{**settings, **overrides})


def _trainer(tmp_path, dataset, model=None, reward_funcs=length_reward, trainer_kwargs=None, **overrides):
    return RecordingFlowGRPOTrainer(
        model=_qwen3() if model is None else model,
        reward_funcs=reward_funcs,
        args=_args(tmp_path, **overrides),
        train_dataset=dataset,
        processing_class=TOKENIZER,
        **(trainer_kwargs or {}),
    )


def _train(tmp_path, dataset, **kwargs):
    trainer = _trainer(tmp_path, dataset, **kwargs)
    trainer.train()
    return trainer


def assert_scored(trainer, mode="train"):
    """Answer spans found, some tokens given the high weight (logged), token weights other than 1 (recorded)."""
    prefix = "" if mode == "train" else "eval_"
    logged = [entry for entry in trainer.state.log_history if f"{prefix}flow/selected_frac" in entry]
    assert logged, f"no {mode} flow metrics were logged"
    for entry in logged:
        assert entry[f"{prefix}flow/answer_found_frac"] > 0 and entry[f"{prefix}flow/selected_frac"] > 0, entry
    scored = [(weights, mask) for kind, weights, mask in trainer.scored if kind == mode]
    assert scored and all(((weights != 1.0) & mask).any() for weights, mask in scored)
    for weights, mask in scored:
        assert set(weights[mask].unique().tolist()) <= {1.0, trainer.args.high_weight}
        assert (weights[~mask] == 0).all()


# ----------------------------------------------------------------------------------------------------------------
# Construction as in TRL
# ----------------------------------------------------------------------------------------------------------------


def test_built_without_args_like_trl(tmp_path, monkeypatch, conversational):
    """No `args`: FlowGRPOConfig's defaults in the output directory GRPOTrainer picks. (TRL's own GRPOConfig defaults
    to bf16, which this CPU-only machine refuses; FlowGRPOConfig turns it off on a CPU, so only the directory TRL
    would use is read from GRPOTrainer here.)"""
    import trl.trainer.grpo_trainer

    class Stop(Exception):
        pass

    trl_output_dirs = []

    def recording_config(output_dir, **kwargs):
        trl_output_dirs.append(output_dir)
        raise Stop

    monkeypatch.chdir(tmp_path)  # "<model name>-GRPO" is relative to the working directory
    flow = FlowGRPOTrainer(model=_qwen3(), reward_funcs=length_reward, train_dataset=conversational,
                           processing_class=TOKENIZER)  # fmt: skip
    monkeypatch.setattr(trl.trainer.grpo_trainer, "GRPOConfig", recording_config)
    with pytest.raises(Stop):
        GRPOTrainer(model=_qwen3(), reward_funcs=length_reward, train_dataset=conversational)
    assert type(flow.args) is FlowGRPOConfig and flow.args.token_scorer == "flow" and flow.token_scorer is not None
    assert trl_output_dirs == [flow.args.output_dir] and flow.args.output_dir.endswith("-GRPO")


def test_supported_loss_types_are_trls_and_the_docs_say_so():
    trl_help = next(f for f in GRPOConfig.__dataclass_fields__.values() if f.name == "loss_type").metadata["help"]
    trl_loss_types = set(re.findall(r"'(\w+)'", trl_help.split("Supported values are", 1)[1].split(". ", 1)[0]))
    assert set(PER_TOKEN_LOSS_TYPES) == trl_loss_types
    paragraph = DOCS.read_text().split("**Loss types and importance sampling.**", 1)[1].split("\n\n", 1)[0]
    assert all(f"`{loss_type}`" in paragraph for loss_type in PER_TOKEN_LOSS_TYPES)
    assert 'importance_sampling_level="sequence"' in paragraph and "`luspo`" in paragraph


@pytest.mark.parametrize(
    "loss_type, match",
    [
        ("grpo", r"importance_sampling_level='sequence' \(GSPO-style\).*collapse to a single scale"),
        ("luspo", r"loss_type='luspo' is run by TRL at importance_sampling_level='sequence'.*'token' only"),
    ],
)
def test_sequence_level_importance_sampling_is_refused_naming_the_fix(tmp_path, conversational, loss_type, match):
    with pytest.raises(ValueError, match=match):
        _trainer(tmp_path, conversational, loss_type=loss_type, importance_sampling_level="sequence")
    # plain GRPO (no token credit) is TRL's GSPO / LUSPO as it is
    _trainer(tmp_path, conversational, loss_type=loss_type, importance_sampling_level="sequence", token_scorer="none")


@pytest.mark.parametrize("loss_type", PER_TOKEN_LOSS_TYPES)
def test_every_loss_type_trains_scored_at_token_level(tmp_path, conversational, loss_type):
    trainer = _train(tmp_path, conversational, loss_type=loss_type, max_completion_length=6)
    assert_scored(trainer)
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in trainer.state.log_history if "loss" in e)


# ----------------------------------------------------------------------------------------------------------------
# Logit softcapping (Gemma 2) and attention sinks (GPT-OSS): exact against eager attention, and trained on
# ----------------------------------------------------------------------------------------------------------------


def _padded_batch(seed=0):
    """Three rows of 12 tokens: unpadded, left-padded by 3, right-padded by 4."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, len(TOKENIZER), (3, 12), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :3] = 0
    attention_mask[2, 8:] = 0
    return input_ids, attention_mask


def _eager_attention(model, input_ids, attention_mask):
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True)
    return torch.stack([layer.float().mean(dim=1) for layer in out.attentions]).mean(dim=0), out.logits


def _sharpened(model):
    """Queries scaled up so the logits reach the range where softcapping bends them (random init keeps them ~0)."""
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(40.0)
    return model


@pytest.mark.parametrize("family", ["gemma2", "gpt_oss"])
def test_softcapping_and_sinks_are_captured_exactly(family):
    if family == "gemma2":
        model = _sharpened(_gemma2(attn_logit_softcapping=1.0, attn_implementation="eager")).eval()
    else:
        model = _gpt_oss(attn_implementation="eager").eval()
    input_ids, attention_mask = _padded_batch()
    real = attention_mask.bool()
    reference, logits = _eager_attention(model, input_ids, attention_mask)
    captured = capture_attention(model, input_ids, attention_mask, layers="all")
    torch.testing.assert_close(captured[real], reference[real], atol=1e-6, rtol=1e-5)
    assert (captured[~real] == 0).all()
    recomputed = capture_queries_keys(model, input_ids, attention_mask, layers="all").dense()
    torch.testing.assert_close(recomputed, captured, atol=1e-6, rtol=1e-5)
    # The layers' output (SDPA cannot compute these layers) is the eager one: same logits, same greedy tokens.
    nothing_blocked = torch.zeros(3, 24, dtype=torch.bool)
    with torch.no_grad(), attention_blocking(model, nothing_blocked):
        blocked_logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    with torch.no_grad(), attention_blocking(model, nothing_blocked[:1]):  # cached decoding: one query at a time
        generated = model.generate(input_ids[:1], max_new_tokens=6, do_sample=False)
    torch.testing.assert_close(blocked_logits[real], logits[real], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert torch.equal(generated, model.generate(input_ids[:1], max_new_tokens=6, do_sample=False))
    # Not vacuous: the softcap bends the logits; the sinks take probability mass that no token receives.
    if family == "gemma2":
        for layer in model.model.layers:
            layer.self_attn.attn_logit_softcapping = None
        assert (_eager_attention(model, input_ids, attention_mask)[0][real] - captured[real]).abs().max() > 1e-3
    else:
        assert captured[real].sum(-1).max() < 0.99


@pytest.mark.slow  # two FlowGRPO steps of GPT-OSS's mixture of experts and Gemma 2, a few seconds
@pytest.mark.parametrize("family", ["gemma2", "gpt_oss", "qwen3_moe"])
def test_model_families_of_trls_suite_train_scored(tmp_path, conversational, family):
    model = {"gemma2": _gemma2, "gpt_oss": _gpt_oss, "qwen3_moe": _qwen3_moe}[family]()
    assert_scored(_train(tmp_path, conversational, model=model, token_scorer="flow"))


# ----------------------------------------------------------------------------------------------------------------
# TRL's trainer features, scored
# ----------------------------------------------------------------------------------------------------------------


def _lora_b_moved(trainer):
    return any(p.abs().sum() > 0 for name, p in trainer.model.named_parameters() if "lora_B" in name)


@pytest.mark.parametrize("token_scorer", sorted(SCORERS))
def test_each_scorer_under_lora_and_gradient_checkpointing(tmp_path, conversational, token_scorer):
    trainer = _train(
        tmp_path,
        conversational,
        token_scorer=token_scorer,
        activation_checkpointing=True,
        trainer_kwargs=dict(peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])),
    )
    base = trainer.accelerator.unwrap_model(trainer.model).get_base_model()
    assert base.is_gradient_checkpointing and _lora_b_moved(trainer)
    assert_scored(trainer)


def test_gradient_checkpointing_without_lora(tmp_path, conversational):
    trainer = _train(tmp_path, conversational, activation_checkpointing=True)
    assert trainer.accelerator.unwrap_model(trainer.model).is_gradient_checkpointing
    assert_scored(trainer)


def test_weights_are_computed_once_per_generation_batch_and_reused(tmp_path, conversational):
    """steps_per_generation=2 and num_iterations=2: 4 optimizer steps from one generation batch of 8 completions."""
    trainer = _train(tmp_path, conversational, steps_per_generation=2, num_iterations=2, max_steps=4)
    assert_scored(trainer)
    assert len(trainer.scored) == len(trainer.generated) == 1  # scored once, for the whole generation batch
    generated = trainer.generated[0]
    assert generated.shape[0] == 8 and len(trainer.loss_inputs) == 4
    first_pass, second_pass = trainer.loss_inputs[:2], trainer.loss_inputs[2:]
    assert all(torch.equal(a, b) for a, b in zip(first_pass, second_pass))  # the second iteration reuses them

    def rows(tensor):
        return sorted(map(tuple, tensor.tolist()))

    assert rows(torch.cat(first_pass)) == rows(generated)  # the two steps split the scored batch between them


def test_reward_model(tmp_path, conversational):
    torch.manual_seed(0)
    config = Qwen3Config(**{**_SIZES, "num_labels": 1})
    reward_model = Qwen3ForSequenceClassification(config)
    trainer = _train(
        tmp_path, conversational, reward_funcs=reward_model, trainer_kwargs=dict(reward_processing_classes=TOKENIZER)
    )
    assert_scored(trainer)


def test_several_reward_functions(tmp_path, conversational):
    trainer = _train(tmp_path, conversational, reward_funcs=[length_reward, space_reward], reward_weights=[1.0, 0.5])
    assert {"rewards/length_reward/mean", "rewards/space_reward/mean"} <= set(trainer.state.log_history[0])
    assert_scored(trainer)


@pytest.mark.parametrize("prompts", ["standard", "conversational"])
def test_standard_and_conversational_prompts(tmp_path, request, prompts):
    dataset = request.getfixturevalue(prompts)
    assert isinstance(dataset[0]["prompt"], str) == (prompts == "standard")
    assert_scored(_train(tmp_path, dataset))


def test_iterable_dataset(tmp_path, conversational):
    assert_scored(_train(tmp_path, conversational.to_iterable_dataset(), max_steps=2))


def test_mask_truncated_completions(tmp_path, conversational):
    """Some completions end (the model's end-of-sequence logit is made large), the truncated ones are masked
    out, and the others are scored."""
    model = _qwen3()
    with torch.no_grad():
        model.lm_head.weight[TOKENIZER.eos_token_id] *= 40.0
    trainer = _train(tmp_path, conversational, model=model, mask_truncated_completions=True, max_steps=2)
    assert_scored(trainer)
    truncated = sum((~mask.any(dim=1)).sum().item() for _, _, mask in trainer.scored)
    rows = sum(len(mask) for _, _, mask in trainer.scored)
    assert 0 < truncated < rows  # some rows truncated (masked out), the others scored


def test_entropy_filter(tmp_path, conversational):
    trainer = _train(tmp_path, conversational, top_entropy_quantile=0.5)
    assert_scored(trainer)


def test_evaluation(tmp_path, conversational):
    trainer = _trainer(tmp_path, conversational, per_device_eval_batch_size=4,
                       trainer_kwargs=dict(eval_dataset=conversational.select(range(2))))  # fmt: skip
    metrics = trainer.evaluate()
    assert metrics["eval_flow/answer_found_frac"] > 0 and metrics["eval_flow/selected_frac"] > 0
    assert trainer.scored and all(kind == "eval" for kind, _, _ in trainer.scored)
    assert all(((weights != 1.0) & mask).any() for _, weights, mask in trainer.scored)


def test_lora_alone_trains_the_adapters_only(tmp_path, standard):
    """LoRA alone (no checkpointing), standard prompts: the base weights stay, the adapters move, tokens scored."""
    model = _qwen3()
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = _train(
        tmp_path, standard, model=model,
        trainer_kwargs=dict(peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])),
    )  # fmt: skip
    assert _lora_b_moved(trainer)
    for name, parameter in trainer.model.named_parameters():
        if "lora_" not in name:
            base_name = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(parameter, initial[base_name])
    assert_scored(trainer)
