"""`hf_compress.report`: the comparison table across variants, ratios to raw, and the plot."""

import json

import pytest

from hf_compress.evaluation import EVAL_FILE
from hf_compress.report import PLOT_FILE, REPORT_FILE, comparison_table, load_runs, write_report
from hf_compress.sft import SUMMARY_FILE

RUNS = {
    "raw": {
        "accuracy": 0.5,
        "train_tokens": 1000,
        "loss_tokens": 600,
        "train_seconds": 10.0,
        "output_tokens_mean": 40.0,
    },
    "compressed": {
        "accuracy": 0.6,
        "train_tokens": 700,
        "loss_tokens": 300,
        "train_seconds": 7.0,
        "output_tokens_mean": 20.0,
    },
}


def write_run(folder, variant, numbers):
    folder.mkdir()
    train = {"variant": variant, **{k: numbers[k] for k in ("train_tokens", "loss_tokens", "train_seconds")}}
    evaluation = {
        "n": 100,
        "accuracy": numbers["accuracy"],
        "accuracy_stderr": (numbers["accuracy"] * (1 - numbers["accuracy"]) / 100) ** 0.5,
        "output_tokens_mean": numbers["output_tokens_mean"],
        "output_tokens_p90": 2 * numbers["output_tokens_mean"],
        "hit_cap_rate": 0.0,
    }
    (folder / SUMMARY_FILE).write_text(json.dumps(train))
    (folder / EVAL_FILE).write_text(json.dumps(evaluation))
    return str(folder)


def test_ratios_to_raw_table_and_plot(tmp_path):
    paths = [write_run(tmp_path / v, v, numbers) for v, numbers in RUNS.items()]
    table, markdown = write_report(load_runs(paths), str(tmp_path / "report"))
    compressed = table.filter(lambda row: row["variant"] == "compressed")[0]
    assert compressed["accuracy_ratio"] == pytest.approx(1.2)
    assert compressed["train_tokens_ratio"] == pytest.approx(0.7)
    assert compressed["output_tokens_mean_ratio"] == pytest.approx(0.5)
    assert table.filter(lambda row: row["variant"] == "raw")[0]["train_seconds_ratio"] == 1.0
    assert "| compressed | 0.600 ± 0.049 (1.20) | 700 (0.70) |" in markdown
    assert (tmp_path / "report" / PLOT_FILE).read_bytes()[:4] == b"\x89PNG"
    assert markdown in (tmp_path / "report" / REPORT_FILE).read_text()
    assert "accuracy (x raw)" in markdown
    _, markdown = write_report(load_runs(paths), str(tmp_path / "report_c"), baseline="compressed")
    assert "accuracy (x compressed)" in markdown and "| raw | 0.500 ± 0.050 (0.83) |" in markdown


def test_missing_raw_or_missing_eval_is_a_clear_error(tmp_path):
    path = write_run(tmp_path / "compressed", "compressed", RUNS["compressed"])
    with pytest.raises(ValueError, match="relative to the 'raw' student, which is missing"):
        comparison_table(load_runs([path]))
    (tmp_path / "compressed" / EVAL_FILE).write_text(json.dumps({"accuracy": 0.6, "n": 100}))  # an older eval.json
    with pytest.raises(ValueError, match=r"eval.json lacks \['accuracy_stderr', .*rerun"):
        load_runs([path])
    (tmp_path / "compressed" / EVAL_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="hf-compress eval"):
        load_runs([path])
