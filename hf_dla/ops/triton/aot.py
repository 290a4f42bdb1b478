"""Ahead-of-time compilation of the Triton kernels for a named NVIDIA card, on any machine (no GPU needed).

`record_launches` runs the ops (and the dla plan) on small CPU tensors with launching switched off: every
``kernel[grid](...)`` call they make is recorded instead, with its arguments, so the list of specialisations is
the ops' own launch code and cannot drift from it. `compile_launch` binds a recorded launch exactly as Triton's
JIT does before a launch (the same specialisation of integers and pointers, the same options) and compiles it
with `triton.compile(..., target=GPUTarget("cuda", cc, 32))` through the ptxas that ships in the triton wheel.
The compiled metadata gives the shared memory per block, warps and stages of each kernel; cuobjdump (also in the
wheel) gives registers, stack frame and local memory per thread.

Needs the kernels compiled, not interpreted: ``TRITON_INTERPRET`` unset or 0 when triton is first imported
(`python -m benchmarks.triton_aot` is the command; tests run it as a subprocess).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import subprocess
import tempfile
import time

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import JITFunction, create_function_from_signature

from ...memory_plans import build_memory_plan
from . import chunk, plan

# Per-block shared memory (opt-in maximum) of the cards the kernels are built for, in bytes.
SHARED_MEMORY_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
CARD_NAMES = {80: "A100", 86: "RTX 30xx / A40", 89: "L4 / RTX 40xx", 90: "H100 / H200"}
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


@dataclasses.dataclass
class Launch:
    """One recorded kernel launch: the kernel and the arguments the ops passed it."""

    kernel: JITFunction
    args: tuple
    kwargs: dict

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__


@contextlib.contextmanager
def record_launches():
    """Within the block, Triton launches on CPU tensors are recorded (returned list) instead of run; outputs of
    the kernels are left as allocated (garbage), which the ops' PyTorch glue does not mind."""
    if not isinstance(chunk.kernels.chunk_prep_fwd_kernel, JITFunction):
        raise RuntimeError("The kernels were built for Triton's interpreter: unset TRITON_INTERPRET before importing.")
    launches: list[Launch] = []
    original_run, original_check = JITFunction.run, chunk.check_device

    def record(self, *args, grid, warmup, **kwargs):
        launches.append(Launch(self, args, kwargs))

    JITFunction.run = record
    chunk.check_device = plan.check_device = lambda device: None  # CPU tensors stand in for CUDA ones
    try:
        yield launches
    finally:
        JITFunction.run, chunk.check_device, plan.check_device = original_run, original_check, original_check


@dataclasses.dataclass(frozen=True)
class Shape:
    """One layer shape to specialise for: heads, key and value head dims, chunk size, slot count of the multi-slot
    runs (vanilla runs use one slot)."""

    heads: int
    key_dim: int
    value_dim: int
    chunk_size: int
    num_slots: int


# Mamba-2-780M's layer (the paper's; benchmarks/dla_gpu.py's shape): 48 heads, state size 128, head dim 64, chunk
# 64, with dla's 8 slots and Log-Linear's 15 levels (16K tokens).
PAPER_MAMBA2 = [Shape(48, 128, 64, 64, 8), Shape(48, 128, 64, 64, 15)]
SHAPE_SETS = {
    "tiny": [Shape(2, 16, 16, 16, 4)],
    "benchmark": PAPER_MAMBA2,
    # What the slow test compiles (tests/triton/test_triton_aot.py): the paper shapes (K = 128, chunk 64: the most
    # shared memory of what is launched) and the smallest heads and chunk (K = V = 16, chunk 16). Cold, the K = 128
    # kernels take most of the time (RESULTS.md); "all" adds the largest heads at every chunk size.
    "suite": PAPER_MAMBA2 + [Shape(16, 16, 16, 16, 8)],
    # The paper shapes, the largest supported heads (K = V = 128: the largest tiles, the most shared memory) at each
    # of the three chunk sizes, and the smallest (K = V = 16, chunk 16). Shared memory grows with K, V and the chunk,
    # so the limit check is decided by the largest; the smallest checks that the small tiles compile.
    "all": PAPER_MAMBA2
    + [Shape(16, 128, 128, chunk_size, 8) for chunk_size in chunk.CHUNK_SIZES]
    + [Shape(16, 16, 16, 16, 8)],
}


