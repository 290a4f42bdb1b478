"""examples/repro/demo_flow.py end to end at toy size (slow: a dozen GRPO steps and evaluations)."""

import json
import os
from dataclasses import asdict

import pytest

from examples.repro.demo_flow import main
from kit.teacher import TinySFTSettings
from kit.tiny import build_tokenizer, tiny_causal_lm


@pytest.mark.slow
def test_demo_writes_report_tables_and_plot(tmp_path, capsys):
    # A finished "SFT run" that train_tiny_sft will reuse: a random tiny model with the default settings recorded.
    model_dir = tmp_path / "sft" / "model"
    tokenizer = build_tokenizer()
    tiny_causal_lm("qwen3", tokenizer, hidden_size=32, num_layers=3, num_heads=2, num_kv_heads=1).save_pretrained(
        model_dir
    )
    tokenizer.save_pretrained(model_dir)
    (model_dir / "tiny_sft_settings.json").write_text(json.dumps(asdict(TinySFTSettings())))
    output_dir = tmp_path / "flow"
    main([
        "--output_dir", str(output_dir), "--sft_dir", str(tmp_path / "sft"), "--methods", "grpo", "flow",
        "--seeds", "0", "1", "--max_steps", "2", "--steps_per_generation", "1", "--max_completion_length", "12",
        "--n_train", "16", "--n_test", "8", "--intervention_samples", "4",
    ])  # fmt: skip
    report = (output_dir / "report.md").read_text()
    for heading in ("Held-out accuracy", "Intervention analysis", "Step-time overhead", "| flow |", "| grpo |"):
        assert heading in report
    assert "Skipped: No greedy trace had an answer" in report  # a random model never answers: said, not hidden
    assert os.path.getsize(output_dir / "learning_curves.png") > 0
    results = json.loads((output_dir / "results.json").read_text())
    assert len(results["runs"]) == 4 and results["step_time_ratio_to_grpo"]["grpo"] == 1.0
    assert "Held-out accuracy" in capsys.readouterr().out
