"""Suite-wide settings.

The test machines have no GPU, so Triton kernels run in Triton's CPU interpreter. `TRITON_INTERPRET` only takes
effect for functions decorated after it is set, and transformers / torch._dynamo import triton early, so it is set
here, before any test module loads. Run with `TRITON_INTERPRET=0` to test the kernels on a GPU.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Training the tiny teacher takes about 3 minutes on a quiet 2-core CPU and over 20 on a loaded one; a test that
# needs it (mark it `slow`) may take this long in all, setup included, so that load alone never fails it.
TEACHER_TIMEOUT = 2400


@pytest.fixture(scope="session")
def trained_teacher() -> str:
    """The folder of the tiny SFT teacher (`kit.teacher.train_tiny_sft` with its default settings), trained once per
    test run and shared: it is `make demo-sft`'s `runs/sft/model`, reused when that run has finished."""
    from kit.teacher import train_tiny_sft

    return train_tiny_sft(os.path.join(REPO_ROOT, "runs", "sft"))


from tests.hub_fixtures import hub_env, hub_server  # noqa: E402,F401  (local Hub fixtures, see tests/hub_fixtures.py)
