"""The README's code runs as written: every ```bash and ```python block, in order, from a fresh workspace laid out
like a clone (its `examples/` and `kit/`), with `.venv/bin` on PATH and the local Hub server as the Hub. A block
preceded by `<!-- readme-test: skip (why) -->` is illustrative (a GPU, a Hub model) and is only checked to be
marked with its reason.

The chain's teacher is the suite's shared tiny teacher (`trained_teacher`), placed where `make demo-sft` leaves
it, so `train_tiny_sft('runs/sft')` reuses it as it would after `make demo-sft`."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TEACHER_TIMEOUT

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
SKIP_MARK = re.compile(r"<!-- readme-test: skip \((?P<why>[^)]+)\) -->\n$")


def readme_blocks() -> list[tuple[str, str, str | None]]:
    """(language, code, reason it is skipped or None) of each bash / python block, in README order."""
    text = README.read_text()
    blocks = []
    for match in re.finditer(r"```(bash|python)\n(.*?)```", text, re.S):
        skip = SKIP_MARK.search(text[: match.start()][-200:])
        blocks.append((match.group(1), match.group(2), skip.group("why") if skip else None))
    return blocks


def test_readme_has_runnable_blocks_and_every_skip_says_why():
    blocks = readme_blocks()
    runnable = [code for _, code, why in blocks if why is None]
    assert any("hf-compress run" in code for code in runnable)
    assert any("--push_to_hub" in code for code in runnable)
    assert any("FlowGRPOTrainer" in code for code in runnable)
    assert all(why.strip() for _, _, why in blocks if why is not None)


@pytest.mark.slow
@pytest.mark.timeout(TEACHER_TIMEOUT)
def test_readme_blocks_run_as_written_in_order(trained_teacher, hub_server, hub_env, tmp_path):
    workspace = tmp_path / "clone"
    (workspace / "runs" / "sft").mkdir(parents=True)
    for name in ("examples", "kit"):
        (workspace / name).symlink_to(REPO_ROOT / name)
    (workspace / "runs" / "sft" / "model").symlink_to(trained_teacher)
    env = {
        **hub_env,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
        "HF_DATASETS_OFFLINE": "0",
    }
    for number, (language, code, why) in enumerate(readme_blocks()):
        if why is not None:
            continue
        if language == "bash":
            command = ["bash", "-euo", "pipefail", "-c", code]
        else:
            script = workspace / f"readme_block_{number}.py"  # in the workspace: `kit` imports as from a clone's root
            script.write_text(code)
            command = [sys.executable, str(script)]
        start = time.perf_counter()
        result = subprocess.run(command, cwd=workspace, env=env, capture_output=True, text=True)
        print(f"README block {number} ({language}): {time.perf_counter() - start:.0f} s")
        assert result.returncode == 0, f"README block {number} ({language}) failed:\n{code}\n{result.stderr[-4000:]}"

    assert (workspace / "runs" / "report").is_dir()
    assert hub_server.meta("user/arithmetic-compress-distill", "dataset")["commits"]
