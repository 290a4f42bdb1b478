"""DLA models as transformers citizens: Auto classes, parity with transformers' Mamba-2, decoding equal to the
full forward, constant cache memory, generate with left padding, save / load (also as remote code), training,
the memory report, and clear errors on bad settings."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, Mamba2Config, Qwen3NextConfig
from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer
from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextGatedDeltaNet

import hf_dla
from hf_dla.modeling_dla import DLAGatedDeltaNetMixer, DLAMamba2Mixer, get_multistate_op

MIXERS = ["mamba2", "gated_deltanet"]
MEMORIES = ["vanilla", "loglinear", "dla"]


def build(make_config, seed=0, **overrides):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(make_config(**overrides)).eval()


def test_auto_classes_are_registered(make_config):
    settings = make_config().to_diff_dict()
    settings.pop("model_type")
    config = AutoConfig.for_model("dla", **settings)
    assert isinstance(config, hf_dla.DLAConfig)
    assert isinstance(AutoModel.from_config(config), hf_dla.DLAModel)
    assert isinstance(AutoModelForCausalLM.from_config(config), hf_dla.DLAForCausalLM)


def test_vanilla_mamba2_mixer_equals_transformers_mamba2_mixer(make_config):
    config = make_config(mixer="mamba2", memory="vanilla", num_heads=4, head_dim=16, state_size=8, n_groups=2)
    torch.manual_seed(0)
    mine = DLAMamba2Mixer(config, layer_idx=0).eval()
    for parameter in mine.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    reference_config = Mamba2Config(
        hidden_size=32, num_heads=4, head_dim=16, state_size=8, n_groups=2, expand=2, chunk_size=8,
        num_hidden_layers=1, vocab_size=10, layer_norm_epsilon=config.rms_norm_eps,
    )  # fmt: skip
    reference = Mamba2Mixer(reference_config, layer_idx=0).eval()
    reference.load_state_dict(mine.state_dict(), strict=True)  # same parameter names and shapes
    hidden = torch.randn(2, 21, 32)
    with torch.no_grad():
        torch.testing.assert_close(mine(hidden), reference(hidden), atol=1e-5, rtol=1e-5)


def test_vanilla_gated_deltanet_mixer_equals_transformers_qwen3_next_layer(make_config):
    heads, hidden = 2, 32
    config = make_config(mixer="gated_deltanet", memory="vanilla", num_heads=heads, head_dim=32, state_size=16)
    torch.manual_seed(0)
    mine = DLAGatedDeltaNetMixer(config, layer_idx=0).eval()
    for parameter in mine.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    reference_config = Qwen3NextConfig(
        hidden_size=hidden, linear_num_key_heads=heads, linear_num_value_heads=heads, linear_key_head_dim=16,
        linear_value_head_dim=32, linear_conv_kernel_dim=4, rms_norm_eps=config.rms_norm_eps, num_hidden_layers=1,
        vocab_size=10, num_attention_heads=2, num_key_value_heads=2, layer_types=["linear_attention"],
    )  # fmt: skip
    reference = Qwen3NextGatedDeltaNet(reference_config, layer_idx=0).eval()

    def per_head(weight, rows):
        return weight.view(heads, rows, hidden)

    with torch.no_grad():  # Qwen3-Next fuses the projections head by head: [q_h, k_h, v_h, z_h] and [b_h, a_h]
        qkvz = [(mine.q_proj, 16), (mine.k_proj, 16), (mine.v_proj, 32), (mine.g_proj, 32)]
        reference.in_proj_qkvz.weight.copy_(torch.cat([per_head(p.weight, n) for p, n in qkvz], 1).flatten(0, 1))
        ba = [per_head(mine.b_proj.weight, 1), per_head(mine.a_proj.weight, 1)]
        reference.in_proj_ba.weight.copy_(torch.cat(ba, 1).flatten(0, 1))
        for name in ("conv1d.weight", "dt_bias", "A_log", "out_proj.weight"):
            reference.get_parameter(name).copy_(mine.get_parameter(name))
        reference.norm.weight.normal_()
        mine.norm.weight.copy_(reference.norm.weight.repeat(heads))  # theirs is shared by the heads
        hidden_states = torch.randn(2, 21, hidden)
        torch.testing.assert_close(mine(hidden_states), reference(hidden_states), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mixer", MIXERS)
@pytest.mark.parametrize("memory", MEMORIES)
def test_token_by_token_decoding_equals_full_forward(mixer, memory, make_config):
    model = build(make_config, mixer=mixer, memory=memory)
    ids = torch.randint(3, 64, (2, 24))
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :9], use_cache=True)  # chunked prefill
        logits, cache = [out.logits], out.cache
        out = model(ids[:, 9:14], cache=cache, use_cache=True)  # chunked continuation from the cache
        logits.append(out.logits)
        for t in range(14, ids.shape[1]):  # the naive step
            out = model(ids[:, t : t + 1], cache=cache, use_cache=True)
            logits.append(out.logits)
    torch.testing.assert_close(torch.cat(logits, 1), full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mixer", MIXERS)
@pytest.mark.parametrize("memory", ["loglinear", "dla"])
def test_lambda_one_model_equals_vanilla_model(mixer, memory, make_config):
    vanilla = build(make_config, mixer=mixer, memory="vanilla")
    multi = AutoModelForCausalLM.from_config(make_config(mixer=mixer, memory=memory)).eval()
    missing, unexpected = multi.load_state_dict(vanilla.state_dict(), strict=False)
    assert unexpected == [] and all("read_weights" in name for name in missing)
    for layer in multi.model.layers:  # lambda = softplus(1 * log(e - 1)) = 1 whatever the input
        torch.nn.init.zeros_(layer.mixer.read_weights.proj.weight)
        torch.nn.init.constant_(layer.mixer.read_weights.proj.bias, torch.log(torch.expm1(torch.tensor(1.0))).item())
    ids = torch.randint(3, 64, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(multi(ids).logits, vanilla(ids).logits, atol=1e-5, rtol=1e-5)


def test_read_weights_start_near_one(make_config):
    model = build(make_config, memory="dla")
    lam = model.model.layers[0].mixer.read_weights(torch.randn(2, 5, 32))
    assert lam.shape == (2, 5, 2, 6)
    assert (lam - 1).abs().max() < 0.3


def _decode_cache_bytes(model, steps):
    cache = None
    token = torch.tensor([[5]])
    sizes = {}
    with torch.no_grad():
        for step in range(1, steps + 1):
            out = model(token, cache=cache, use_cache=True)
            cache, token = out.cache, out.logits[:, -1:].argmax(-1)
            if step in (100, steps):
                sizes[step] = cache.memory_bytes()
    return sizes


@pytest.mark.parametrize("memory", ["dla"])
def test_cache_memory_is_the_same_after_100_and_2000_tokens(memory, make_config):
    model = build(make_config, memory=memory, num_hidden_layers=1, max_states=12)
    sizes = _decode_cache_bytes(model, 2000)
    assert sizes[100] == sizes[2000] > 0


@pytest.mark.slow
@pytest.mark.parametrize("mixer", MIXERS)
@pytest.mark.parametrize("memory", MEMORIES)
def test_cache_memory_is_constant_every_mode(mixer, memory, make_config):
    model = build(make_config, mixer=mixer, memory=memory, num_hidden_layers=1, max_states=12)
    sizes = _decode_cache_bytes(model, 2000)
    assert sizes[100] == sizes[2000] > 0


@pytest.mark.parametrize("mixer", MIXERS)
def test_generate_greedy_with_left_padding_matches_unpadded(mixer, make_config):
    model = build(make_config, mixer=mixer, memory="dla")
    prompts = [torch.randint(3, 64, (10,)), torch.randint(3, 64, (6,))]
    ids = torch.zeros(2, 10, dtype=torch.long)  # pad_token_id = 0, left padding
    mask = torch.zeros(2, 10, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, -len(prompt) :], mask[row, -len(prompt) :] = prompt, 1
    batched = model.generate(
        ids, attention_mask=mask, max_new_tokens=8, do_sample=False, output_scores=True, return_dict_in_generate=True
    )
    for row, prompt in enumerate(prompts):
        alone = model.generate(
            prompt[None], max_new_tokens=8, do_sample=False, output_scores=True, return_dict_in_generate=True
        )
        assert torch.equal(batched.sequences[row, -8:], alone.sequences[0, -8:])
        torch.testing.assert_close(
            torch.stack([s[row] for s in batched.scores]),
            torch.stack([s[0] for s in alone.scores]),
            atol=1e-4,
            rtol=1e-4,
        )


def test_generate_sampling_batch_with_padding_is_seeded(make_config):
    model = build(make_config, mixer="gated_deltanet", memory="loglinear")
    ids = torch.randint(3, 64, (3, 7))
    mask = torch.ones_like(ids)
    ids[1:, :3], mask[1:, :3] = 0, 0

    def sample():
        torch.manual_seed(123)
        return model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=True, top_k=20, temperature=1.5)

    first, second = sample(), sample()
    assert first.shape == (3, 13) and torch.equal(first, second)
    assert torch.equal(first[:, :7], ids) and ((first >= 0) & (first < 64)).all()


def test_save_pretrained_round_trip_through_auto_class(make_config, tmp_path):
    model = build(make_config, mixer="gated_deltanet", memory="dla")
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "dla"
    assert saved["auto_map"]["AutoModelForCausalLM"] == "modeling_dla.DLAForCausalLM"
    assert saved["auto_map"]["AutoConfig"] == "configuration_dla.DLAConfig"
    for name in ("modeling_dla.py", "configuration_dla.py", "memory_plans.py", "ops_naive.py", "ops_chunk.py"):
        assert (tmp_path / name).exists(), name
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is hf_dla.DLAForCausalLM and loaded.config.memory == "dla"
    ids = torch.randint(3, 64, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_saved_folder_loads_with_trust_remote_code_without_hf_dla(make_config, tmp_path):
    model = build(make_config, mixer="mamba2", memory="dla")
    model.save_pretrained(tmp_path / "model")
    ids = torch.randint(3, 64, (1, 12))
    with torch.no_grad():
        expected = model(ids).logits
    torch.save({"ids": ids, "logits": expected}, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import sys, torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True).eval()
        data = torch.load({str(tmp_path / "expected.pt")!r})
        with torch.no_grad():
            torch.testing.assert_close(model(data["ids"]).logits, data["logits"])
            out = model.generate(data["ids"], max_new_tokens=3, do_sample=False)
        assert out.shape == (1, 15), out.shape
        assert "hf_dla" not in sys.modules, "hf_dla was imported"
        print("remote-code", type(model).__module__)
        """
    )
    # -I: isolated mode, so neither the working directory nor PYTHONPATH can provide hf_dla
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-I", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote-code transformers_modules" in result.stdout


