"""examples/repro/dla_mqar.py over several seeds: per-model results saved when finished, skipped on a rerun, refused
when the folder holds other settings, and the mean +- std table assembled from the finished run folders."""

import json

import pytest
from transformers import TrainingArguments

from examples.repro import dla_mqar
from examples.repro.dla_mqar import RetrievalTaskArguments, TinyDLAArguments, run_seeds, seed_table, summarize_runs

TINY_MODEL = TinyDLAArguments(
    hidden_size=16, num_hidden_layers=1, num_heads=2, state_size=8, intermediate_size=32, max_states=6, chunk_size=8
)
TINY_TASK = dict(
    mixers=["mamba2"], memories=["vanilla", "dla"], vocab_size=16, train_seq_len=16, train_num_kv_pairs=[2],
    num_train_examples=16, eval_seq_lens=[16], eval_num_kv_pairs=[2], num_eval_examples=4, num_memory_examples=2,
)  # fmt: skip


def training_args(output_dir, **overrides):
    settings = dict(max_steps=1, per_device_train_batch_size=8, report_to="none", save_strategy="no")
    return TrainingArguments(output_dir=str(output_dir), disable_tqdm=True, use_cpu=True, **{**settings, **overrides})


def test_seeds_are_saved_per_model_resumed_and_summarized(tmp_path, monkeypatch):
    task = RetrievalTaskArguments(seeds=[0, 1], **TINY_TASK)
    rows = run_seeds(task, TINY_MODEL, training_args(tmp_path))
    assert sorted({(r["seed"], r["memory"]) for r in rows}) == [(0, "dla"), (0, "vanilla"), (1, "dla"), (1, "vanilla")]
    saved = json.loads((tmp_path / "seed1" / "mamba2-dla" / "results.json").read_text())
    assert saved["seed"] == 1 and saved["rows"][0]["setting"] == "T16_N2"

    # a rerun trains nothing: every model is finished
    monkeypatch.setattr(dla_mqar, "train_model", lambda *args: pytest.fail("a finished model was retrained"))
    assert run_seeds(task, TINY_MODEL, training_args(tmp_path)) == rows
    with pytest.raises(ValueError, match="other settings than this command's; pass another --output_dir"):
        run_seeds(task, TINY_MODEL, training_args(tmp_path, learning_rate=1e-2))

    (tmp_path / "seed1" / "mamba2-vanilla" / "results.json").unlink()  # an unfinished run
    table, missing = summarize_runs(str(tmp_path))
    assert missing == ["seed1/mamba2-vanilla"]
    lines = table.splitlines()
    assert lines[0].startswith("| mixer | memory | seeds | T16_N2 |")
    assert lines[2].startswith("| mamba2 | vanilla | 0 | ") and lines[3].startswith("| mamba2 | dla | 0,1 | ")


def test_seed_table_reports_mean_and_sample_std():
    def row(seed, accuracy):
        return dict(mixer="gated_deltanet", memory="dla", setting="T32_N2", seed=seed, accuracy=accuracy,
                    live_states_per_layer=[4.0, 2.0], num_parameters=1234, train_seconds=10.0 * (seed + 1))  # fmt: skip

    table = seed_table([row(0, 0.5), row(1, 0.7), row(2, 0.9)])
    assert "| gated_deltanet | dla | 0,1,2 | 0.700 ± 0.200 | 1,234 | 4.0/2.0 | 20 ± 10 |" in table


def test_summarize_refuses_mixed_settings_and_empty_folders(tmp_path):
    with pytest.raises(ValueError, match="No finished model runs"):
        summarize_runs(str(tmp_path))
    for name, steps in (("a", 1), ("b", 2)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(
            json.dumps({"settings": {"training": {"max_steps": steps}}, "seed": 0, "rows": []})
        )
    with pytest.raises(ValueError, match="different settings"):
        summarize_runs(str(tmp_path))
