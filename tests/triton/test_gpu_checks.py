"""`benchmarks/gpu_checks.sh --cpu`: the device call's every step, on this CPU (interpreter, tiny shapes), so that the
one GPU run a session may get cannot die on a typo, a flag or a missing package."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="the Triton backend needs the `triton` package (pip install '.[triton]')")

ROOT = Path(__file__).resolve().parents[2]
FILES = ("gpu.txt", "triton_aot.md", "dla_gpu.md", "triton_tests.txt", "flow_length.md", "flow_overhead.md")


@pytest.mark.slow
@pytest.mark.timeout(3600)  # minutes on a loaded 2-core machine (RESULTS.md)
def test_gpu_checks_cpu_mode_runs_every_step(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    env.pop("TRITON_INTERPRET")  # each step sets its own, as on the device
    result = subprocess.run(
        ["bash", "benchmarks/gpu_checks.sh", "--cpu"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert result.stdout.count("=== exit 0 after") == len(FILES)
    out = {name: (tmp_path / name).read_text() for name in FILES}
    assert "triton" in out["gpu.txt"] and "fla" in out["gpu.txt"]
    assert "0 over the limit" in out["triton_aot.md"] and "sm_90:" in out["triton_aot.md"]
    assert " passed" in out["triton_tests.txt"] and "failed" not in out["triton_tests.txt"]
    dla = out["dla_gpu.md"]
    assert "| allclose 1e-3 |" in dla and "| False |" not in dla.split("hf_dla Triton ops")[0]
    assert dla.count("| 32 |") >= 6 + 1  # six op rows and the plan row, all at T = 32
    assert "| what | T | rounds | seconds |" in out["flow_length.md"]  # its table (it keeps no row this short)
    assert "| cpu-tiny |" in out["flow_overhead.md"]