@pytest.mark.parametrize("mixer", MIXERS)
@pytest.mark.parametrize("memory", MEMORIES)
@pytest.mark.parametrize("backend", ["naive", "chunk"])
def test_every_combination_trains(mixer, memory, backend, make_config):
    model = build(make_config, mixer=mixer, memory=memory, backend=backend, num_hidden_layers=1).train()
    torch.manual_seed(1)
    batch = torch.randint(3, 64, (4, 16))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        loss = model(batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses
    if memory != "vanilla":  # the read weights learn too
        scale = model.model.layers[0].mixer.read_weights.scale
        assert not torch.equal(scale, torch.ones_like(scale))


def test_memory_report_lists_slots_and_writes_a_png(make_config, tmp_path):
    model = build(make_config, memory="dla", max_states=4, merge_threshold=0.3)
    ids = torch.randint(3, 64, (30,))
    report = model.memory_report(ids, plot_path=str(tmp_path / "slots.png"))
    assert len(report.layers) == 2
    for layer in report.layers:
        slots = layer["slots"]
        assert 1 <= len(slots) <= 4
        assert slots[0]["start"] == 0 and slots[-1]["end"] == 29
        assert all(a["end"] + 1 == b["start"] for a, b in zip(slots, slots[1:]))
        assert sum(s["tokens"] for s in slots) == 30
        assert sum(layer["opened"]) - sum(m >= 0 for m in layer["merged"]) == len(slots)
    assert (tmp_path / "slots.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report.to_markdown().startswith("| layer |")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"mixer": "mamba3"}, "mixer='mamba3' is unknown"),
        ({"memory": "fenwick"}, "memory='fenwick' is unknown"),
        ({"backend": "cuda"}, "backend='cuda' is unknown"),
        ({"max_states": 1}, "max_states=1 must be at least 2"),
        ({"head_dim": 30}, "num_heads \\* head_dim = 2 \\* 30 must equal expand \\* hidden_size"),
        ({"merge_threshold": 2.5}, "merge_threshold=2.5 must lie in"),
        ({"n_groups": 3}, "n_groups=3 must divide num_heads=2"),
    ],
)
def test_bad_config_names_the_field_and_the_fix(overrides, message, make_config):
    with pytest.raises(Exception, match=message):
        make_config(**overrides)


