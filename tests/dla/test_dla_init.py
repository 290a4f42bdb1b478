"""Initialisation at real width: the read weights lambda start at exactly 1, so a fresh multi-state model is its
single-state backbone (the paper's models start from pretrained Mamba-2 / Gated DeltaNet at width 1536)."""

import math

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
    # the slot sum is the backbone's state up to float32 summation order (the norms and gates run in float32 whatever
    # the weights' dtype): 1.5e-6 of the largest logit with Mamba-2's reference init (std 0.1), 3e-7 at std 0.02
    assert (got - expected).abs().max() <= 4e-6 * expected.abs().max()


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


# ----------------------------------------------------------------------------------------------------------
# From scratch: the Mamba-2 initialisation of transformers' Mamba2ForCausalLM, parameter by parameter
# ----------------------------------------------------------------------------------------------------------

# Many heads, so that the per-head dt draws form a sample; wide enough for the weight statistics to settle.
SAMPLE = dict(vocab_size=256, hidden_size=256, num_hidden_layers=2, num_heads=128, head_dim=4, state_size=16,
              expand=2, n_groups=1, conv_kernel=4, tie_word_embeddings=True)  # fmt: skip
DETERMINISTIC = ("A_log", "D", "norm.weight", "norm_f.weight", "conv1d.bias")


def fresh_pair(seed=0, **overrides):
    """A fresh transformers Mamba2ForCausalLM and a fresh DLA vanilla Mamba-2 of the same size (each its own init)."""
    from transformers import Mamba2Config, Mamba2ForCausalLM

    torch.manual_seed(seed)
    reference = Mamba2ForCausalLM(Mamba2Config(**SAMPLE, **overrides))
    torch.manual_seed(seed + 1)
    dla = hf_dla.DLAForCausalLM(hf_dla.DLAConfig(mixer="mamba2", memory="vanilla", **SAMPLE, **overrides))
    theirs = {name.replace("backbone.", "model."): p.detach() for name, p in reference.named_parameters()}
    return theirs, dict(dla.named_parameters())


def ks_statistic(a, b):
    """Two-sample Kolmogorov-Smirnov distance: the largest gap between the empirical CDFs."""
    points = torch.cat([a, b]).sort().values
    cdf = lambda x: torch.searchsorted(x.sort().values, points, right=True).float() / x.numel()  # noqa: E731
    return (cdf(a) - cdf(b)).abs().max().item()


def log_dt(dt_bias):
    return torch.log(torch.nn.functional.softplus(dt_bias.detach()))


def test_fresh_mamba2_initialises_like_transformers_mamba2_parameter_by_parameter():
    theirs, ours = fresh_pair()
    assert hf_dla.DLAConfig(mixer="mamba2").initializer_range == 0.1  # Mamba2Config's, when unset
    assert sorted(ours) == sorted(theirs)  # the same parameters, by name (lm_head tied to the embeddings)
    for name, param in ours.items():
        param, reference = param.detach(), theirs[name]
        assert param.shape == reference.shape, name
        if name.endswith(DETERMINISTIC):
            assert torch.equal(param, reference), name
        elif name.endswith("dt_bias"):  # dt ~ log-uniform on [time_step_min, time_step_max], drawn per head
            assert log_dt(param).min() >= math.log(1e-3) - 1e-5 and log_dt(param).max() <= math.log(0.1) + 1e-5
            assert log_dt(param).mean().item() == pytest.approx(log_dt(reference).mean().item(), abs=0.4), name
            assert ks_statistic(log_dt(param), log_dt(reference)) < 0.25, name  # 128 draws each: p < 0.001 above
        else:  # random weights: same distribution (normal or Kaiming uniform), same scale
            assert param.mean().item() == pytest.approx(0.0, abs=4 * reference.std().item() / param.numel() ** 0.5)
            assert param.std().item() == pytest.approx(reference.std().item(), rel=0.1), name
            assert param.abs().max().item() == pytest.approx(reference.abs().max().item(), rel=0.25), name


def test_mamba2_dt_is_drawn_not_spread_and_follows_the_seed():
    _, first = fresh_pair(seed=0)
    _, again = fresh_pair(seed=0)
    _, other = fresh_pair(seed=5)
    dt_bias = "model.layers.0.mixer.dt_bias"
    assert torch.equal(first[dt_bias], again[dt_bias]) and not torch.equal(first[dt_bias], other[dt_bias])
    assert not torch.all(log_dt(first[dt_bias]).diff() > 0)  # not the log-spaced ramp over the heads


def test_rescale_prenorm_residual_divides_out_proj_as_transformers_does():
    theirs, ours = fresh_pair(rescale_prenorm_residual=True)
    plain, _ = fresh_pair()
    out_proj = "model.layers.1.mixer.out_proj.weight"
    assert ours[out_proj].std().item() == pytest.approx(theirs[out_proj].std().item(), rel=0.1)
    assert theirs[out_proj].std().item() == pytest.approx(plain[out_proj].std().item() / math.sqrt(2), rel=0.1)


@pytest.mark.parametrize("memory", ["loglinear", "dla"])
def test_fresh_multistate_mamba2_reads_with_lambda_one_and_equals_its_vanilla_twin(memory):
    """The new init changes the backbone only: multi-state models still start as their vanilla twin."""
    config = dict(SAMPLE, num_heads=4, head_dim=128, max_states=6, chunk_size=8)
    torch.manual_seed(0)
    multi = hf_dla.DLAForCausalLM(hf_dla.DLAConfig(mixer="mamba2", memory=memory, **config)).eval()
    vanilla = hf_dla.DLAForCausalLM(hf_dla.DLAConfig(mixer="mamba2", memory="vanilla", **config)).eval()
    vanilla.load_state_dict(multi.state_dict(), strict=False)
    hidden = torch.randn(2, 5, 256) * 3
    assert torch.equal(multi.model.layers[0].mixer.read_weights(hidden), torch.ones(2, 5, 4, 6))
    ids = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = vanilla(ids).logits, multi(ids).logits
    assert (got - expected).abs().max() <= 4e-6 * expected.abs().max()


def test_gated_deltanet_keeps_the_scale_of_its_references():
    """Qwen3-Next's and fla's Gated DeltaNet configs use initializer_range 0.02; so does DLA's, unset."""
    from transformers import Qwen3NextConfig

    assert hf_dla.DLAConfig(mixer="gated_deltanet").initializer_range == Qwen3NextConfig().initializer_range == 0.02
    config = hf_dla.DLAConfig(mixer="gated_deltanet", memory="vanilla", vocab_size=64, hidden_size=128,
                              num_hidden_layers=1, num_heads=2, head_dim=128, state_size=32, intermediate_size=256)  # fmt: skip
    torch.manual_seed(0)
    mixer = hf_dla.DLAForCausalLM(config).model.layers[0].mixer
    for projection in (mixer.q_proj, mixer.k_proj, mixer.v_proj, mixer.out_proj):
        assert projection.weight.std().item() == pytest.approx(0.02, rel=0.1)
