"""Forward + backward time and autograd memory of the naive vs the chunked multi-state ops (CPU).

For each mixer (Mamba-2, Gated DeltaNet), memory mode (vanilla, loglinear, dla) and sequence length, the
same inputs and the same slot plan go through `hf_dla.ops.naive` and `hf_dla.ops.chunk`; the table gives the
best wall time of forward + backward over `--repeats` runs (naive and chunk timed the same way), the speed-up
of chunk over naive (the baseline, measured in the same run), and the bytes autograd keeps for the backward pass
(unique saved tensors: the op's training memory; CPU torch has no allocator peak counter). The dla plan (a sequential scan over the keys, no gradient) is
timed on its own.

    python -m benchmarks.dla_ops                       # T = 256 .. 4096
    python -m benchmarks.dla_ops --seq_lens 256 512 --naive_max_len 512 --output runs/dla_ops.md
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hf_dla.memory_plans import build_memory_plan
from hf_dla.ops.chunk import chunk_gated_delta_rule, chunk_mamba2
from hf_dla.ops.naive import naive_gated_delta_rule, naive_mamba2

OPS = {"mamba2": (naive_mamba2, chunk_mamba2), "gated_deltanet": (naive_gated_delta_rule, chunk_gated_delta_rule)}


def make_inputs(args, seq_len, mixer, num_slots, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shape = (args.batch, seq_len, args.heads)
    q = torch.randn(*shape, args.key_dim, generator=generator)
    k = torch.randn(*shape, args.key_dim, generator=generator)
    if mixer == "gated_deltanet":
        q, k = F.normalize(q, dim=-1) * args.key_dim**-0.5, F.normalize(k, dim=-1)
    v = torch.randn(*shape, args.value_dim, generator=generator)
    log_decay = -0.1 * torch.rand(*shape, generator=generator)
    beta = torch.rand(*shape, generator=generator)
    lam = torch.rand(*shape, num_slots, generator=generator) + 0.5
    return [q, k, v, log_decay, beta, lam]


def plan_slots(args, memory, keys):
    plan = build_memory_plan(memory, args.max_states, args.merge_threshold)
    valid = torch.ones(keys.shape[:2], dtype=torch.bool)
    state = plan.init_state(keys.shape[0], keys.shape[2] * keys.shape[3], keys.device)
    start = time.perf_counter()
    slot_map = plan(keys, valid, state).slot_map
    return slot_map, plan.num_slots, time.perf_counter() - start


def forward_backward(op, inputs, slot_map, **kwargs):
    """Seconds for one forward + backward, and the unique bytes autograd saved for backward."""
    leaves = [x.clone().requires_grad_() for x in inputs]
    q, k, v, log_decay, beta, lam = leaves
    saved = {}

    def pack(tensor):
        saved[(tensor.untyped_storage().data_ptr(), tensor.dtype)] = tensor.untyped_storage().nbytes()
        return tensor

    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out, state = op(q, k, v, log_decay, beta, slot_map, lam if slot_map is not None else None, **kwargs)
    (out.sum() + state.sum()).backward()
    return time.perf_counter() - start, sum(saved.values())


def best_of(repeats, op, inputs, slot_map, **kwargs):
    runs = [forward_backward(op, inputs, slot_map, **kwargs) for _ in range(repeats)]
    return min(r[0] for r in runs), runs[0][1]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq_lens", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--naive_max_len", type=int, default=4096, help="skip naive above this length")
    parser.add_argument("--mixers", nargs="+", default=list(OPS))
    parser.add_argument("--memories", nargs="+", default=["vanilla", "loglinear", "dla"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--key_dim", type=int, default=32)
    parser.add_argument("--value_dim", type=int, default=32)
    parser.add_argument("--max_states", type=int, default=None, help="default: ceil(log2 max T) + 1 for both modes")
    parser.add_argument("--merge_threshold", type=float, default=0.5)
    parser.add_argument("--chunk_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="best of N runs, for naive and chunk alike")
    parser.add_argument("--output", type=str, default=None, help="also write the table as markdown here")
    args = parser.parse_args()
    args.max_states = args.max_states or math.ceil(math.log2(max(args.seq_lens))) + 1
    torch.manual_seed(0)

    header = "| mixer | memory | T | naive fwd+bwd (s) | chunk fwd+bwd (s) | speed-up | naive saved (MiB) | chunk saved (MiB) | dla plan (s) |"
    rows = [header, "|" + "---|" * 9]
    print(
        f"B={args.batch} H={args.heads} K={args.key_dim} V={args.value_dim} max_states={args.max_states} "
        f"chunk={args.chunk_size} repeats={args.repeats} threads={torch.get_num_threads()}"
    )
    print(header)
    for mixer in args.mixers:
        naive, chunk = OPS[mixer]
        for memory in args.memories:
            for seq_len in args.seq_lens:
                inputs = make_inputs(args, seq_len, mixer, 1 if memory == "vanilla" else args.max_states)
                slot_map, _, plan_seconds = plan_slots(args, memory, inputs[1])
                chunk_s, chunk_bytes = best_of(args.repeats, chunk, inputs, slot_map, chunk_size=args.chunk_size)
                if seq_len <= args.naive_max_len:
                    naive_s, naive_bytes = best_of(args.repeats, naive, inputs, slot_map)
                    cells = [f"{naive_s:.3f}", f"{chunk_s:.3f}", f"{naive_s / chunk_s:.1f}x"]
                    cells += [f"{naive_bytes / 2**20:.1f}", f"{chunk_bytes / 2**20:.1f}"]
                else:
                    cells = ["-", f"{chunk_s:.3f}", "-", "-", f"{chunk_bytes / 2**20:.1f}"]
                plan_cell = f"{plan_seconds:.3f}" if memory == "dla" else "-"
                row = f"| {mixer} | {memory} | {seq_len} | " + " | ".join(cells) + f" | {plan_cell} |"
                rows.append(row)
                print(row, flush=True)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
