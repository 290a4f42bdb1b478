"""Conversion of pretrained checkpoints to DLA: a transformers Mamba-2 model (any config, tied or untied
embeddings) becomes a DLAForCausalLM with the same logits, saved with its tokenizer; a Qwen3-Next Gated
DeltaNet layer maps onto DLA's mixer; the fine-tuning recipes of docs/hf_dla.md (memory only, LoRA) attach."""

import logging

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, Mamba2Config, Mamba2ForCausalLM, Qwen3NextConfig
from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextGatedDeltaNet

import hf_dla
from hf_dla.modeling_dla import DLAGatedDeltaNetMixer
from kit.tiny import build_tokenizer

MAMBA2_CONFIGS = [  # small, but every field the conversion reads takes a non-default value somewhere
    dict(hidden_size=32, num_heads=4, head_dim=16, state_size=8, n_groups=2, tie_word_embeddings=True),
    dict(hidden_size=24, num_heads=3, head_dim=8, expand=1, state_size=16, n_groups=1, conv_kernel=3,
         layer_norm_epsilon=1e-6, residual_in_fp32=False, tie_word_embeddings=False),
    dict(hidden_size=16, num_heads=8, head_dim=4, state_size=4, n_groups=4, num_hidden_layers=3,
         time_step_limit=(0.0, 0.3), hidden_act="silu", tie_word_embeddings=False),
]  # fmt: skip
TOKENIZER_FILE_PREFIXES = ("tokenizer", "special_tokens_map", "vocab", "merges", "added_tokens", "chat_template")


def random_mamba2(seed, vocab_size=48, **settings):
    settings = {"num_hidden_layers": 2, "chunk_size": 8, **settings}
    torch.manual_seed(seed)
    model = Mamba2ForCausalLM(Mamba2Config(vocab_size=vocab_size, pad_token_id=0, **settings)).eval()
    with torch.no_grad():  # trained-looking weights: no parameter left at a constant initial value
        for name, parameter in model.named_parameters():
            if name.endswith(("A_log", "dt_bias", "D", "norm.weight", "norm_f.weight", "conv1d.bias")):
                parameter.copy_(torch.randn_like(parameter) * 0.5 + (1.0 if "norm" in name else 0.0))
    return model


def padded_batch(vocab_size, seed=0):
    ids = torch.randint(1, vocab_size, (3, 19), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # left padding
    mask[2, :2] = 0
    ids[mask == 0] = 0
    return ids, mask


@pytest.mark.parametrize("index", range(len(MAMBA2_CONFIGS)))
@pytest.mark.parametrize("memory", ["dla", "loglinear"])
def test_converted_mamba2_has_the_original_logits(index, memory):
    source = random_mamba2(index, **MAMBA2_CONFIGS[index])
    converted = hf_dla.convert_mamba2(source, memory=memory, max_states=6, chunk_size=8)
    assert isinstance(converted, hf_dla.DLAForCausalLM) and converted.config.memory == memory
    assert converted.config.tie_word_embeddings == source.config.tie_word_embeddings
    tied = converted.lm_head.weight.data_ptr() == converted.model.embeddings.weight.data_ptr()
    assert tied == source.config.tie_word_embeddings
    ids, mask = padded_batch(48, seed=index)
    with torch.no_grad():
        expected = source(ids, attention_mask=mask).logits
        got = converted(ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-4, rtol=1e-4)


def test_convert_from_a_folder_saves_model_and_tokenizer(tmp_path):
    tokenizer = build_tokenizer()
    source = random_mamba2(7, vocab_size=len(tokenizer), **MAMBA2_CONFIGS[0])
    source.save_pretrained(tmp_path / "mamba2")
    tokenizer.save_pretrained(tmp_path / "mamba2")
    hf_dla.convert_mamba2(str(tmp_path / "mamba2"), memory="dla", max_states=4, output_dir=tmp_path / "dla")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "dla").eval()
    assert isinstance(loaded, hf_dla.DLAForCausalLM) and loaded.config.max_states == 4
    reloaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "dla")
    texts = ["12 + 7 = 19", "3 * 4", "hello world 12"]
    ids = reloaded_tokenizer(texts[:2], return_tensors="pt", padding=True)
    assert reloaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    assert reloaded_tokenizer(texts)["input_ids"] == tokenizer(texts)["input_ids"]
    with torch.no_grad():
        expected = source(**ids).logits
        got = loaded(**ids).logits
    real = ids["attention_mask"].bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-4, rtol=1e-4)


