"""DLAConfig validates every field at construction, with a message naming the field and the fix, and saved
configs still load."""

import pytest
from transformers import AutoConfig

import hf_dla


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"mixer": "mamba3"}, r"mixer='mamba3' is unknown; choose one of"),
        ({"memory": "fenwick"}, r"memory='fenwick' is unknown"),
        ({"backend": "cuda"}, r"backend='cuda' is unknown"),
        ({"state_size": 0}, r"state_size=0 must be at least 1"),
        ({"num_hidden_layers": 0}, r"num_hidden_layers=0 must be at least 1"),
        ({"vocab_size": -3}, r"vocab_size=-3 must be at least 1"),
        ({"hidden_size": True}, r"hidden_size=True must be an integer \(got bool\)"),
        ({"max_states": 8.0}, r"max_states=8.0 must be an integer \(got float\); pass max_states=8"),
        ({"max_states": "8"}, r"max_states='8' must be an integer \(got str\)"),
        ({"max_states": 1}, r"max_states=1 must be at least 2.*memory='vanilla'"),
        ({"chunk_size": 0}, r"chunk_size=0 must be at least 1"),
        ({"conv_kernel": 0}, r"conv_kernel=0 must be at least 1"),
        ({"n_groups": 0}, r"n_groups=0 must be at least 1"),
        ({"n_groups": 3}, r"n_groups=3 must divide num_heads=2"),
        ({"expand": 0}, r"expand=0 must be at least 1"),
        ({"intermediate_size": 0}, r"intermediate_size=0 must be at least 1"),
        (
            {"head_dim": 30},
            r"num_heads \* head_dim = 2 \* 30 must equal expand \* hidden_size = 2 \* 32; set head_dim",
        ),
        ({"merge_threshold": 2.5}, r"merge_threshold=2.5 must lie in \[0, 2\)"),
        ({"merge_threshold": float("nan")}, r"merge_threshold=nan must be a real number"),
        ({"rms_norm_eps": -1}, r"rms_norm_eps=-1 must be positive.*1e-5"),
        ({"rms_norm_eps": 0.0}, r"rms_norm_eps=0.0 must be positive"),
        ({"initializer_range": -0.02}, r"initializer_range=-0.02 is a std"),
        ({"read_weights_init_std": -0.1}, r"read_weights_init_std=-0.1 is a std: use a value >= 0"),
        ({"time_step_min": 0.5}, r"time_step_min=0.5 and time_step_max=0.1 must satisfy 0 < time_step_min <="),
        ({"time_step_min": 0.0}, r"time_step_min=0.0 and time_step_max=0.1 must satisfy"),
        ({"time_step_floor": -1e-4}, r"time_step_floor=-0.0001 must be >= 0"),
        ({"time_step_limit": (1.0,)}, r"time_step_limit=\(1.0,\) must be two numbers \(low, high\)"),
        ({"time_step_limit": (0.5, 0.1)}, r"time_step_limit=\(0.5, 0.1\) must be two numbers"),
        ({"hidden_act": "swish2"}, r"hidden_act='swish2' is not an activation transformers knows"),
        ({"use_cache": "yes"}, r"use_cache='yes' must be True or False"),
    ],
)
def test_bad_field_is_refused_at_construction_naming_the_field_and_the_fix(overrides, message, make_config):
    with pytest.raises(Exception, match=message):
        make_config(**overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"mixer": "gated_deltanet", "memory": "loglinear", "time_step_limit": (0.0, 0.5)},
        {"memory": "vanilla", "max_states": 1, "hidden_act": "gelu"},
    ],
)
def test_saved_configs_load_back_equal(overrides, make_config, tmp_path):
    config = make_config(**overrides)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, hf_dla.DLAConfig)
    assert loaded.to_diff_dict() == config.to_diff_dict()  # time_step_limit's inf survives JSON (as Infinity)


def test_defaults_and_the_docstring_example_are_valid():
    hf_dla.DLAConfig()
    hf_dla.DLAConfig(
        mixer="gated_deltanet", memory="dla", max_states=8, hidden_size=128, num_hidden_layers=2, num_heads=4,
        head_dim=64, state_size=32, vocab_size=1000,
    )  # fmt: skip