def op_launches(shapes, mixers=("mamba2", "gated_deltanet")) -> list[Launch]:
    """Every launch of a forward + backward of each mixer at each shape, for one slot without and with lambda
    weights and for `num_slots` slots (a dla slot map) without and with them, of an inference forward, plus the
    dla plan's kernel."""
    ops = {"mamba2": chunk.triton_mamba2, "gated_deltanet": chunk.triton_gated_delta_rule}
    generator = torch.Generator().manual_seed(0)
    with record_launches() as launches:
        for shape in shapes:
            # 5 chunks: more than one checkpoint and a short last segment, as long sequences have (an integer
            # argument equal to 1 would be specialised into a constant of its own)
            seq_len = 5 * shape.chunk_size
            keys = torch.randn(1, seq_len, shape.heads, shape.key_dim, generator=generator)
            valid = torch.ones(1, seq_len, dtype=torch.bool)
            summary_dim = shape.heads * shape.key_dim
            pytorch_plan, triton_plan = (
                build_memory_plan("dla", shape.num_slots, 0.5, backend=backend) for backend in ("chunk", "triton")
            )
            slot_map = pytorch_plan(keys, valid, pytorch_plan.init_state(1, summary_dim, keys.device)).slot_map
            with contextlib.suppress(RuntimeError, IndexError):  # the plan's outputs are garbage once recorded
                triton_plan(keys, valid, triton_plan.init_state(1, summary_dim, keys.device))
            for mixer in mixers:
                for slots, slot_map_or_none in ((1, None), (shape.num_slots, slot_map)):
                    for with_lambda in (False, True):
                        _forward_backward(ops[mixer], shape, seq_len, slots, slot_map_or_none, with_lambda, generator)
    return launches


def _forward_backward(op, shape, seq_len, slots, slot_map, with_lambda, generator):
    def rand(*size):
        return torch.randn(1, seq_len, shape.heads, *size, generator=generator).requires_grad_()

    q, k, v = rand(shape.key_dim), rand(shape.key_dim), rand(shape.value_dim)
    log_decay, beta = rand(), rand()
    lam = rand(slots) if with_lambda else None
    state = torch.zeros(1, shape.heads, slots, shape.key_dim, shape.value_dim, requires_grad=True)
    out, final = op(q, k, v, log_decay, beta, slot_map, lam, state, chunk_size=shape.chunk_size)
    (out.sum() + final.sum()).backward()
    for every in (1, 2):  # every chunk start kept (as inference runs the forward), and R = 2
        with torch.no_grad() if every == 1 else contextlib.nullcontext():
            op(q, k, v, log_decay, beta, slot_map, lam, state, chunk_size=shape.chunk_size, checkpoint_every=every)


@dataclasses.dataclass
class Bound:
    """A launch bound for one target as the JIT binds it: what `triton.compile` takes, and a key to dedupe."""

    launch: Launch
    target: GPUTarget
    source: ASTSource
    options: dict
    key: str
    constants: str  # the constexpr arguments, "K=128 C=64 ..."


def bind(launch: Launch, arch: int) -> Bound:
    """Bind a recorded launch for `sm_<arch>` exactly as `JITFunction.run` does before compiling."""
    kernel = launch.kernel
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    kwargs = {"debug": kernel.debug or triton.knobs.runtime.debug, **launch.kwargs}
    bound_args, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound_args, specialization, options)
    key = f"{launch.name} {arch} {specialization} {sorted(options.__dict__.items())}"
    source = ASTSource(kernel, signature, constexprs, attrs)
    # constexpr parameters and the integer arguments equal to 1, which the JIT turns into constants too
    constants = " ".join(f"{kernel.params[path[0]].name}={value}" for path, value in constexprs.items())
    return Bound(launch, target, source, options.__dict__, key, constants)


def unique_bound(launches, arch: int) -> list[Bound]:
    """The distinct specialisations among `launches` for `sm_<arch>` (what the JIT would compile once each)."""
    seen: dict[str, Bound] = {}
    for launch in launches:
        bound = bind(launch, arch)
        seen.setdefault(bound.key, bound)
    return list(seen.values())


def compile_bound(bound: Bound) -> dict:
    """Compile one specialisation; its name, constants, compile seconds and the compiled metadata."""
    start = time.perf_counter()
    compiled = triton.compile(bound.source, target=bound.target, options=bound.options)
    seconds = time.perf_counter() - start
    metadata = compiled.metadata
    arch = bound.target.arch
    return dict(
        kernel=bound.launch.name, arch=arch, constants=bound.constants, seconds=seconds,
        shared=metadata.shared, num_warps=metadata.num_warps, num_stages=metadata.num_stages,
        limit=SHARED_MEMORY_LIMIT.get(arch), **resource_usage(compiled.asm["cubin"]),
    )  # fmt: skip


def resource_usage(cubin: bytes) -> dict:
    """Registers, stack frame and local memory per thread (bytes) of a cubin, read by the wheel's cuobjdump (None
    where it is missing). A large stack with few registers is ptxas spilling the tiles."""
    if not os.path.exists(CUOBJDUMP):
        return {"registers": None, "stack": None, "local": None}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        text = subprocess.run([CUOBJDUMP, "-res-usage", file.name], capture_output=True, text=True).stdout
    found = {name: re.search(rf"{name.upper()}:(\d+)", text) for name in ("reg", "stack", "local")}
    registers, stack, local = (match and int(match[1]) for match in found.values())
    return {"registers": registers, "stack": stack, "local": local}
