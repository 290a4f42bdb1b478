"""FlowGRPOTrainer under `accelerate launch` with 2 CPU processes (gloo): it trains, the replicas stay identical,
the flow metrics are gathered over both processes (every rank logs the same values), and a rank with nothing to
score runs as many (filler) scoring forwards as the other; the scoring step on an FSDP2-sharded model with uneven
forward counts neither hangs nor changes the scores."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).parent


def _launch_two_processes(script: str, output_dir: Path) -> list[dict]:
    """`accelerate launch` 2 CPU processes (gloo) on `script`; the reports they wrote, rank 0 first."""
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [
        str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        str(HERE / script), str(output_dir),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-4000:]
    return [json.loads((output_dir / f"rank{rank}.json").read_text()) for rank in (0, 1)]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_process_cpu_run(tmp_path):
    reports = _launch_two_processes("grpo_two_process_run.py", tmp_path)
    for report in reports:
        assert report["num_processes"] == 2 and report["backend"] == "gloo"
        assert len(report["flow_logs"]) == 2
        for entry in report["flow_logs"]:  # rank 0's rows only: 40% of half of the tokens
            assert 0.15 <= entry["flow/selected_frac"] <= 0.25 and entry["flow/too_long_frac"] == 0.5
    forwards = [report["scoring_forwards"] for report in reports]
    assert forwards[0]["real"] >= 2 and forwards[0]["filler"] == 0  # at least one forward in each of the 2 steps
    assert forwards[1] == {"real": 0, "filler": forwards[0]["real"]}
    assert reports[0]["checksum"] == reports[1]["checksum"]
    assert reports[0]["flow_logs"] == reports[1]["flow_logs"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_scoring_step_on_an_fsdp2_model_with_uneven_forward_counts(tmp_path):
    reports = _launch_two_processes("grpo_fsdp2_scoring_run.py", tmp_path)
    for report in reports:
        assert report["num_processes"] == 2 and report["sharded"].startswith("FSDP")
        assert report["trains"]  # the sharded model still trains after the scoring forwards
    real = [[step["real"] for step in report["steps"]] for report in reports]
    assert real == [[3, 1], [1, 0]]  # uneven on purpose: rank 1 has nothing to score in step 2
    for step in range(2):  # every rank ran as many forwards as the busiest one
        assert [report["steps"][step]["forwards"] for report in reports] == [max(r[step] for r in real)] * 2
    for report in reports:  # sharding changes nothing in the scores
        for step in report["steps"]:
            if step["real"]:
                assert step["scored"] and step["max_error"] <= 1e-6
