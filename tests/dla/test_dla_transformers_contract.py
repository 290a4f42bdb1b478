"""What transformers' own models promise, held for DLA models in one place: tuples with `return_dict=False`, hidden
states that carry gradients, no attention-implementation flags, logits in the model's dtype with a float32 loss,
`auto_map` with every Auto class, loading without hf_dla and without a prompt, and the generation strategies
(greedy, sampling, beam search, continuing from the cache, left padding) against what they must equal."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM
from transformers.models.mamba2.modeling_mamba2 import Mamba2CausalLMOutput, Mamba2Output

import hf_dla
from kit.tiny import build_tokenizer
from tests.dla.conftest import tiny_config

MIXERS = ["mamba2", "gated_deltanet"]


@pytest.fixture(scope="module")
def models():
    """One small multi-state model per mixer (lambda spread away from 1, so the slots matter), in eval mode."""
    built = {}
    for mixer in MIXERS:
        torch.manual_seed(0)
        config = tiny_config(mixer=mixer, memory="dla", max_states=4, read_weights_init_std=0.5)
        built[mixer] = hf_dla.DLAForCausalLM(config).eval()
    return built


def ids_of(*shape, seed=0):
    return torch.randint(3, 64, shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------


def test_output_fields_are_in_transformers_mamba2_order():
    fields = lambda cls: [name for name in cls.__dataclass_fields__ if name != "attentions"]  # noqa: E731
    assert fields(hf_dla.modeling_dla.CausalLMOutputWithPast) == fields(Mamba2CausalLMOutput)
    assert fields(hf_dla.modeling_dla.BaseModelOutputWithPast) == fields(Mamba2Output)


@pytest.mark.parametrize("mixer", MIXERS)
def test_return_dict_false_gives_the_output_as_a_tuple(models, mixer):
    model, ids = models[mixer], ids_of(2, 9)
    with torch.no_grad():
        full = model(ids, labels=ids, use_cache=True, output_hidden_states=True)
        as_tuple = model(ids, labels=ids, use_cache=True, output_hidden_states=True, return_dict=False)
        backbone = model.model(ids, use_cache=False, output_hidden_states=True)
        backbone_tuple = model.model(ids, use_cache=False, output_hidden_states=True, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 4  # loss, logits, cache, hidden_states
    loss, logits, cache, hidden_states = as_tuple
    torch.testing.assert_close(loss, full.loss)
    torch.testing.assert_close(logits, full.logits)
    assert isinstance(cache, hf_dla.DLACache) and len(hidden_states) == model.config.num_hidden_layers + 1
    assert isinstance(backbone_tuple, tuple) and len(backbone_tuple) == 2  # no cache: None fields are left out
    torch.testing.assert_close(backbone_tuple[0], backbone.last_hidden_state)
    with torch.no_grad():  # without labels or cache, the logits alone, as transformers' models give them
        (only_logits,) = model(ids, use_cache=False, return_dict=False)
    torch.testing.assert_close(only_logits, full.logits)


def test_config_return_dict_false_gives_tuples(make_config):
    model = hf_dla.DLAForCausalLM(make_config(memory="vanilla", return_dict=False)).eval()
    with torch.no_grad():
        out = model(ids_of(1, 5), use_cache=False)
    assert isinstance(out, tuple) and out[0].shape == (1, 5, 64)


@pytest.mark.parametrize("mixer", MIXERS)
@pytest.mark.parametrize("packed", [False, True], ids=["rows", "packed"])
def test_hidden_states_are_the_tensors_the_layers_read_and_keep_their_gradient(models, mixer, packed):
    """As transformers' test_retain_grad_hidden_states_attentions: every hidden state gets a gradient."""
    model = models[mixer]
    ids = ids_of(2, 8)
    extra = {"position_ids": torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4]] * 2)} if packed else {}
    outputs = model(ids, use_cache=False, output_hidden_states=True, **extra)
    hidden_states = outputs.hidden_states
    assert len(hidden_states) == model.config.num_hidden_layers + 1
    assert all(h.shape == (2, 8, model.config.hidden_size) for h in hidden_states)
    torch.testing.assert_close(hidden_states[0], model.model.embeddings(ids))
    with torch.no_grad():
        last = model.model(ids, use_cache=False, **extra).last_hidden_state
    torch.testing.assert_close(hidden_states[-1], last)  # the last one after the final norm, as transformers'
    for h in hidden_states:
        h.retain_grad()
    outputs.logits.flatten()[0].backward()
    assert all(h.grad is not None and h.grad.abs().sum() > 0 for h in hidden_states)


def test_logits_stay_in_the_model_dtype_and_the_loss_is_float32(models):
    model = hf_dla.DLAForCausalLM(models["gated_deltanet"].config).to(torch.bfloat16).eval()
    ids = ids_of(2, 10)
    with torch.no_grad():
        out = model(ids, labels=ids, use_cache=False)
    assert out.logits.dtype == torch.bfloat16 and out.loss.dtype == torch.float32
    expected = F.cross_entropy(out.logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten())
    torch.testing.assert_close(out.loss, expected)


def test_no_attention_implementation_flags_and_any_request_loads(make_config):
    assert not hf_dla.DLAForCausalLM._supports_sdpa and not hf_dla.DLAForCausalLM._supports_flash_attn
    for requested in ("sdpa", "flash_attention_2", "eager", None):  # TRL scripts and hf-compress sft ask for these
        model = AutoModelForCausalLM.from_config(make_config(memory="vanilla"), attn_implementation=requested)
        assert model.config._attn_implementation == "eager"


