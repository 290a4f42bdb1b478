"""FlowTracer at reasoning length: the O(T * d) flow path against the dense one and against one SDPA forward.

    OMP_NUM_THREADS=1 python -m benchmarks.flow_length                       # CPU: T = 4K .. 32K
    python -m benchmarks.flow_length --lengths 4096 8192 --dense_max 8192    # quick
    python -m benchmarks.flow_length --device cuda                           # GPU preset (bf16, dense up to 32K)

One sequence through a one-layer Qwen3 with the attention shape of Qwen3-4B's layers (32 query heads, 8 key/value
heads, head_dim 128; hidden 512 and a 512-token vocabulary keep the rest small). Rows, all for layer 0:

- `sdpa forward`: one no-grad forward with SDPA (logits of the last position only), the baseline of the ratios;
- `flow dense`: `capture_attention` (the `[1, T, T]` fp32 attention) + `flow_throughput`;
- `flow q/k`: `capture_queries_keys` + `flow_throughput_blockwise` on the recomputed rows, the path FlowScorer
  takes from `recompute_min_length` tokens on. Prompt = first eighth of the sequence, answer = last 16 tokens.

"peak MiB" is the rise of peak memory above what is held before the call (model and inputs): on the CPU the
process's peak resident set (Linux VmHWM, reset before each run; glibc serves every allocation above 64 KiB by
mmap so freed memory leaves the resident set), on CUDA `torch.cuda.max_memory_allocated`. "extra vs forward" is a
path's peak minus the SDPA forward's: the memory the flow needs beyond the forward itself. The three cases run
interleaved, `--repeats` rounds of sdpa forward, flow dense, flow q/k (`--long_repeats` above 8K tokens), so every
ratio compares runs of the same moment: "seconds" is the median over the rounds, "time / sdpa forward" the median of
each round's ratio, "peak MiB" the largest. Records go to `--output` (JSON lines, one per case and round) as they are
measured; a rerun skips the rounds already there, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from functools import partial

import torch
from transformers import AutoModelForCausalLM, Qwen3Config

from benchmarks.flow_scoring import _return_freed_memory_to_the_os, flow_masks
from benchmarks.flow_scoring import measure as measure_cpu
from hf_flowcredit.attention import capture_attention, capture_queries_keys
from hf_flowcredit.flow import flow_throughput, flow_throughput_blockwise


def qwen3_4b_attention_model(max_length: int, device: str, dtype: torch.dtype):
    config = Qwen3Config(
        hidden_size=512, num_hidden_layers=1, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        intermediate_size=512, vocab_size=512, max_position_embeddings=max_length, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    return model.to(device=device, dtype=dtype).eval()


def measure_cuda(run, repeats: int) -> tuple[float, float]:
    """(best seconds, peak MiB above what was allocated before) of `run()` on the current CUDA device."""
    best, peak = float("inf"), 0.0
    for _ in range(repeats):
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
        start = time.perf_counter()
        result = run()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
        peak = max(peak, (torch.cuda.max_memory_allocated() - baseline) / 2**20)
        del result
    return best, peak


def sdpa_forward(model, input_ids):
    with torch.no_grad():
        return model(input_ids=input_ids, use_cache=False, logits_to_keep=1).logits


def flow_dense(model, input_ids, sources, sinks):
    return flow_throughput(capture_attention(model, input_ids, layers=[0]), sources, sinks)


def flow_query_key(model, input_ids, sources, sinks):
    return flow_throughput_blockwise(capture_queries_keys(model, input_ids, layers=[0]), sources, sinks)


CASES = {"sdpa forward": sdpa_forward, "flow dense": flow_dense, "flow q/k": flow_query_key}


def benchmark(args) -> list[dict]:
    done = []
    if os.path.exists(args.output):
        with open(args.output) as f:
            done = [json.loads(line) for line in f if line.strip()]
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    model = qwen3_4b_attention_model(max(args.lengths), args.device, dtype)
    measure = measure_cuda if args.device == "cuda" else measure_cpu
    for length in [256, *args.lengths]:  # the first, short pass warms every code path up and is not recorded
        input_ids = torch.randint(5, 512, (1, length), generator=torch.Generator().manual_seed(0)).to(args.device)
        sources, sinks = (mask.to(args.device) for mask in flow_masks(length))
        rounds = 1 if length == 256 else args.repeats if length <= 8192 else args.long_repeats
        for round_ in range(rounds):
            for name, case in CASES.items():
                if name == "flow dense" and length > args.dense_max:
                    continue
                if any(r["what"] == name and r["T"] == length and r.get("round", 0) == round_ for r in done):
                    continue
                run = (
                    partial(case, model, input_ids)
                    if name == "sdpa forward"
                    else partial(case, model, input_ids, sources, sinks)
                )
                seconds, mib = measure(run, 1)
                if length == 256:
                    continue
                record = {"what": name, "T": length, "round": round_, "seconds": seconds, "peak_mib": mib}
                print(record, file=sys.stderr, flush=True)
                done.append(record)
                with open(args.output, "a") as f:
                    f.write(json.dumps(record) + "\n")
    return done


def table(records: list[dict]) -> str:
    """Per (case, T): median seconds, largest peak, and the median over rounds of the ratio to that round's forward."""
    runs = {}
    for r in records:
        runs.setdefault((r["what"], r["T"]), {})[r.get("round", 0)] = r
    lines = [
        "| what | T | rounds | seconds | peak MiB | extra vs forward MiB | time / sdpa forward |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    order = list(CASES)
    for what, length in sorted(runs, key=lambda key: (key[1], order.index(key[0]))):
        rounds, forward = runs[what, length], runs.get(("sdpa forward", length), {})
        seconds = statistics.median(r["seconds"] for r in rounds.values())
        peak = max(r["peak_mib"] for r in rounds.values())
        ratios = [r["seconds"] / forward[k]["seconds"] for k, r in rounds.items() if k in forward]
        ratio = f"{statistics.median(ratios):.2f}" if ratios else "-"
        extra = "-"
        if forward and what != "sdpa forward":
            extra = f"{peak - max(r['peak_mib'] for r in forward.values()):.0f}"
        lines.append(f"| {what} | {length} | {len(rounds)} | {seconds:.2f} | {peak:.0f} | {extra} | {ratio} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    parser.add_argument(
        "--dense_max", type=int, default=None, help="Longest T for the dense path (CPU 16K, CUDA 32K)."
    )
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="CPU float32, CUDA bfloat16.")
    parser.add_argument("--repeats", type=int, default=3, help="Interleaved rounds up to T = 8192.")
    parser.add_argument("--long_repeats", type=int, default=1, help="Interleaved rounds above T = 8192.")
    parser.add_argument(
        "--output", default=None, help="JSON lines, resumed (default runs/flow_length/<device>.jsonl)."
    )
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    args.dense_max = args.dense_max or (32768 if cuda else 16384)
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.output = args.output or f"runs/flow_length/{args.device}.jsonl"
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    if not cuda:
        _return_freed_memory_to_the_os()
    device_name = torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device_name}, {args.dtype}")
    print(table(benchmark(args)))


if __name__ == "__main__":
    main()
