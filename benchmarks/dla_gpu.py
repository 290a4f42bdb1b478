"""Forward + backward throughput and peak memory of the Triton multi-state ops on a GPU.

For each mixer (Mamba-2, Gated DeltaNet), memory mode (vanilla, loglinear, dla) and sequence length, one
layer's op (`hf_dla.ops.triton`) runs forward + backward on random inputs at a Mamba-2-780M-like layer shape
(48 heads, key dim 128, value dim 64, bf16 inputs). The slot maps come from the real memory plans
(`hf_dla.memory_plans`; for dla the Triton scan `TritonDynamicPlan` that `backend="triton"` uses), timed
on their own ("plan ms"). The "x vanilla" column is op + plan time over vanilla mode's op time for the same
mixer and length, measured in the same run; "first call s" is the warm-up call's time (the kernels' compile on
the first shape). The "dla, R=1" rows keep every chunk start's slot states for the backward instead of the
default checkpoints: the time the recompute costs. Each row is printed as it is measured. A second table times
the dla plan in PyTorch (the baseline) against the Triton scan on the same keys and checks that both give the
same slot maps. When `fla` is importable its vanilla kernels (`chunk_simple_gla` for Mamba-2,
`chunk_gated_delta_rule`) are timed on the same inputs beside ours, CUDA only ("fla (vanilla)" rows); the
script says why when it cannot.

    python -m benchmarks.dla_gpu                        # CUDA, T = 2K .. 16K, about 5 minutes on one H100
    python -m benchmarks.dla_gpu --seq_lens 2048 4096
    python -m benchmarks.dla_gpu --tiny                 # tiny shape; on a CPU through Triton's interpreter
    python -m benchmarks.dla_gpu --tiny --check         # + parity with hf_dla.ops.naive (CUDA runs check by default)
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import time

import torch
import torch.nn.functional as F

if not torch.cuda.is_available():  # Triton's CPU interpreter must be on before triton is imported (hf_dla imports it)
    os.environ.setdefault("TRITON_INTERPRET", "1")

MIXERS = ("mamba2", "gated_deltanet")
MEMORIES = ("vanilla", "loglinear", "dla")
# dla again with every chunk start's slot states kept for the backward (checkpoint_every=1, no recompute): the
# time the default checkpointing (about sqrt(T / chunk) chunks between kept states) costs, and the memory it saves.
ALL_STATES = "dla, R=1"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq_lens", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=48, help="Mamba-2 780M: d_model 1536, expand 2, head dim 64")
    parser.add_argument("--key_dim", type=int, default=128, help="Mamba-2 state size")
    parser.add_argument("--value_dim", type=int, default=64, help="Mamba-2 head dim")
    parser.add_argument("--max_states", type=int, default=8, help="dla slots (loglinear uses ceil(log2 T) + 1)")
    parser.add_argument("--merge_threshold", type=float, default=0.5)
    parser.add_argument("--chunk_size", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row (best is reported)")
    parser.add_argument("--tiny", action="store_true", help="tiny shape (runs on a CPU in Triton's interpreter)")
    parser.add_argument(
        "--check", action=argparse.BooleanOptionalAction, default=None,
        help="first hold the kernels against hf_dla.ops.naive on this device (default: on with CUDA)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.tiny:
        args.seq_lens, args.heads, args.key_dim, args.value_dim = [32], 2, 16, 16
        args.max_states, args.chunk_size, args.dtype, args.repeats = 4, 16, "float32", 1
    return args


def make_inputs(args, seq_len, mixer, num_slots, device, seed=0):
    generator = torch.Generator(device="cpu").manual_seed(seed)
    shape = (args.batch, seq_len, args.heads)
    q = torch.randn(*shape, args.key_dim, generator=generator)
    k = torch.randn(*shape, args.key_dim, generator=generator)
    if mixer == "gated_deltanet":
        q, k = F.normalize(q, dim=-1) * args.key_dim**-0.5, F.normalize(k, dim=-1)
    else:
        q, k = q * args.key_dim**-0.5, k * args.key_dim**-0.5
    v = torch.randn(*shape, args.value_dim, generator=generator)
    log_decay = -0.1 * torch.rand(*shape, generator=generator)
    beta = torch.rand(*shape, generator=generator)
    lam = torch.rand(*shape, num_slots, generator=generator) + 0.5
    dtype = getattr(torch, args.dtype)
    features = [x.to(device=device, dtype=dtype) for x in (q, k, v, log_decay, beta, lam)]
    features[3] = log_decay.to(device)  # the mixers keep the log-decay in float32
    return features


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_forward_backward(run, inputs, device, repeats):
    """Best wall time (s) of forward + backward over `repeats` runs after a warm-up run (on CUDA; it compiles
    the kernels the first time a shape is seen, so its time is the first call's), the peak memory (MiB, CUDA
    only) above what was allocated before the run, and the warm-up's time (s, None on the CPU)."""
    warmup = int(device.type == "cuda")
    best, peak, first = math.inf, None, None
    for attempt in range(repeats + warmup):
        leaves = [x.detach().requires_grad_() for x in inputs]
        synchronize(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        start = time.perf_counter()
        out = run(*leaves)
        out.float().square().mean().backward()
        synchronize(device)
        if attempt >= warmup:
            best = min(best, time.perf_counter() - start)
        else:
            first = time.perf_counter() - start
        if device.type == "cuda":
            peak = (torch.cuda.max_memory_allocated() - before) / 2**20
        del out, leaves
    return best, peak, first


def plan_slot_map(args, memory, keys, pytorch_plan=False):
    """The memory plan's slot map over `keys`, its number of slots and the plan's wall time (s). The dla plan
    is `TritonDynamicPlan` (what `backend="triton"` uses) unless `pytorch_plan`."""
    from hf_dla.memory_plans import build_memory_plan

    if memory == "vanilla":
        return None, 1, 0.0
    num_slots = args.max_states if memory == "dla" else math.ceil(math.log2(keys.shape[1])) + 1
    plan = build_memory_plan(memory, num_slots, args.merge_threshold, backend="chunk" if pytorch_plan else "triton")
    plan(keys[:, :2], torch.ones(keys.shape[0], 2, dtype=torch.bool, device=keys.device),
         plan.init_state(keys.shape[0], keys.shape[2] * keys.shape[3], keys.device))  # fmt: skip  # warm-up
    valid = torch.ones(keys.shape[:2], dtype=torch.bool, device=keys.device)
    state = plan.init_state(keys.shape[0], keys.shape[2] * keys.shape[3], keys.device)
    synchronize(keys.device)
    start = time.perf_counter()
    slot_map = plan(keys, valid, state).slot_map
    synchronize(keys.device)
    return slot_map, num_slots, time.perf_counter() - start


def fla_reference(mixer):
    """fla's single-state kernel for the mixer as a (q, k, v, log_decay, beta) -> o function, or the reason
    there is none (a string). The keywords are bound against fla's own signature here, so a renamed argument
    shows up before any GPU time is spent."""
    try:
        if mixer == "mamba2":
            from fla.ops.simple_gla import chunk_simple_gla as kernel

            def reference(q, k, v, g, beta):
                return kernel(q=q, k=k, v=v * beta[..., None], g=g, scale=1.0)[0]

            keywords = ("q", "k", "v", "g", "scale")
        else:
            from fla.ops.gated_delta_rule import chunk_gated_delta_rule as kernel

            def reference(q, k, v, g, beta):
                return kernel(q=q, k=k, v=v, g=g, beta=beta, scale=1.0)[0]

            keywords = ("q", "k", "v", "g", "beta", "scale")
        inspect.signature(kernel).bind(**dict.fromkeys(keywords))
    except Exception as error:  # noqa: BLE001  # fla is optional: not installed, or not importable with this triton
        return f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
    return reference


def triton_ops(device):
    from hf_dla.ops.triton import interpreter_active, triton_gated_delta_rule, triton_mamba2

    if device.type == "cpu" and not interpreter_active():
        raise RuntimeError("No CUDA device and the Triton kernels were not built for the interpreter.")
    return {"mamba2": triton_mamba2, "gated_deltanet": triton_gated_delta_rule}


def check_against_naive(device, args) -> list[dict]:
    """Max |triton - naive| over outputs and final states, and over the gradients of every input, float32,
    at the benchmark's head dims and chunk size (B=2, H=2, T = 4 chunks, so that the kernels are the ones the
    timing compiles), slot maps from the memory plans; `ok` is torch's allclose at atol = rtol = 1e-3."""
    from hf_dla.ops.naive import naive_gated_delta_rule, naive_mamba2

    naive = {"mamba2": naive_mamba2, "gated_deltanet": naive_gated_delta_rule}
    ops = triton_ops(device)
    small = argparse.Namespace(**{**vars(args), "batch": 2, "heads": 2, "dtype": "float32"})
    seq_len = 4 * args.chunk_size
    generator = torch.Generator().manual_seed(3)
    rows = []
    for memory in MEMORIES:
        keys = make_inputs(small, seq_len, "gated_deltanet", 1, device, seed=1)[1]
        slot_map, num_slots, _ = plan_slot_map(small, memory, keys)
        for mixer, op in ops.items():
            inputs = make_inputs(small, seq_len, mixer, num_slots, device, seed=2)
            state_shape = (small.batch, small.heads, num_slots, small.key_dim, small.value_dim)
            inputs.append(torch.randn(*state_shape, generator=generator).to(device))
            # A loss with weights of order one, so that every gradient entry is of order one too.
            out_weight = torch.randn(small.batch, seq_len, small.heads, small.value_dim, generator=generator)
            state_weight = torch.randn(*state_shape, generator=generator)
            results = []
            try:  # one kernel that cannot launch (shared memory) must not cost the other rows
                for run, kwargs in ((naive[mixer], {}), (op, {"chunk_size": args.chunk_size})):
                    leaves = [x.detach().requires_grad_() for x in inputs]
                    out, final = run(*leaves[:5], slot_map, leaves[5], leaves[6], **kwargs)
                    ((out * out_weight.to(device)).sum() + (final * state_weight.to(device)).sum()).backward()
                    results.append([out, final, *(x.grad for x in leaves)])
            except Exception as error:  # noqa: BLE001
                print(f"check {mixer} / {memory} failed: {type(error).__name__}: {error}", flush=True)
                rows.append(dict(mixer=mixer, memory=memory, seq_len=seq_len, out=math.nan, grad=math.nan, ok=False))
                continue
            pairs = list(zip(*results))
            rows.append(dict(
                mixer=mixer, memory=memory, seq_len=seq_len,
                out=max((a - b).abs().max().item() for a, b in pairs[:2]),
                grad=max((a - b).abs().max().item() for a, b in pairs[2:]),
                ok=all(torch.allclose(a, b, atol=1e-3, rtol=1e-3) for a, b in pairs),
            ))  # fmt: skip
    return rows


def format_check_table(rows, device_name, args) -> str:
    lines = [
        f"Triton vs naive on {device_name} (B=2, T={rows[0]['seq_len']}, H=2, K={args.key_dim}, V={args.value_dim}, "
        f"chunk {args.chunk_size}, float32)",
        "| mixer | memory | max err outputs + state | max err gradients | allclose 1e-3 |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r['mixer']} | {r['memory']} | {r['out']:.1e} | {r['grad']:.1e} | {r['ok']} |" for r in rows]
    return "\n".join(lines)


def run_benchmark(args, emit=lambda row: None) -> list[dict]:
    """The rows of both tables; `emit` gets each row of the first as soon as it is measured."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ops = triton_ops(device)
    references = {mixer: fla_reference(mixer) for mixer in MIXERS}
    for mixer, reference in references.items():
        if isinstance(reference, str):
            print(f"fla reference for {mixer}: none ({reference})", flush=True)
        elif device.type != "cuda":
            print(f"fla reference for {mixer}: importable, timed on CUDA only", flush=True)
    rows, plan_rows = [], []
    for seq_len in args.seq_lens:
        plan_keys = make_inputs(args, seq_len, "gated_deltanet", 1, device)[1]
        pytorch_map, _, pytorch_seconds = plan_slot_map(args, "dla", plan_keys, pytorch_plan=True)
        triton_map, _, triton_seconds = plan_slot_map(args, "dla", plan_keys)
        plan_rows.append(dict(seq_len=seq_len, pytorch_ms=1e3 * pytorch_seconds, triton_ms=1e3 * triton_seconds,
                              same=bool(torch.equal(pytorch_map, triton_map))))  # fmt: skip
        for memory in (*MEMORIES, ALL_STATES):
            if memory in ("dla", ALL_STATES):
                slot_map, num_slots, plan_seconds = triton_map, args.max_states, triton_seconds
            else:
                slot_map, num_slots, plan_seconds = plan_slot_map(args, memory, plan_keys)
            every = 1 if memory == ALL_STATES else None
            for mixer in MIXERS:
                inputs = make_inputs(args, seq_len, mixer, num_slots, device)

                def run(q, k, v, log_decay, beta, lam, op=ops[mixer], slot_map=slot_map, every=every):
                    return op(q, k, v, log_decay, beta, slot_map, lam, chunk_size=args.chunk_size,
                              checkpoint_every=every)[0]  # fmt: skip

                try:  # one kernel that cannot launch (shared memory) must not cost the other rows
                    seconds, peak, first = time_forward_backward(run, inputs, device, args.repeats)
                except Exception as error:  # noqa: BLE001
                    print(f"{mixer} / {memory} at T={seq_len} failed: {type(error).__name__}: {error}", flush=True)
                    continue
                rows.append(dict(mixer=mixer, memory=memory, seq_len=seq_len, slots=num_slots,
                                 plan_ms=1e3 * plan_seconds, ms=1e3 * seconds, peak=peak, first=first))  # fmt: skip
                emit(rows[-1])
                reference = references[mixer]
                if memory == "vanilla" and device.type == "cuda" and callable(reference):
                    try:  # fla is optional; one failing call must not end the run
                        seconds, peak, first = time_forward_backward(reference, inputs[:5], device, args.repeats)
                    except Exception as error:  # noqa: BLE001
                        print(f"fla reference for {mixer} at T={seq_len} failed: {error}", flush=True)
                        continue
                    rows.append(dict(mixer=mixer, memory="fla (vanilla)", seq_len=seq_len, slots=1,
                                     plan_ms=0.0, ms=1e3 * seconds, peak=peak, first=first))  # fmt: skip
                    emit(rows[-1])
    return rows, plan_rows


TABLE_HEADER = (
    "| mixer | memory | T | slots | plan ms | fwd+bwd ms | tokens/s | x vanilla | peak MiB | first call s |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def format_row(r, batch, vanilla_ms) -> str:
    """One row (mixer, memory, T). tokens/s counts the op's forward + backward; "x vanilla" divides op + plan
    time by vanilla's op time (same mixer and T); "first call s" is the warm-up (compiles on a new shape)."""
    tokens_per_s = batch * r["seq_len"] / (r["ms"] / 1e3)
    ratio = (r["ms"] + r["plan_ms"]) / vanilla_ms
    peak = "n/a (CPU)" if r["peak"] is None else f"{r['peak']:.0f}"
    first = "n/a (CPU)" if r["first"] is None else f"{r['first']:.1f}"
    return (
        f"| {r['mixer']} | {r['memory']} | {r['seq_len']} | {r['slots']} | {r['plan_ms']:.1f} | {r['ms']:.1f} "
        f"| {tokens_per_s:,.0f} | {ratio:.2f} | {peak} | {first} |"
    )


def format_table(rows, batch) -> str:
    vanilla = {(r["mixer"], r["seq_len"]): r["ms"] for r in rows if r["memory"] == "vanilla"}
    return "\n".join([TABLE_HEADER] + [format_row(r, batch, vanilla.get((r["mixer"], r["seq_len"]), math.nan))
                                        for r in rows])  # fmt: skip


def format_plan_table(plan_rows) -> str:
    lines = [
        "| T | dla plan, PyTorch ms | dla plan, Triton ms | speed-up | same slot maps |",
        "|---|---|---|---|---|",
    ]
    for r in plan_rows:
        speedup = r["pytorch_ms"] / max(r["triton_ms"], 1e-9)
        lines.append(
            f"| {r['seq_len']} | {r['pytorch_ms']:.1f} | {r['triton_ms']:.1f} | {speedup:.1f} | {r['same']} |"
        )
    return "\n".join(lines)


def main(argv=None) -> str:
    args = parse_args(argv)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (Triton interpreter)"
    start = time.perf_counter()
    if args.check or (args.check is None and torch.cuda.is_available()):
        check_device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        print(format_check_table(check_against_naive(check_device, args), device, args), flush=True)
    print(f"hf_dla Triton ops, forward + backward, {device}, batch {args.batch}, {args.heads} heads, "
          f"K={args.key_dim}, V={args.value_dim}, chunk {args.chunk_size}, {args.dtype}")  # fmt: skip
    vanilla, printed = {}, []

    def emit(row):  # rows as they are measured, so a run cut at its time limit keeps what it measured
        if not printed:
            print(TABLE_HEADER)
        printed.append(row)
        if row["memory"] == "vanilla":
            vanilla[row["mixer"], row["seq_len"]] = row["ms"]
        print(format_row(row, args.batch, vanilla.get((row["mixer"], row["seq_len"]), math.nan)), flush=True)

    rows, plan_rows = run_benchmark(args, emit)
    table = format_table(rows, args.batch)
    print(f"\ndla memory plan over (B, T, {args.heads} heads x {args.key_dim}) keys, max_states {args.max_states}")
    print(format_plan_table(plan_rows))
    print(f"total {time.perf_counter() - start:.0f} s")
    return table


if __name__ == "__main__":
    main()
