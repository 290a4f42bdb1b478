"""Initialisation at real width: the read weights lambda start at exactly 1, so a fresh multi-state model is its
single-state backbone (the paper's models start from pretrained Mamba-2 / Gated DeltaNet at width 1536)."""

import pytest
import torch
from transformers import AutoModelForCausalLM

import hf_dla

WIDTH = 1536  # Mamba-2-780M's hidden size: W ~ N(0, 0.02) used to spread lambda over [0.3, 2.2] here


def wide_config(mixer, memory):
    # expand 1 keeps it quick; the read weights see the full width either way
    return hf_dla.DLAConfig(
        mixer=mixer, memory=memory, vocab_size=32, hidden_size=WIDTH, num_hidden_layers=2, num_heads=24,
        head_dim=64, expand=1, state_size=16, intermediate_size=64, max_states=6, chunk_size=16,
    )  # fmt: skip


@pytest.mark.parametrize("mixer", ["mamba2", "gated_deltanet"])
@pytest.mark.parametrize("memory", ["dla", "loglinear"])
def test_fresh_multistate_model_at_width_1536_equals_its_vanilla_twin(mixer, memory):
    torch.manual_seed(0)
    multi = AutoModelForCausalLM.from_config(wide_config(mixer, memory)).eval()
    vanilla = AutoModelForCausalLM.from_config(wide_config(mixer, "vanilla")).eval()
    missing, unexpected = vanilla.load_state_dict(multi.state_dict(), strict=False)
    assert missing == [] and unexpected and all("read_weights" in name for name in unexpected)
    hidden = torch.randn(2, 9, WIDTH) * 3
    for layer in multi.model.layers:
        assert torch.equal(layer.mixer.read_weights(hidden), torch.ones(2, 9, 24, 6))
    ids = torch.randint(0, 32, (2, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = vanilla(ids).logits, multi(ids).logits
    # the slot sum is the backbone's state up to float32 summation order
    assert (got - expected).abs().max() <= 1e-6 * expected.abs().max()


def test_read_weight_projection_starts_at_zero_and_still_learns(make_config):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(make_config(memory="dla"))
    read_weights = model.model.layers[0].mixer.read_weights
    assert torch.count_nonzero(read_weights.proj.weight) == 0
    ids = torch.randint(3, 64, (2, 16))
    model(ids, labels=ids).loss.backward()
    assert read_weights.proj.weight.grad.abs().sum() > 0  # dL/dW = dL/dlogit * x: W moves off zero
    assert read_weights.scale.grad.abs().sum() > 0


@pytest.mark.parametrize("hidden_size", [64, WIDTH])
def test_read_weights_init_std_spreads_the_logits_by_the_same_std_at_any_width(hidden_size):
    config = hf_dla.DLAConfig(
        memory="dla", vocab_size=8, hidden_size=hidden_size, num_hidden_layers=1, num_heads=hidden_size // 32,
        head_dim=32, expand=1, state_size=8, max_states=8, read_weights_init_std=0.5,
    )  # fmt: skip
    torch.manual_seed(0)
    read_weights = hf_dla.DLAForCausalLM(config).model.layers[0].mixer.read_weights
    hidden = torch.randn(64, hidden_size)  # RMS-normalised input: mean square 1
    logits = read_weights.proj(hidden) - read_weights.proj.bias
    assert logits.std().item() == pytest.approx(0.5, rel=0.1)