def test_convert_from_a_folder_without_a_tokenizer_saves_none_and_says_so(tmp_path, caplog):
    """AutoTokenizer would build Mamba-2's tokenizer class from its defaults there (2 tokens, every text -> [])."""
    source = random_mamba2(3, **MAMBA2_CONFIGS[0])
    source.save_pretrained(tmp_path / "mamba2")
    with caplog.at_level(logging.WARNING, logger="hf_dla.convert"):
        hf_dla.convert_mamba2(str(tmp_path / "mamba2"), memory="dla", max_states=4, output_dir=tmp_path / "dla")
    saved = sorted(path.name for path in (tmp_path / "dla").iterdir())
    assert not [name for name in saved if name.startswith(TOKENIZER_FILE_PREFIXES)], saved
    assert "model.safetensors" in saved and "config.json" in saved
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any("No tokenizer found" in message and "saved the model alone" in message for message in warnings)


def test_unsupported_sources_are_named():
    with pytest.raises(ValueError, match="use_bias=True"):
        hf_dla.convert_mamba2(random_mamba2(0, use_bias=True, **MAMBA2_CONFIGS[0]))
    with pytest.raises(TypeError, match="Mamba2ForCausalLM or its path, got dict"):
        hf_dla.convert_mamba2({})


def test_memory_only_fine_tuning_recipe_trains_the_read_weights_alone():
    model = hf_dla.convert_mamba2(random_mamba2(1, **MAMBA2_CONFIGS[0]), memory="dla", max_states=6).train()
    for name, parameter in model.named_parameters():  # the recipe of docs/hf_dla.md
        parameter.requires_grad = ".read_weights." in name
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids, mask = padded_batch(48)
    model(ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss.backward()
    optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all(".read_weights." in name for name in changed)
    assert any(name.endswith("read_weights.proj.weight") for name in changed)


@pytest.mark.parametrize(
    ("mixer", "target_modules"),
    [
        ("mamba2", ["in_proj", "out_proj"]),
        ("gated_deltanet", ["q_proj", "k_proj", "v_proj", "g_proj", "out_proj", "gate_proj", "up_proj", "down_proj"]),
    ],
)
def test_lora_target_modules_of_the_docs_attach(mixer, target_modules, make_config):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(make_config(mixer=mixer, memory="dla")).eval()
    ids = torch.randint(3, 64, (2, 12))
    with torch.no_grad():
        expected = model(ids).logits
    lora = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=target_modules, modules_to_save=["read_weights"])
    )
    trainable = [name for name, p in lora.named_parameters() if p.requires_grad]
    for module in target_modules:
        assert any(f".{module}.lora_A" in name for name in trainable), module
    assert any(".read_weights.modules_to_save." in name for name in trainable)
    assert not any("embeddings" in name or "A_log" in name for name in trainable)
    with torch.no_grad():  # LoRA's B starts at zero: the adapted model starts as the converted one
        torch.testing.assert_close(lora(input_ids=ids).logits, expected)


def test_qwen3_next_gated_deltanet_layer_converts_to_the_dla_mixer(make_config):
    heads, hidden, key_dim, value_dim = 2, 32, 16, 32
    config = make_config(mixer="gated_deltanet", memory="dla", num_heads=heads, head_dim=value_dim, state_size=key_dim)
    reference_config = Qwen3NextConfig(
        hidden_size=hidden, linear_num_key_heads=heads, linear_num_value_heads=heads, linear_key_head_dim=key_dim,
        linear_value_head_dim=value_dim, linear_conv_kernel_dim=4, rms_norm_eps=config.rms_norm_eps,
        num_hidden_layers=1, vocab_size=10, num_attention_heads=2, num_key_value_heads=2,
        layer_types=["linear_attention"],
    )  # fmt: skip
    torch.manual_seed(0)
    reference = Qwen3NextGatedDeltaNet(reference_config, layer_idx=0).eval()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.normal_(std=0.3)
    mixer = DLAGatedDeltaNetMixer(config, layer_idx=0).eval()
    hf_dla.DLAForCausalLM(config)._init_weights(mixer.read_weights)  # lambda = 1, as in a fresh model
    state = hf_dla.qwen3_next_gated_deltanet_state_dict(reference.state_dict(), heads, key_dim, value_dim)
    missing, unexpected = mixer.load_state_dict(state, strict=False)
    assert unexpected == [] and all(name.startswith("read_weights.") for name in missing)
    hidden_states = torch.randn(2, 21, hidden)
    with torch.no_grad():
        torch.testing.assert_close(mixer(hidden_states), reference(hidden_states), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="more value heads than key heads"):
        hf_dla.qwen3_next_gated_deltanet_state_dict(reference.state_dict(), heads, key_dim, value_dim // 2)
