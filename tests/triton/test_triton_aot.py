"""Every kernel specialisation the Triton ops launch at the paper's Mamba-2 layer (K = 128, V = 64, chunk 64; dla and
Log-Linear slot counts) and at the smallest heads and chunk (16, 16, 16) compiles for the A100 (sm_80) and the
H100/H200 (sm_90) on this CPU machine and fits the card's shared memory per block: `python -m benchmarks.triton_aot
--shapes suite`, run as users run it (`--shapes all` adds K = V = 128 at every chunk size).

It needs the kernels compiled, not interpreted, so it runs as a subprocess with TRITON_INTERPRET=0. Triton caches
what it compiled (~/.triton/cache, or TRITON_CACHE_DIR): the first run on a machine compiles everything (tens of
minutes on a loaded 2-core machine, see RESULTS.md), later runs with unchanged kernels read the cache.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="the Triton backend needs the `triton` package (pip install '.[triton]')")

ROOT = Path(__file__).resolve().parents[2]
KERNELS = {
    "chunk_prep_fwd_kernel", "chunk_prep_bwd_kernel", "intra_attention_fwd_kernel", "intra_attention_bwd_kernel",
    "slot_recurrence_fwd_kernel", "slot_recurrence_bwd_kernel", "dla_plan_kernel",
}  # fmt: skip
LIMITS = {80: 163 * 1024, 90: 227 * 1024}
# Known to need more shared memory per block than the card has (RESULTS.md, issue 29): the Gated DeltaNet slot-recurrence
# backward with several slots at K = 128, chunk 64 on both cards (its (K, K) carry and carry gradient), and on sm_90 the
# Gated DeltaNet chunk-prep backward at K = 128, chunk 64 (352 KiB; 128 KiB on sm_80). They cannot launch there; an
# entry goes when its kernel is split. The test checks they are still over, so a fix shows.
SLOT_BWD = ("slot_recurrence_bwd_kernel", "K=128 V=64 C=64 BK=128 BV=32 DELTA=True")
KNOWN_OVER_LIMIT = {80: {SLOT_BWD}, 90: {SLOT_BWD, ("chunk_prep_bwd_kernel", "K=128 C=64 BK=128 DELTA=True")}}


@pytest.mark.slow
@pytest.mark.timeout(3600)  # minutes on a loaded 2-core machine (RESULTS.md)
def test_ahead_of_time_compile_for_a100_and_h100_fits_shared_memory(tmp_path):
    rows_file = tmp_path / "rows.jsonl"
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "benchmarks.triton_aot", "--arch", "80", "90", "--shapes", "suite"]
    command += ["--json", str(rows_file)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    print(result.stdout)  # the table, for -s
    # exit 1: the known kernel is over the limit (checked below); a compile failure would show as an error row
    assert result.returncode in (0, 1), result.stdout[-6000:] + result.stderr[-3000:]
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    assert not [r for r in rows if "error" in r]
    for arch, limit in LIMITS.items():
        compiled = [r for r in rows if r["arch"] == arch]
        assert {r["kernel"] for r in compiled} == KERNELS
        over = {(r["kernel"], r["constants"]) for r in compiled if r["shared"] > limit}
        assert over == KNOWN_OVER_LIMIT[arch], f"sm_{arch}: over the shared-memory limit: {over}"
        assert all(r["shared"] > 0 for r in compiled if r["kernel"] != "dla_plan_kernel")
        assert all(r["limit"] == limit and r["registers"] > 0 and r["stack"] is not None for r in compiled)
        paper = {
            (r["kernel"], "DELTA=True" in r["constants"]) for r in compiled if "K=128 V=64 C=64" in r["constants"]
        }
        assert paper == {
            (k, delta) for k in ("slot_recurrence_fwd_kernel", "slot_recurrence_bwd_kernel") for delta in (0, 1)
        }
        for key_dim, chunk_size in ((128, 64), (16, 16)):  # the largest and the smallest tiles, both mixers
            prep = {r["constants"] for r in compiled if r["kernel"] == "chunk_prep_bwd_kernel"}
            assert {f"K={key_dim} C={chunk_size} BK={key_dim} DELTA={delta}" for delta in (False, True)} <= prep
    for arch, known in KNOWN_OVER_LIMIT.items():
        assert f"sm_{arch}: " in result.stdout and f"{len(known)} over the limit" in result.stdout