def test_triton_backend_without_triton_is_a_clear_error(monkeypatch, make_config):
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *args: None)
    with pytest.raises(ImportError, match="backend='triton' needs the `triton` package.*backend='chunk'"):
        get_multistate_op("triton", "mamba2")
    with pytest.raises(ImportError, match="backend='triton'"):
        AutoModelForCausalLM.from_config(make_config(backend="triton"))


def test_runtime_errors_name_the_problem(make_config):
    model = build(make_config, memory="loglinear", max_states=3)
    with pytest.raises(ValueError, match="holds at most 4 tokens"):
        model(torch.randint(3, 64, (1, 5)))
    with pytest.raises(TypeError, match="need a DLACache"):
        model(torch.randint(3, 64, (1, 3)), cache=object(), use_cache=True)
    with pytest.raises(ValueError, match="memory='loglinear'"):
        model.memory_report(torch.randint(3, 64, (5,)))


@pytest.mark.parametrize("mixer", MIXERS)
def test_empty_inputs_are_a_clear_error_naming_the_input_and_its_shape(mixer, make_config):
    """T = 0 used to report a wrong T from deep inside the op, B = 0 a reshape error, an empty prompt an IndexError
    in generate and memory_report a conv error."""
    model = build(make_config, mixer=mixer, memory="dla")
    no_tokens = torch.zeros(1, 0, dtype=torch.long)
    with pytest.raises(ValueError, match=r"input_ids has shape \(1, 0\): sequences of no tokens \(T = 0\)"):
        model(no_tokens)
    with pytest.raises(ValueError, match=r"input_ids has shape \(2, 0\): sequences of no tokens"):
        model(torch.zeros(2, 0, dtype=torch.long), attention_mask=torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"inputs_embeds has shape \(1, 0, 32\): sequences of no tokens"):
        model(inputs_embeds=torch.zeros(1, 0, 32))
    with pytest.raises(ValueError, match=r"input_ids has shape \(0, 5\): an empty batch \(B = 0\)"):
        model(torch.zeros(0, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"input_ids has shape \(1, 0\).*start the prompt with the BOS token"):
        model.generate(no_tokens, max_new_tokens=3)
    with pytest.raises(ValueError, match=r"input_ids has shape \(0, 4\): an empty batch"):
        model.generate(torch.zeros(0, 4, dtype=torch.long), max_new_tokens=3)
    with pytest.raises(ValueError, match=r"memory_report needs .* one token; got input_ids of shape \(0,\)"):
        model.memory_report(torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"memory_report needs .* one token; got input_ids of shape \(1, 0\)"):
        model.memory_report(no_tokens)
    # One token is enough: a BOS-only prompt generates.
    assert model.generate(torch.ones(1, 1, dtype=torch.long), max_new_tokens=3, do_sample=False).shape == (1, 4)


def test_bfloat16_weights_and_gradient_checkpointing(make_config):
    model = build(make_config, mixer="gated_deltanet", memory="dla")
    ids = torch.randint(3, 64, (2, 12))
    with torch.no_grad():
        reference = model(ids).logits
        half = AutoModelForCausalLM.from_config(model.config, dtype=torch.bfloat16).eval()
        half.load_state_dict(model.state_dict())
        assert half.generate(ids, max_new_tokens=4, do_sample=False).shape == (2, 16)
        logits = half(ids).logits
        assert logits.dtype == torch.bfloat16  # the model's dtype, as transformers' models keep it
        torch.testing.assert_close(logits.float(), reference, atol=0.1, rtol=0.1)
    # Checkpointing recomputes each layer in the backward pass: the same gradients, one more forward per layer.
    expected, calls_without = _gradients_and_layer_calls(model.train(), ids)
    model.activation_checkpointing_enable()
    actual, calls_with = _gradients_and_layer_calls(model, ids)
    assert (calls_without, calls_with) == (1, 2)
    assert actual.keys() == expected.keys() and len(expected) == len(list(model.parameters()))
    for name, gradient in expected.items():
        torch.testing.assert_close(actual[name], gradient, atol=1e-6, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def _gradients_and_layer_calls(model, ids):
    """Gradients of the LM loss on `ids`, and how many times the first layer's mixer ran to produce them (a hook on
    the mixer: transformers checkpoints a layer's `forward`, so hooks on the layer itself run once either way)."""
    calls = []
    handle = model.model.layers[0].mixer.register_forward_hook(lambda *_: calls.append(1))
    try:
        model.zero_grad(set_to_none=True)
        model(ids, labels=ids).loss.backward()
    finally:
        handle.remove()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}, len(calls)


def test_beam_search_with_the_cache_equals_beam_search_without(make_config):
    model = build(make_config, mixer="mamba2", memory="dla", max_states=4)
    ids = torch.randint(3, 64, (2, 6))
    kwargs = dict(max_new_tokens=8, num_beams=3, output_scores=True, return_dict_in_generate=True)
    cached = model.generate(ids, **kwargs)  # DLACache.reorder_cache moves slots and plan states with the beams
    recomputed = model.generate(ids, use_cache=False, **kwargs)
    assert torch.equal(cached.sequences, recomputed.sequences)
    torch.testing.assert_close(cached.sequences_scores, recomputed.sequences_scores, atol=1e-4, rtol=1e-4)


def test_transformers_trainer_trains_a_dla_model(make_config, tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    model = build(make_config, mixer="gated_deltanet", memory="dla").train()
    rows = torch.randint(3, 64, (4, 16)).repeat(4, 1).tolist()
    dataset = Dataset.from_dict({"input_ids": rows, "labels": rows})
    arguments = TrainingArguments(
        output_dir=str(tmp_path), max_steps=5, per_device_train_batch_size=4, learning_rate=3e-3,
        logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", seed=0,
    )  # fmt: skip
    trainer = Trainer(model=model, args=arguments, train_dataset=dataset)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 5 and losses[-1] < losses[0]
