"""`hf-compress sft`, `eval` and `report` chained from the command line on a tiny student."""

import json
from pathlib import Path

import pytest
import yaml
from datasets import DatasetDict

from hf_compress.cli import main
from kit.tiny import build_tokenizer, make_task_dataset, tiny_causal_lm

TINY_RECIPE = str(Path(__file__).parents[2] / "examples" / "recipes" / "sft_tiny_student.yaml")


def messages(n: int, seed: int = 0):
    data = make_task_dataset("arithmetic", n, seed=seed)
    return data.map(lambda row: {"messages": row["prompt"] + row["completion"], "variant": "raw"})


def test_sft_eval_report_from_the_command_line(tmp_path, capsys):
    tokenizer = build_tokenizer()
    student = tmp_path / "student"
    tiny_causal_lm("qwen3", tokenizer, hidden_size=32, num_layers=1).save_pretrained(student)
    tokenizer.save_pretrained(student)
    DatasetDict({"raw": messages(32)}).save_to_disk(tmp_path / "built")
    make_task_dataset("arithmetic", 6, seed=0, split="test").save_to_disk(tmp_path / "test")
    out = tmp_path / "students" / "raw"

    main(
        [
            "sft",
            TINY_RECIPE,
            "--model_name_or_path",
            str(student),
            "--dataset_path",
            str(tmp_path / "built"),
            "--variant",
            "raw",
            "--output_dir",
            str(out),
            "--num_train_epochs",
            "1",
        ]
    )
    main(["eval", "--model", str(out), "--input", str(tmp_path / "test"), "--split", "train", "--max_new_tokens", "8"])
    main(["report", str(out), "--output", str(tmp_path / "report")])

    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["n"] == 6 and evaluation["max_new_tokens"] == 8 and evaluation["task"] == "math"
    comparison = json.loads((tmp_path / "report" / "comparison.json").read_text())
    assert comparison[0]["variant"] == "raw" and comparison[0]["train_tokens_ratio"] == 1.0
    assert "| raw |" in capsys.readouterr().out


def test_recipe_with_an_unknown_field_fails_before_training(tmp_path, capsys):
    recipe = yaml.safe_load(open(TINY_RECIPE))
    recipe["learning_rte"] = 1e-3
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(SystemExit) as exit_info:
        main(["sft", str(path), "--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "'learning_rte' (did you mean 'learning_rate'?)" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"'learning_rte' \(did you mean 'learning_rate'\?\)"):
        main(["--debug", "sft", str(path), "--output_dir", str(tmp_path / "out")])


def test_sft_options_are_exact_and_a_typo_gets_a_suggestion(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse would have taken it as --learning_rate
        main(["sft", TINY_RECIPE, "--learning_rat", "1e-3", "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert (
        err == "hf-compress sft: error: unrecognized arguments: --learning_rat 1e-3 (did you mean --learning_rate?)\n"
    )
    assert not (tmp_path / "out").exists()


def test_sft_help_lists_the_recipe_values_and_help_all_every_field(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sft", TINY_RECIPE, "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and out.startswith("usage: hf-compress sft RECIPE")
    assert "--lora_r" in out and "--learning_rate 0.003" in out and "--gradient_accumulation_steps" not in out
    with pytest.raises(SystemExit) as exit_info:
        main(["sft", TINY_RECIPE, "--help_all"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and out.startswith("usage: hf-compress sft RECIPE")
    assert "--gradient_accumulation_steps" in out and "--dataset_path" in out
