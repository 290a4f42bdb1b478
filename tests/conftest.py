"""Suite-wide settings.

The test machines have no GPU, so Triton kernels run in Triton's CPU interpreter. `TRITON_INTERPRET` only takes
effect for functions decorated after it is set, and transformers / torch._dynamo import triton early, so it is set
here, before any test module loads. Run with `TRITON_INTERPRET=0` to test the kernels on a GPU.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.hub_fixtures import hub_env, hub_server  # noqa: E402,F401  (local Hub fixtures, see tests/hub_fixtures.py)
