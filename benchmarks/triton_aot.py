"""Compile every Triton kernel specialisation of `hf_dla.ops.triton` for real NVIDIA cards, without a GPU.

The launches come from running the ops themselves with launching switched off (`hf_dla.ops.triton.aot`); each
distinct specialisation is compiled with `triton.compile(..., target=GPUTarget("cuda", cc, 32))` (the triton
wheel ships ptxas). One row per kernel, printed as it is compiled: constants, compile seconds, shared memory per
block against the card's limit, registers, stack frame and local bytes per thread (a large stack with few
registers: ptxas spilled), warps and stages. Exits 1 when a
kernel fails to compile or needs more shared memory than the card has per block.

    python -m benchmarks.triton_aot                          # sm_80 (A100) and sm_90 (H100/H200), every shape set
    python -m benchmarks.triton_aot --arch native --shapes benchmark   # on a GPU: its own card, dla_gpu's shapes
    python -m benchmarks.triton_aot --shapes tiny --arch 90  # one small shape (seconds)

Triton caches compiled kernels (TRITON_CACHE_DIR, default ~/.triton/cache): a rerun with the same kernels only
reads the cache, so "s" is the cold compile time on the first run only.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time

if os.environ.get("TRITON_INTERPRET", "0") != "0":
    sys.exit("benchmarks.triton_aot compiles the kernels: run it with TRITON_INTERPRET unset or 0.")

from hf_dla.ops.triton import aot  # noqa: E402

_BOUND: list = []  # the specialisations of the arch being compiled, inherited by the forked workers


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=["80", "90"], help="compute capabilities, or 'native'")
    parser.add_argument("--shapes", default="all", choices=list(aot.SHAPE_SETS))
    parser.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1), help="compiles in parallel")
    parser.add_argument("--json", default=None, help="also append one JSON line per kernel to this file")
    return parser.parse_args(argv)


def native_arch() -> int:
    import torch

    major, minor = torch.cuda.get_device_capability()
    return 10 * major + minor


def _compile(index: int) -> dict:
    try:
        return aot.compile_bound(_BOUND[index])
    except Exception as error:  # noqa: BLE001  # every failure is a row of its own, the others still compile
        bound = _BOUND[index]
        message = f"{type(error).__name__}: {str(error).strip().splitlines()[-1][:200]}"
        return dict(kernel=bound.launch.name, arch=bound.target.arch, constants=bound.constants, error=message)


def format_row(row: dict) -> str:
    if "error" in row:
        return f"| {row['kernel']} | {row['constants']} | FAILED: {row['error']} ||||||||"
    limit = row["limit"]
    fits = "n/a" if limit is None else ("yes" if row["shared"] <= limit else "**NO**")
    return (
        f"| {row['kernel']} | {row['constants']} | {row['seconds']:.1f} | {row['shared'] / 1024:.1f} | {fits} "
        f"| {row['registers']} | {row['stack']} | {row['local']} | {row['num_warps']} | {row['num_stages']} |"
    )


def compile_arch(arch: int, shapes, jobs: int, json_file=None) -> list[dict]:
    global _BOUND
    _BOUND = aot.unique_bound(aot.op_launches(shapes), arch)
    limit = aot.SHARED_MEMORY_LIMIT.get(arch)
    card = aot.CARD_NAMES.get(arch, "?")
    print(f"\nsm_{arch} ({card}, shared memory per block {limit and limit // 1024} KiB): {len(_BOUND)} kernels")
    print("| kernel | constants | s | shared KiB | fits | registers | stack B | local B | warps | stages |")
    print("|---|---|---|---|---|---|---|---|---|---|", flush=True)
    start = time.perf_counter()
    rows = []
    context = multiprocessing.get_context("fork")
    with context.Pool(jobs) as pool:
        for row in pool.imap_unordered(_compile, range(len(_BOUND))):
            rows.append(row)
            print(format_row(row), flush=True)
            if json_file:
                json_file.write(json.dumps(row) + "\n")
                json_file.flush()
    wall = time.perf_counter() - start
    ok = [r for r in rows if "error" not in r]
    over = [r for r in ok if r["limit"] is not None and r["shared"] > r["limit"]]
    largest = max((r["shared"] for r in ok), default=0)
    print(
        f"sm_{arch}: {len(ok)}/{len(rows)} compiled, {wall:.0f} s wall ({jobs} jobs), "
        f"{sum(r['seconds'] for r in ok):.0f} s of compiles, largest shared memory {largest / 1024:.1f} KiB, "
        f"{len(over)} over the limit",
        flush=True,
    )
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    arches = [native_arch() if arch == "native" else int(arch) for arch in args.arch]
    shapes = aot.SHAPE_SETS[args.shapes]
    print(f"shapes ({args.shapes}): " + ", ".join(
        f"H={s.heads} K={s.key_dim} V={s.value_dim} C={s.chunk_size} S={s.num_slots}" for s in shapes
    ), flush=True)  # fmt: skip
    json_file = open(args.json, "a") if args.json else None
    failed = False
    try:
        for arch in arches:
            rows = compile_arch(arch, shapes, args.jobs, json_file)
            failed |= any("error" in r or (r["limit"] is not None and r["shared"] > r["limit"]) for r in rows)
    finally:
        if json_file:
            json_file.close()
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
