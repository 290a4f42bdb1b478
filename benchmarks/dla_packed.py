"""Packed documents through the chunked op: the chunk-aligned row vs the padded batch vs one call per document (CPU).

A padding-free batch (TRL's `SFTTrainer(padding_free=True)` / `packing=True`) packs documents of mixed lengths into
one row. `hf_dla.ops.chunk` takes them with `cu_seqlens` in two layouts, both giving the documents' own results:

- `aligned`: one row, each document padded to a multiple of the chunk size (the training path: no state in or out);
- `padded batch`: one row per document, right-padded to the longest (used when per-document states go in or out).

The baseline (measured in the same run) is `per document`: one op call per document, as a loop would do it. The table
gives the best wall time of forward + backward over `--repeats` runs and the tokens each layout computes.

    python -m benchmarks.dla_packed                        # 2,048 packed tokens, documents of 16 .. 512 tokens
    python -m benchmarks.dla_packed --total 1024 --repeats 2 --output runs/dla_packed.md
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

OPS = {"mamba2": chunk_mamba2, "gated_deltanet": chunk_gated_delta_rule}


def document_lengths(total: int, shortest: int, longest: int, seed: int) -> list[int]:
    """Log-uniform lengths in [shortest, longest] until `total` tokens (the last one cut to fit)."""
    generator = torch.Generator().manual_seed(seed)
    lengths = []
    while sum(lengths) < total:
        draw = math.exp(math.log(shortest) + torch.rand(1, generator=generator).item() * math.log(longest / shortest))
        lengths.append(min(int(draw), total - sum(lengths)))
    return lengths


def make_inputs(args, mixer, total, num_slots):
    generator = torch.Generator().manual_seed(0)
    shape = (1, total, args.heads)
    q, k = (
        torch.randn(*shape, args.key_dim, generator=generator),
        torch.randn(*shape, args.key_dim, generator=generator),
    )
    if mixer == "gated_deltanet":
        q, k = F.normalize(q, dim=-1) * args.key_dim**-0.5, F.normalize(k, dim=-1)
    v = torch.randn(*shape, args.value_dim, generator=generator)
    log_decay, beta = -0.1 * torch.rand(*shape, generator=generator), torch.rand(*shape, generator=generator)
    lam = torch.rand(*shape, num_slots, generator=generator) + 0.5
    return [q, k, v, log_decay, beta, lam]


def timed(run, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def layouts(op, inputs, slot_map, cu_seqlens, chunk_size):
    """name -> (forward + backward closure, tokens computed)."""
    lengths = cu_seqlens.diff().tolist()

    def backward(outputs):
        sum(o.square().sum() for o in outputs).backward()

    def packed(output_final_state):
        leaves = [x.clone().requires_grad_() for x in inputs]
        q, k, v, log_decay, beta, lam = leaves
        out, final = op(
            q, k, v, log_decay, beta, slot_map, lam, None, output_final_state,
            cu_seqlens=cu_seqlens, chunk_size=chunk_size,
        )  # fmt: skip
        backward([out] + ([final] if final is not None else []))

    def per_document():
        leaves = [x.clone().requires_grad_() for x in inputs]
        outputs = []
        for start, end in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
            part = [x[:, start:end] for x in leaves]
            slots = None if slot_map is None else slot_map[:, start:end]
            out, _ = op(*part[:5], slots, part[5], None, False, chunk_size=chunk_size)
            outputs.append(out)
        backward(outputs)

    aligned_tokens = sum(math.ceil(n / chunk_size) * chunk_size for n in lengths)
    return {
        "per document": (per_document, sum(lengths)),
        "padded batch": (lambda: packed(True), len(lengths) * max(lengths)),
        "aligned": (lambda: packed(False), aligned_tokens),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=int, default=2048, help="packed tokens")
    parser.add_argument("--shortest", type=int, default=16)
    parser.add_argument("--longest", type=int, default=512)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--key_dim", type=int, default=32)
    parser.add_argument("--value_dim", type=int, default=32)
    parser.add_argument("--chunk_size", type=int, default=64)
    parser.add_argument("--max_states", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=str, default=None, help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    lengths = document_lengths(args.total, args.shortest, args.longest, seed=0)
    cu_seqlens = torch.tensor([0, *lengths]).cumsum(0)
    lines = [
        f"{len(lengths)} documents of {min(lengths)}..{max(lengths)} tokens, {args.total} packed; H={args.heads}, "
        f"K={args.key_dim}, V={args.value_dim}, chunk {args.chunk_size}; forward + backward, best of {args.repeats}",
        "",
        "| mixer | memory | layout | tokens computed | seconds | time / per document |",
        "|---|---|---|---|---|---|",
    ]
    for mixer, op in OPS.items():
        for memory in ("vanilla", "dla"):
            plan = build_memory_plan(memory, args.max_states, merge_threshold=0.5)
            inputs = make_inputs(args, mixer, args.total, plan.num_slots)
            valid = torch.ones(1, args.total, dtype=torch.bool)
            slot_map = plan.plan_documents(inputs[1], valid, cu_seqlens).slot_map
            if slot_map is None:
                inputs[5] = inputs[5][..., :1]
            results = {
                name: (timed(run, args.repeats), tokens)
                for name, (run, tokens) in layouts(op, inputs, slot_map, cu_seqlens, args.chunk_size).items()
            }
            baseline = results["per document"][0]
            for name, (seconds, tokens) in results.items():
                lines.append(f"| {mixer} | {memory} | {name} | {tokens} | {seconds:.3f} | {seconds / baseline:.2f} |")
    table = "\n".join(lines)
    print(table)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(table + "\n")


if __name__ == "__main__":
    main()
