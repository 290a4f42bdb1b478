"""Which op a model runs: `get_multistate_op(backend, mixer)`.

Flat beside ``modeling_dla.py`` (copied with it by ``save_pretrained``, see ``ops_naive.py``); ``hf_dla.ops``
re-exports it. The naive and chunk ops are imported here; the Triton ones are looked up when first asked for
(`ops_utils.import_triton_backend`), so the `triton` package is only needed by ``backend="triton"``.
"""

from __future__ import annotations

from .ops_chunk import chunk_gated_delta_rule, chunk_mamba2
from .ops_naive import naive_gated_delta_rule, naive_mamba2
from .ops_utils import BACKENDS, import_triton_backend

PYTORCH_OPS = {
    ("naive", "mamba2"): naive_mamba2,
    ("naive", "gated_deltanet"): naive_gated_delta_rule,
    ("chunk", "mamba2"): chunk_mamba2,
    ("chunk", "gated_deltanet"): chunk_gated_delta_rule,
}
TRITON_OP_NAMES = {"mamba2": "triton_mamba2", "gated_deltanet": "triton_gated_delta_rule"}


def get_multistate_op(backend: str, mixer: str):
    """The op of a backend (`naive` | `chunk` | `triton`) for a mixer (`mamba2` | `gated_deltanet`)."""
    if backend != "triton":
        if (backend, mixer) not in PYTORCH_OPS:
            raise ValueError(f"No op for backend={backend!r}, mixer={mixer!r}; backends: {', '.join(BACKENDS)}.")
        return PYTORCH_OPS[backend, mixer]
    return getattr(import_triton_backend(), TRITON_OP_NAMES[mixer])


__all__ = ["get_multistate_op"]
