"""DLA models through the Hub (the local one of tests/hub_server.py): `push_to_hub`, then another process where hf_dla
cannot be imported loads the repo with `trust_remote_code=True`, gets the same logits and generates the same tokens.
The same for a Mamba-2 converted and pushed by `convert_mamba2(push_to_hub=True)`, tokenizer included."""

import json
import logging
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_dla
from kit.tiny import build_tokenizer

MIXERS = ["mamba2", "gated_deltanet"]
MEMORIES = ["vanilla", "loglinear", "dla"]
FAST = ("gated_deltanet", "dla")  # the default run pushes and loads this one; the rest of the grid is slow
FLAT_MODULES = {
    "configuration_dla",
    "modeling_dla",
    "memory_plans",
    "ops_utils",
    "ops_naive",
    "ops_chunk",
    "ops_dispatch",
}
TEXTS = ["12 + 7 = 19", "hello world 12"]

# Run in a subprocess. hf_dla is installed here (editable), so the guard makes `import hf_dla` fail as it would where
# it is not installed; the model then runs from the files transformers downloads into its modules cache.
LOAD_SCRIPT = """
import sys
sys.modules["hf_dla"] = None
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

repo_id, expected_path = sys.argv[1], sys.argv[2]
expected = torch.load(expected_path)
model = AutoModelForCausalLM.from_pretrained(repo_id, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
with torch.no_grad():
    torch.testing.assert_close(model(expected["ids"]).logits, expected["logits"], rtol=1e-5, atol=1e-5)
    generated = model.generate(expected["ids"], max_new_tokens=4, do_sample=False)
assert torch.equal(generated, expected["generated"]), (generated, expected["generated"])
if "encoded" in expected:
    assert AutoTokenizer.from_pretrained(repo_id)(expected["texts"])["input_ids"] == expected["encoded"]
assert sys.modules["hf_dla"] is None, "hf_dla was imported"
print("loaded", type(model).__module__)
"""


def expected_outputs(model, ids, tokenizer=None) -> dict:
    with torch.no_grad():
        expected = {"ids": ids, "logits": model(ids).logits}
        expected["generated"] = model.generate(ids, max_new_tokens=4, do_sample=False)
    if tokenizer is not None:
        expected.update(texts=TEXTS, encoded=tokenizer(TEXTS)["input_ids"])
    return expected


