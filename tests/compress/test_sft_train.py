"""End-to-end `hf_compress.sft` runs on a tiny student: full fine-tuning and LoRA, from a YAML recipe."""

import json
import os

import pytest
import yaml
from datasets import Dataset, DatasetDict
from transformers import AutoModelForCausalLM

from hf_compress.sft import SUMMARY_FILE, load_variant, parse_recipe, run_sft, train_student
from kit.tiny import build_tokenizer, make_task_dataset, tiny_causal_lm

RECIPE = {
    "per_device_train_batch_size": 8,
    "learning_rate": 3e-3,
    "max_length": 128,
    "packing": True,
    "packing_strategy": "bfd_split",
    "num_train_epochs": 1,
    "activation_checkpointing": False,
    "report_to": "none",
    "save_strategy": "no",
    "use_cpu": True,
    "seed": 0,
}


def messages_dataset(n: int) -> Dataset:
    data = make_task_dataset("arithmetic", n, seed=0)
    return data.map(lambda row: {"messages": row["prompt"] + row["completion"]}, remove_columns=data.column_names)


@pytest.mark.parametrize("use_peft", [False, True])
def test_train_student_writes_model_and_summary(tmp_path, use_peft):
    tokenizer = build_tokenizer()
    model = tiny_causal_lm("qwen3", tokenizer, hidden_size=64, num_layers=2)
    peft_fields = {"use_peft": True, "lora_target_modules": "all-linear", "lora_r": 4} if use_peft else {}
    _, training_args, model_args = parse_recipe({**RECIPE, "output_dir": str(tmp_path), **peft_fields})
    summary = train_student(
        training_args, model_args, messages_dataset(64), variant="raw", model=model, tokenizer=tokenizer
    )

    with open(tmp_path / SUMMARY_FILE) as f:
        assert json.load(f) == summary
    assert summary["n_examples"] == 64 and 0 < summary["loss_tokens"] < summary["train_tokens"]
    assert summary["packing_strategy"] == "bfd_split" and summary["peft"] is use_peft
    assert summary["eos_token"] == "<|im_end|>" and summary["train_seconds"] > 0
    assert os.path.exists(tmp_path / ("adapter_config.json" if use_peft else "model.safetensors"))
    assert os.path.exists(tmp_path / "tokenizer.json")


def test_run_sft_from_a_yaml_recipe_and_a_built_folder(tmp_path):
    tokenizer = build_tokenizer()
    student = tmp_path / "student"
    tiny_causal_lm("qwen3", tokenizer, hidden_size=32, num_layers=1).save_pretrained(student)
    tokenizer.save_pretrained(student)
    built = tmp_path / "built"
    DatasetDict({"raw": messages_dataset(16), "compressed": messages_dataset(16)}).save_to_disk(built)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "model_name_or_path": str(student), "dataset_path": str(built)}))

    script_args, training_args, model_args = parse_recipe(
        str(recipe), variant="compressed", output_dir=str(tmp_path / "out")
    )
    summary = run_sft(script_args, training_args, model_args)
    assert summary["variant"] == "compressed" and summary["attn_implementation"] == "sdpa"
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out").config.num_hidden_layers == 1

    with pytest.raises(ValueError, match=r"Variant 'truncated' is missing .*\['compressed', 'raw'\]"):
        load_variant(str(built), "truncated")
