"""FlowGRPOTrainer under `accelerate launch` with 2 CPU processes (gloo): it trains, the replicas stay identical,
and the flow metrics are gathered over both processes (every rank logs the same values)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("grpo_two_process_run.py")


@pytest.mark.timeout(300)
def test_two_process_cpu_run(tmp_path):
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [
        str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        str(SCRIPT), str(tmp_path),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-4000:]
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for report in reports:
        assert report["num_processes"] == 2 and report["backend"] == "gloo"
        assert len(report["flow_logs"]) == 2
        for entry in report["flow_logs"]:
            assert 0.3 <= entry["flow/selected_frac"] <= 0.5
    assert reports[0]["checksum"] == reports[1]["checksum"]
    assert reports[0]["flow_logs"] == reports[1]["flow_logs"]
