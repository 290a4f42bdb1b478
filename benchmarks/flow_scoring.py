"""Time and peak memory of FlowTracer's pieces on the CPU, for sequence lengths 512 .. 16384.

    OMP_NUM_THREADS=2 python -m benchmarks.flow_scoring
    python -m benchmarks.flow_scoring --lengths 512 1024 --capture_max 1024   # quick

Rows:
- `flow dense`: `flow_throughput_dense` (the `T x T` reference), the baseline of the ratios;
- `flow blockwise`: `flow_throughput_blockwise` on the same `[1, T, T]` attention tensor;
- `flow blockwise lazy`: the same, with the attention produced per query-row slab by a callable (softmax of a
  random rank-64 `QK^T`), so the `T x T` matrix never exists; its time includes making the rows (once for `G`, again
  from the first answer token on for `F`);
- `capture_attention`: one capturing forward of a tiny Qwen3 (hidden 128, 4 layers, 4 heads, layers "middle").

"peak extra" is the rise of the process's peak resident memory (Linux VmHWM, reset before each run) above the
resident memory once the inputs exist (glibc is told to mmap every allocation over 64 KiB, so freed memory leaves
the resident set). The attention input itself (4 T^2 bytes in fp32) is not counted; the `[B, T, T]` output of
`capture_attention` is. Times are the best of `--repeats` runs.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import platform
import re
import sys
import time
from functools import partial

import torch

from hf_flowcredit.attention import capture_attention
from hf_flowcredit.flow import flow_throughput_blockwise, flow_throughput_dense


def _return_freed_memory_to_the_os() -> None:
    """Serve every allocation above 64 KiB with its own mmap (glibc), so freed tensors leave the resident set.

    Without it, memory freed by an earlier case stays resident and a later case's peak hides inside it.
    """
    ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # -3 = M_MMAP_THRESHOLD


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1)) / 1024


def measure(run, repeats: int) -> tuple[float, float]:
    """(best seconds, peak extra MiB) of `run()`."""
    best, peak = float("inf"), 0.0
    for _ in range(repeats):
        gc.collect()
        baseline = _status_mib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
        peak = max(peak, _status_mib("VmHWM") - baseline)
        del result
    return best, peak


def synthetic_rows(length: int, rank: int = 64, seed: int = 0):
    """Causal softmax(QK^T / sqrt(rank)) attention rows of a random sequence, made on demand."""
    generator = torch.Generator().manual_seed(seed)
    queries = torch.randn(length, rank, generator=generator)
    keys = torch.randn(length, rank, generator=generator)

    def rows(start: int, end: int) -> torch.Tensor:
        logits = (queries[start:end] @ keys[:end].T) / rank**0.5
        future = torch.arange(end)[None, :] > torch.arange(start, end)[:, None]
        return logits.masked_fill_(future, float("-inf")).softmax(-1)[None]

    return rows


def flow_masks(length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A prompt of the first eighth of the sequence, an answer of its last 16 tokens."""
    sources = torch.zeros(1, length, dtype=torch.bool)
    sinks = torch.zeros(1, length, dtype=torch.bool)
    sources[:, : length // 8] = True
    sinks[:, -16:] = True
    return sources, sinks


def _progress(record: dict) -> dict:
    print(record, file=sys.stderr, flush=True)
    return record


def benchmark(lengths, dense_max: int, capture_max: int, repeats: int) -> list[dict]:
    records = []
    model = None
    for length in [64, *lengths]:  # the first, short pass warms up every code path and is not recorded
        warm_up = length == 64
        sources, sinks = flow_masks(length)
        rows = synthetic_rows(length)
        attn = rows(0, length)  # the same attention, materialised, as the tensor input
        reps = repeats if length <= 4096 else 1
        runs = {
            "flow dense": partial(flow_throughput_dense, attn, sources, sinks) if length <= dense_max else None,
            "flow blockwise": partial(flow_throughput_blockwise, attn, sources, sinks),
            "flow blockwise lazy": partial(flow_throughput_blockwise, rows, sources, sinks),
        }
        for name, run in runs.items():
            if run is not None:
                seconds, mib = measure(run, reps)
                if not warm_up:
                    records.append(_progress({"what": name, "T": length, "seconds": seconds, "peak_mib": mib}))
        del attn, runs  # free the T x T input before the capture runs
        if length <= capture_max:
            if model is None:
                from kit.tiny import build_tokenizer, tiny_causal_lm

                tokenizer = build_tokenizer()
                model = tiny_causal_lm("qwen3", tokenizer, max_position_embeddings=max(lengths))
            input_ids = torch.randint(
                5, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(0)
            )
            seconds, mib = measure(partial(capture_attention, model, input_ids), reps)
            if not warm_up:
                records.append(
                    _progress({"what": "capture_attention", "T": length, "seconds": seconds, "peak_mib": mib})
                )
    return records


def table(records: list[dict]) -> str:
    dense = {r["T"]: r for r in records if r["what"] == "flow dense"}
    lines = [
        "| what | T | seconds | peak extra MiB | time / dense | memory / dense | ns per T^2 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(records, key=lambda r: (r["what"], r["T"])):
        base = dense.get(r["T"]) if r["what"].startswith("flow") else None
        time_ratio = f"{r['seconds'] / base['seconds']:.2f}" if base else "-"
        memory_ratio = f"{r['peak_mib'] / base['peak_mib']:.2f}" if base and base["peak_mib"] > 0 else "-"
        per_t2 = r["seconds"] / r["T"] ** 2 * 1e9  # nanoseconds per attention entry: flat when the cost is O(T^2)
        lines.append(
            f"| {r['what']} | {r['T']} | {r['seconds']:.3f} | {r['peak_mib']:.0f} | {time_ratio} | {memory_ratio} | "
            f"{per_t2:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--dense_max", type=int, default=8192, help="Longest T for the dense reference.")
    parser.add_argument("--capture_max", type=int, default=8192, help="Longest T for capture_attention.")
    parser.add_argument("--repeats", type=int, default=3, help="Runs per case for T <= 4096 (1 above).")
    args = parser.parse_args(argv)
    _return_freed_memory_to_the_os()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    print(table(benchmark(args.lengths, args.dense_max, args.capture_max, args.repeats)))


if __name__ == "__main__":
    main()
