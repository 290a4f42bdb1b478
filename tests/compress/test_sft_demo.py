"""The miniature's glue (`examples.repro.demo_compress`) on a few problems, with a tiny untrained stand-in teacher."""

import json

import pytest

from examples.repro.demo_compress import DemoSettings, build_variants, train_and_evaluate, write_demo_report
from hf_compress.report import load_runs, markdown_table, write_report
from kit.tiny import build_tokenizer, make_task_dataset, tiny_causal_lm


@pytest.mark.slow
def test_demo_pipeline_students_and_report(tmp_path):
    teacher_dir = str(tmp_path / "teacher")
    tokenizer = build_tokenizer()
    tiny_causal_lm("qwen3", tokenizer, hidden_size=32, num_layers=1).save_pretrained(teacher_dir)
    tokenizer.save_pretrained(teacher_dir)
    settings = DemoSettings(n_train=48, n_test=8, max_new_tokens=8, scratch_hidden_size=32, scratch_num_layers=1)

    built, stage_stats = build_variants(settings, teacher_dir, str(tmp_path / "data"))
    assert set(built) == {"raw", "compressed", "answer_only", "truncated"} and len(built["raw"]) == 48
    assert built["raw"][0]["messages"][1]["content"].startswith("Let me think step by step: Compute")
    assert stage_stats["compress"]["answer_kept_fraction"] == 1.0

    test = make_task_dataset("arithmetic", settings.n_test, split="test")
    folders = []
    for init, variant in (("scratch", "raw"), ("teacher", "compressed")):
        folder = str(tmp_path / init / variant)
        train_and_evaluate(init, variant, built, test, settings, teacher_dir, folder)
        folders.append(folder)
    rows = load_runs(folders)
    assert [json.load(open(f"{f}/eval.json"))["n"] for f in folders] == [8, 8]
    table, _ = write_report(rows, str(tmp_path / "report"))
    report = write_demo_report(
        str(tmp_path), settings, stage_stats, rows[0], {"scratch": markdown_table(table)}, seconds=1.0
    )
    assert "| compressed |" in report and "scripted" in report
