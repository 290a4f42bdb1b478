"""`hf-compress sft --push_to_hub` against the local Hub (tests/hub_server.py): a LoRA student whose card names its
base model and variant, which `peft` loads back in a fresh process with the logits of the local student; and the
access check before the model is loaded."""

import json
import os
import subprocess
import sys

import pytest
import torch
from datasets import DatasetDict
from huggingface_hub import HfApi, ModelCard

from kit.tiny import build_tokenizer, make_task_dataset, tiny_causal_lm

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HF_COMPRESS = os.path.join(os.path.dirname(sys.executable), "hf-compress")
RECIPE = os.path.join(REPO_ROOT, "examples", "recipes", "sft_tiny_student.yaml")
INPUT_IDS = [[5, 17, 42, 8, 99, 3, 250, 11]]

RELOAD = """
import json, sys, torch
from peft import AutoPeftModelForCausalLM
model = AutoPeftModelForCausalLM.from_pretrained(sys.argv[1])
with torch.no_grad():
    logits = model(torch.tensor(json.loads(sys.argv[2]))).logits
print(json.dumps({"base": model.peft_config["default"].base_model_name_or_path, "logits": logits.tolist()}))
"""


def built_variant(folder, variant: str) -> str:
    rows = make_task_dataset("arithmetic", 24, seed=0)
    rows = rows.map(lambda row: {"messages": row["prompt"] + row["completion"], "variant": variant})
    DatasetDict({variant: rows}).save_to_disk(str(folder))
    return str(folder)


def sft_command(tmp_path, base: str, *extra: str) -> list[str]:
    return [
        HF_COMPRESS,
        "sft",
        RECIPE,
        "--model_name_or_path",
        base,
        "--dataset_path",
        built_variant(tmp_path / "built", "compressed"),
        "--variant",
        "compressed",
        "--output_dir",
        str(tmp_path / "student"),
        "--max_steps",
        "2",
        "--use_peft",
        "true",
        "--lora_r",
        "4",
        "--lora_alpha",
        "8",
        *extra,
    ]


@pytest.mark.slow
def test_sft_pushes_a_lora_student_that_peft_loads_back_with_the_same_logits(hub_server, hub_env, tmp_path):
    from peft import PeftModel

    tokenizer = build_tokenizer()
    base = tiny_causal_lm("qwen3", tokenizer, hidden_size=32, num_layers=1)
    base.push_to_hub("user/tiny-base")
    tokenizer.push_to_hub("user/tiny-base")

    result = subprocess.run(
        sft_command(tmp_path, "user/tiny-base", "--push_to_hub", "true", "--hub_model_id", "user/student-compressed"),
        env=hub_env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    local = tmp_path / "student"
    summary = json.loads((local / "compress_sft.json").read_text())
    assert summary["hub_model_id"] == "user/student-compressed" and summary["variant"] == "compressed"

    files = set(HfApi().list_repo_files("user/student-compressed"))
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "compress_sft.json",
        "README.md",
        "tokenizer.json",
    } <= files
    assert len(hub_server.meta("user/student-compressed")["commits"]) == 2  # the repo's creation, then one push
    card = ModelCard.load("user/student-compressed")
    assert card.data.base_model == "user/tiny-base" and card.data.library_name == "peft"
    assert {"compress-distill", "compressed", "lora", "sft", "trl"} <= set(card.data.tags)
    assert "**compressed** variant" in card.text and "AutoPeftModelForCausalLM" in card.text
    assert (local / "README.md").read_text() == (
        hub_server.repo_dir("user/student-compressed") / "README.md"
    ).read_text()

    # Another user, in a fresh process with an empty cache: the adapter and, through its config, the base model.
    reload = subprocess.run(
        [sys.executable, "-c", RELOAD, "user/student-compressed", json.dumps(INPUT_IDS)],
        env=hub_env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert reload.returncode == 0, reload.stderr[-3000:]
    loaded = json.loads(reload.stdout.splitlines()[-1])
    assert loaded["base"] == "user/tiny-base"
    with torch.no_grad():
        ids = torch.tensor(INPUT_IDS)
        base_logits = base.eval()(ids).logits
        expected = PeftModel.from_pretrained(base, str(local)).eval()(ids).logits  # the local student
    torch.testing.assert_close(torch.tensor(loaded["logits"]), expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(expected, base_logits, atol=1e-4)  # the adapter was trained: it changes the logits


@pytest.mark.slow
def test_sft_with_a_wrong_token_stops_before_loading_the_model(hub_server, hub_env, tmp_path):
    # "user/no-such-model" is on no Hub: loading it would fail, so the check must come first
    result = subprocess.run(
        sft_command(tmp_path, "user/no-such-model", "--push_to_hub", "true", "--hub_model_id", "user/never-pushed"),
        env={**hub_env, "HF_TOKEN": "hf_wrong"},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "user/never-pushed" in lines[0] and hub_server.endpoint in lines[0], lines
    assert "refused the token" in lines[0] and "HF_TOKEN" in lines[0]
    assert not (tmp_path / "student" / "compress_sft.json").exists()


def test_train_student_checks_the_repo_before_loading_the_model(hub_server, hub_env, tmp_path, monkeypatch):
    from trl import ModelConfig, SFTConfig

    from hf_compress.hub import HubAccessError
    from hf_compress.sft import train_student

    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    args = SFTConfig(
        output_dir=str(tmp_path / "student"), push_to_hub=True, use_cpu=True, bf16=False, report_to="none"
    )  # no hub_model_id: the output folder's name
    rows = DatasetDict.load_from_disk(built_variant(tmp_path / "built", "raw"))["raw"]
    with pytest.raises(HubAccessError) as refused:  # "user/no-such-model" would fail to load: the check came first
        train_student(args, ModelConfig(model_name_or_path="user/no-such-model"), rows, variant="raw")
    message = str(refused.value)
    assert "model repo student on " + hub_server.endpoint in message and "refused the token" in message
    assert "\n" not in message and not (tmp_path / "student").exists()
