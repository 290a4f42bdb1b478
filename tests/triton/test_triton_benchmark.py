"""`benchmarks/dla_gpu.py` runs end to end on a tiny shape (in the Triton interpreter by default), so it cannot rot."""

import pytest

pytest.importorskip("triton", reason="the Triton backend needs the `triton` package (pip install '.[triton]')")

from benchmarks import dla_gpu  # noqa: E402


def test_gpu_benchmark_tiny_run_prints_every_row(capsys, device):  # device: skips where kernels cannot run
    table = dla_gpu.main(["--tiny"])
    rows = [line.split("|")[1:-1] for line in table.splitlines()[2:]]
    memories = (*dla_gpu.MEMORIES, dla_gpu.ALL_STATES)
    assert {(r[0].strip(), r[1].strip()) for r in rows} == {(m, s) for m in dla_gpu.MIXERS for s in memories}
    for _, memory, seq_len, slots, _, ms, tokens_per_s, ratio, _, first in rows:
        assert first.strip() == "n/a (CPU)"  # no warm-up on the CPU
        assert int(seq_len) == 32 and float(ms) > 0 and float(tokens_per_s.replace(",", "")) > 0
        assert int(slots) == {"vanilla": 1, "loglinear": 6, "dla": 4, dla_gpu.ALL_STATES: 4}[memory.strip()]
        if memory.strip() == "vanilla":
            assert float(ratio) == 1.0
    printed = capsys.readouterr().out
    assert table in printed
    plan_row = printed.split("same slot maps |")[1].splitlines()[2]  # the dla plan table: PyTorch vs Triton scan
    assert plan_row.startswith("| 32 |") and plan_row.endswith("| True |")


@pytest.mark.slow
def test_gpu_benchmark_parity_check_passes(device):
    args = dla_gpu.parse_args(["--tiny"])
    rows = dla_gpu.check_against_naive(device, args)
    assert {(r["mixer"], r["memory"]) for r in rows} == {(m, s) for m in dla_gpu.MIXERS for s in dla_gpu.MEMORIES}
    assert all(r["ok"] for r in rows), dla_gpu.format_check_table(rows, str(device), args)