def load_elsewhere(repo_id, expected, hub_env, tmp_path):
    """Load `repo_id` with trust_remote_code in a process that cannot import hf_dla; check it against `expected`."""
    torch.save(expected, tmp_path / "expected.pt")
    # -I: neither the working directory (the repository root has hf_dla/) nor PYTHONPATH is on sys.path
    result = subprocess.run(
        [sys.executable, "-I", "-c", textwrap.dedent(LOAD_SCRIPT), repo_id, str(tmp_path / "expected.pt")],
        cwd=tmp_path, env=hub_env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loaded transformers_modules." in result.stdout


def pushed_files(hub_server, repo_id) -> set[str]:
    return {path.name for path in hub_server.repo_dir(repo_id).iterdir()}


def assert_remote_code_repo(hub_server, repo_id):
    """config.json with auto_map, the modeling files and the weights."""
    files = pushed_files(hub_server, repo_id)
    assert {f"{name}.py" for name in FLAT_MODULES} <= files, files
    assert "model.safetensors" in files, files
    config = json.loads((hub_server.repo_dir(repo_id) / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_dla.DLAForCausalLM"
    assert config["auto_map"]["AutoConfig"] == "configuration_dla.DLAConfig"


@pytest.mark.parametrize(
    ("mixer", "memory"),
    [
        (mixer, memory) if (mixer, memory) == FAST else pytest.param(mixer, memory, marks=pytest.mark.slow)
        for mixer in MIXERS
        for memory in MEMORIES
    ],
)
def test_pushed_model_loads_with_remote_code_where_hf_dla_is_not_installed(
    mixer, memory, make_config, hub_server, hub_env, tmp_path
):
    torch.manual_seed(0)
    # read_weights_init_std: lambdas away from 1, so the memory plan and the read weights shape the logits
    model = AutoModelForCausalLM.from_config(make_config(mixer=mixer, memory=memory, read_weights_init_std=0.5)).eval()
    repo_id = f"user/dla-tiny-{mixer}-{memory}"
    model.push_to_hub(repo_id)
    assert_remote_code_repo(hub_server, repo_id)
    ids = torch.randint(3, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    load_elsewhere(repo_id, expected_outputs(model, ids), hub_env, tmp_path)


def mamba2_folder(path, with_tokenizer: bool):
    """A small random transformers Mamba-2 checkpoint (with the kit tokenizer's vocabulary) saved in `path`."""
    from transformers import Mamba2Config, Mamba2ForCausalLM

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = Mamba2Config(
        vocab_size=len(tokenizer), hidden_size=32, num_heads=4, head_dim=16, state_size=8, n_groups=2,
        num_hidden_layers=2, chunk_size=8, pad_token_id=0,
    )  # fmt: skip
    source = Mamba2ForCausalLM(config).eval()
    source.save_pretrained(path)
    if with_tokenizer:
        tokenizer.save_pretrained(path)
    return source, tokenizer


def test_convert_mamba2_pushes_model_and_tokenizer(hub_server, hub_env, tmp_path):
    source, tokenizer = mamba2_folder(tmp_path / "mamba2", with_tokenizer=True)
    hf_dla.convert_mamba2(str(tmp_path / "mamba2"), max_states=4, push_to_hub=True, repo_id="user/mamba2-dla-tok")
    assert_remote_code_repo(hub_server, "user/mamba2-dla-tok")
    assert {"tokenizer.json", "tokenizer_config.json"} <= pushed_files(hub_server, "user/mamba2-dla-tok")
    pulled = AutoTokenizer.from_pretrained("user/mamba2-dla-tok")
    assert pulled(TEXTS)["input_ids"] == tokenizer(TEXTS)["input_ids"]


@pytest.mark.slow
def test_converted_and_pushed_mamba2_loads_with_remote_code_where_hf_dla_is_not_installed(
    hub_server, hub_env, tmp_path
):
    source, tokenizer = mamba2_folder(tmp_path / "mamba2", with_tokenizer=True)
    converted = hf_dla.convert_mamba2(
        str(tmp_path / "mamba2"), memory="dla", max_states=4, push_to_hub=True, repo_id="user/mamba2-dla"
    )
    ids = tokenizer(TEXTS, return_tensors="pt", padding=True)["input_ids"]
    expected = expected_outputs(converted, ids, tokenizer)
    with torch.no_grad():  # the converted model is the source model: the pushed one must be too
        torch.testing.assert_close(expected["logits"], source(ids).logits, rtol=1e-4, atol=1e-4)
    load_elsewhere("user/mamba2-dla", expected, hub_env, tmp_path)


def test_convert_mamba2_pushes_to_the_output_dir_name_and_says_when_there_is_no_tokenizer(
    hub_server, hub_env, tmp_path, caplog
):
    mamba2_folder(tmp_path / "mamba2", with_tokenizer=False)
    output_dir = tmp_path / "mamba2-dla-alone"
    with caplog.at_level(logging.WARNING, logger="hf_dla.convert"):
        hf_dla.convert_mamba2(str(tmp_path / "mamba2"), max_states=4, output_dir=output_dir, push_to_hub=True)
    # as save_pretrained(output_dir, push_to_hub=True): the repo is named after the folder, in the user's namespace
    assert_remote_code_repo(hub_server, "user/mamba2-dla-alone")
    assert not [name for name in pushed_files(hub_server, "user/mamba2-dla-alone") if name.startswith("tokenizer")]
    assert (output_dir / "model.safetensors").exists()
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any("No tokenizer found" in message and "pushed to mamba2-dla-alone" in message for message in warnings)


def test_convert_mamba2_push_needs_a_repo_id_or_an_output_dir():
    with pytest.raises(ValueError, match="push_to_hub=True.*needs repo_id="):
        hf_dla.convert_mamba2("never/read", push_to_hub=True)