# ----------------------------------------------------------------------------------------------------------
# Saved folders: auto_map, loading where hf_dla is absent
# ----------------------------------------------------------------------------------------------------------

LOAD_WITHOUT_HF_DLA = """
import sys
sys.modules["hf_dla"] = None  # as where hf_dla is not installed
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
folder = sys.argv[1]
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
backbone = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
inputs = tokenizer("12 + 7 =", return_tensors="pt")
with torch.no_grad():
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    torch.testing.assert_close(backbone(**inputs).last_hidden_state, model.model(**inputs).last_hidden_state)
print(type(model).__name__, type(backbone).__name__, type(model).__module__.split(".")[0], out.shape[1])
"""


@pytest.mark.slow  # a fresh Python process importing torch and transformers: ~20 s quiet, ~70 s on a loaded 2-core machine
def test_saved_folder_lists_every_auto_class_and_loads_without_hf_dla_or_a_prompt(models, tmp_path):
    """The docs' loading example, run where hf_dla cannot be imported, with no terminal to answer a prompt."""
    tokenizer = build_tokenizer()
    config = hf_dla.DLAConfig(**{**models["mamba2"].config.to_diff_dict(), "vocab_size": len(tokenizer)})
    model = hf_dla.DLAForCausalLM(config)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    auto_map = model.config.auto_map
    assert auto_map == {
        "AutoConfig": "configuration_dla.DLAConfig",
        "AutoModel": "modeling_dla.DLAModel",
        "AutoModelForCausalLM": "modeling_dla.DLAForCausalLM",
    }
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-I", "-c", LOAD_WITHOUT_HF_DLA, str(tmp_path)],
        env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    prompt_length = len(tokenizer("12 + 7 =")["input_ids"])
    assert result.stdout.split() == ["DLAForCausalLM", "DLAModel", "transformers_modules", str(prompt_length + 4)]


def test_docs_load_every_hub_model_and_tokenizer_with_trust_remote_code():
    docs = open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "hf_dla.md")).read()
    loads = [line for line in docs.splitlines() if ".from_pretrained(" in line and "your-name/" in line]
    assert any("AutoTokenizer" in line for line in loads)
    assert loads and all("trust_remote_code=True" in line for line in loads), loads


# ----------------------------------------------------------------------------------------------------------
# Generation strategies
# ----------------------------------------------------------------------------------------------------------


@torch.no_grad()
def greedy_by_hand(model, ids, steps):
    """Argmax decoding by re-running the whole sequence each step (no cache)."""
    for _ in range(steps):
        next_token = model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_token], 1)
    return ids


@torch.no_grad()
def sequence_log_prob(model, sequence, prompt_length):
    logits = model(sequence[None], use_cache=False).logits[0, prompt_length - 1 : -1].float()
    return logits.log_softmax(-1).gather(-1, sequence[prompt_length:, None]).sum()


@pytest.mark.parametrize("mixer", MIXERS)
def test_greedy_generation_equals_argmax_over_the_whole_sequence(models, mixer):
    model, ids = models[mixer], ids_of(2, 7)
    generated = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(generated, greedy_by_hand(model, ids, 6))


def test_sampling_is_seeded_and_top_k_one_is_greedy(models):
    model, ids = models["gated_deltanet"], ids_of(2, 7)

    def sample(**kwargs):
        torch.manual_seed(7)
        return model.generate(ids, max_new_tokens=6, do_sample=True, **kwargs)

    assert torch.equal(sample(temperature=1.3), sample(temperature=1.3))
    assert torch.equal(sample(top_k=1), model.generate(ids, max_new_tokens=6, do_sample=False))


@pytest.mark.parametrize("mixer", MIXERS)
def test_beam_search_scores_are_the_log_probabilities_of_its_beams(models, mixer):
    model, ids = models[mixer], ids_of(1, 6)
    out = model.generate(
        ids, max_new_tokens=5, num_beams=3, num_return_sequences=3, do_sample=False, length_penalty=0.0,
        early_stopping=True, output_scores=True, return_dict_in_generate=True,
    )  # fmt: skip
    assert out.sequences.shape == (3, 11)
    for sequence, score in zip(out.sequences, out.sequences_scores):  # length_penalty 0: the plain sum
        torch.testing.assert_close(score, sequence_log_prob(model, sequence, 6), atol=1e-4, rtol=1e-4)
    assert torch.all(out.sequences_scores[:-1] >= out.sequences_scores[1:])


@pytest.mark.parametrize("mixer", MIXERS)
def test_generation_continues_from_the_returned_cache(models, mixer):
    model, ids = models[mixer], ids_of(2, 7)
    first = model.generate(ids, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
    assert isinstance(first.cache, hf_dla.DLACache)
    continued = model.generate(first.sequences, cache=first.cache, max_new_tokens=4, do_sample=False)
    assert torch.equal(continued, model.generate(ids, max_new_tokens=8, do_sample=False))


@pytest.mark.parametrize("mixer", MIXERS)
def test_left_padded_batch_generates_what_each_prompt_does_alone(models, mixer):
    model = models[mixer]
    prompts = [ids_of(9, seed=1), ids_of(4, seed=2)]
    ids = torch.zeros(2, 9, dtype=torch.long)  # pad_token_id 0 on the left
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, -len(prompt) :], mask[row, -len(prompt) :] = prompt, 1
    batched = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    for row, prompt in enumerate(prompts):
        alone = model.generate(prompt[None], max_new_tokens=6, do_sample=False)
        assert torch.equal(batched[row, -6:], alone[0, -6:])
