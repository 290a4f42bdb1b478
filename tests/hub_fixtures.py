"""Pytest fixtures that run tests against a local Hub (tests/hub_server.py) instead of huggingface.co.

`hub_server` (session): the server, started once as `python -m tests.hub_server` on a free 127.0.0.1 port.
`hub_env` (function): points `huggingface_hub`, `datasets` and `transformers` in this process at it, and returns the
environment for subprocesses. Registered for the whole suite by an import in tests/conftest.py.
"""

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
KIND_DIRS = {"model": "models", "dataset": "datasets"}


@dataclass
class HubServer:
    endpoint: str  # e.g. "http://127.0.0.1:54321"
    token: str  # the one token the server accepts (user name "user")
    root: Path  # where it keeps repos: root/models/user/x/..., root/datasets/user/y/...
    log: Path  # the server's stdout and stderr (a 501 for an unimplemented route is printed here too)

    def repo_dir(self, repo_id: str, repo_type: str = "model") -> Path:
        """The repo's files at the head of `main`, as plain files."""
        return self.root / KIND_DIRS[repo_type] / repo_id

    def meta(self, repo_id: str, repo_type: str = "model") -> dict:
        """The repo's refs and commits ({"refs": {"main": sha}, "commits": {sha: {..., "files": {...}}}})."""
        return json.loads((self.root / "_meta" / KIND_DIRS[repo_type] / f"{repo_id}.json").read_text())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(endpoint: str) -> bool:
    try:
        urllib.request.urlopen(f"{endpoint}/api/whoami-v2", timeout=2)
    except urllib.error.HTTPError as err:
        return err.code == 401  # anonymous whoami: the server is up and checks tokens
    except OSError:
        return False
    return False


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory):
    """A local Hub for the whole session; yields a `HubServer` (`.endpoint`, `.token`, `.root`, `.log`)."""
    root, token, port = tmp_path_factory.mktemp("hub_root"), f"hf_test_{secrets.token_hex(8)}", _free_port()
    log = root.parent / f"{root.name}.log"
    cmd = [sys.executable, "-m", "tests.hub_server", "--port", str(port), "--root", str(root), "--token", token]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    server = HubServer(endpoint=f"http://127.0.0.1:{port}", token=token, root=root, log=log)
    try:
        deadline = time.monotonic() + 60
        while not _answers(server.endpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"hub_server did not start (exit code {proc.poll()}):\n{log.read_text()}")
            time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def hub_env(hub_server, monkeypatch, tmp_path_factory) -> dict:
    """Point this test at the local Hub and return the environment (a dict) to give subprocesses.

    Environment, for subprocesses (and anything that reads it at call time): HF_ENDPOINT, HF_TOKEN, a fresh HF_HOME
    (so caches and the token file start empty), HF_HUB_DISABLE_XET=1, HF_HUB_DISABLE_TELEMETRY=1, and
    HF_HUB_OFFLINE / HF_DATASETS_OFFLINE / TRANSFORMERS_OFFLINE removed (tests/conftest.py sets HF_HUB_OFFLINE=1).

    In this process the libraries read those variables once, at import, so the values are patched too:
    - `huggingface_hub.constants`: ENDPOINT and HUGGINGFACE_CO_URL_TEMPLATE (download URLs are built from the
      template, not from ENDPOINT), HF_HUB_OFFLINE (checked on every request), HF_HUB_DISABLE_XET, HF_HUB_CACHE,
      HF_TOKEN_PATH, HF_HUB_DISABLE_TELEMETRY;
    - `huggingface_hub.hf_api.api.endpoint`: the module-level `HfApi()` behind `huggingface_hub.create_repo`,
      `upload_folder`, ... (which `transformers`' push_to_hub uses) fixed its endpoint at import;
    - `datasets.config`: HF_ENDPOINT, HUB_DATASETS_URL, HF_HUB_OFFLINE, HF_DATASETS_OFFLINE and its caches
      (datasets is imported here for that, once);
    - `transformers` reads `huggingface_hub.constants` and `is_offline_mode()`, but keeps one lazily made `HfApi`
      (`transformers.utils.hub._hf_api`, endpoint fixed when made): it is reset so it is made again for this test,
      and reset after it, so none made here outlives the test.
    HF_HUB_DISABLE_XET matters: with `hf_xet` installed, `huggingface_hub` uploads through Xet without asking the
    server, and this server does not speak Xet. Cached `HfFileSystem` instances (used by `datasets`) are cleared so
    no directory listing survives from an earlier test.
    """
    import datasets.config
    import huggingface_hub.constants as hf_constants
    import huggingface_hub.hf_api
    from huggingface_hub import HfFileSystem

    home = tmp_path_factory.mktemp("hf_home")
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HF_DATASETS_CACHE"):
        monkeypatch.delenv(var, raising=False)
    env = {"HF_ENDPOINT": hub_server.endpoint, "HF_TOKEN": hub_server.token, "HF_HOME": str(home),
           "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}  # fmt: skip
    for var, value in env.items():
        monkeypatch.setenv(var, value)

    patches = {
        hf_constants: {
            "ENDPOINT": hub_server.endpoint,
            "HUGGINGFACE_CO_URL_TEMPLATE": hub_server.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
            "HF_HUB_OFFLINE": False,
            "HF_HUB_DISABLE_XET": True,
            "HF_HUB_DISABLE_TELEMETRY": True,
            "HF_HUB_CACHE": str(home / "hub"),
            "HF_TOKEN_PATH": str(home / "token"),
        },
        huggingface_hub.hf_api.api: {"endpoint": hub_server.endpoint},
        datasets.config: {
            "HF_ENDPOINT": hub_server.endpoint,
            "HUB_DATASETS_URL": hub_server.endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}",
            "HF_HUB_OFFLINE": False,
            "HF_DATASETS_OFFLINE": False,
            "HF_DATASETS_CACHE": home / "datasets",
            "DOWNLOADED_DATASETS_PATH": home / "datasets" / "downloads",
            "EXTRACTED_DATASETS_PATH": home / "datasets" / "downloads" / "extracted",
        },
    }
    for target, values in patches.items():
        for name, value in values.items():
            monkeypatch.setattr(target, name, value)
    if "transformers.utils.hub" in sys.modules:
        monkeypatch.setattr(sys.modules["transformers.utils.hub"], "_hf_api", None)
    HfFileSystem.clear_instance_cache()
    yield dict(os.environ)
    HfFileSystem.clear_instance_cache()
    if "transformers.utils.hub" in sys.modules:  # (if it was there before, monkeypatch then puts the old one back)
        sys.modules["transformers.utils.hub"]._hf_api = None
