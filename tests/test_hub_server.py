"""The local Hub (tests/hub_server.py) against the real `huggingface_hub`, `datasets` and `transformers` clients."""

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalTokenNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

BIG = 10 * 1024 * 1024 + 1000  # just over the 10 MiB above which the Hub stores any file in LFS


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None):
    """A raw request, for what the client hides: returns (status, headers, body)."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def run_python(code: str, env: dict) -> str:
    """Run `code` in a fresh interpreter (nothing cached in this process helps it) and return its stdout."""
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


def test_whoami_needs_the_servers_token(hub_server, hub_env, monkeypatch):
    assert HfApi().whoami()["name"] == "user"  # the token from HF_TOKEN
    with pytest.raises(HfHubHTTPError, match="Invalid user token") as wrong:
        HfApi(token="hf_wrong").whoami()
    assert wrong.value.response.status_code == 401
    monkeypatch.delenv("HF_TOKEN")  # hub_env points the token file at an empty HF_HOME, so no token at all
    with pytest.raises(LocalTokenNotFoundError):
        HfApi().whoami()
    status, headers, _ = http("GET", f"{hub_server.endpoint}/api/whoami-v2")  # what the client would get
    assert status == 401


def test_create_repo_model_and_dataset_exist_ok(hub_server, hub_env):
    api = HfApi()
    for repo_type, prefix in (("model", ""), ("dataset", "datasets/")):
        url = api.create_repo("user/created", repo_type=repo_type)
        assert url == f"{hub_server.endpoint}/{prefix}user/created"
        assert api.create_repo("user/created", repo_type=repo_type, exist_ok=True) == url
        with pytest.raises(HfHubHTTPError) as exists:
            api.create_repo("user/created", repo_type=repo_type)
        assert exists.value.response.status_code == 409
        info = api.repo_info("user/created", repo_type=repo_type)
        # Like the Hub: a new repo has one commit, holding the default .gitattributes.
        assert [s.rfilename for s in info.siblings] == [".gitattributes"]
        assert hub_server.meta("user/created", repo_type)["refs"]["main"] == info.sha
        assert (hub_server.repo_dir("user/created", repo_type) / ".gitattributes").is_file()


def test_upload_folder_goes_through_lfs_and_downloads_back(hub_server, hub_env, tmp_path):
    api = HfApi()
    api.create_repo("user/upload")
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    files = {"notes.txt": b"hello\n", "w.safetensors": os.urandom(2000), "big.dat": os.urandom(BIG), "sub/b.txt": b"b"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    commit = api.upload_folder(folder_path=folder, repo_id="user/upload")

    tree = {f.path: f for f in api.list_repo_tree("user/upload", recursive=True)}
    assert tree["notes.txt"].lfs is None and tree["sub/b.txt"].lfs is None
    assert tree["w.safetensors"].lfs.size == 2000  # by name, from the default .gitattributes
    assert tree["big.dat"].lfs.size == BIG  # by size
    assert sorted(api.list_repo_files("user/upload")) == sorted([".gitattributes", *files])
    for name, data in files.items():
        assert (hub_server.repo_dir("user/upload") / name).read_bytes() == data
        assert open(hf_hub_download("user/upload", name), "rb").read() == data
    snapshot = snapshot_download("user/upload")
    assert snapshot.endswith(commit.oid)
    for name, data in files.items():
        assert open(os.path.join(snapshot, name), "rb").read() == data

    # A second identical upload: preupload returns each file's remote oid, the client sees nothing changed and
    # sends no commit ("No files have been modified since last commit"), returning the current head.
    again = api.upload_folder(folder_path=folder, repo_id="user/upload")
    assert again.oid == commit.oid
    titles = [c.title for c in api.list_repo_commits("user/upload")]
    assert titles == ["Upload folder using huggingface_hub", "initial commit"]

    # A real change makes a new commit; the old revision still serves the old bytes.
    api.upload_file(path_or_fileobj=b"changed\n", path_in_repo="notes.txt", repo_id="user/upload")
    assert len(hub_server.meta("user/upload")["commits"]) == 3
    assert open(hf_hub_download("user/upload", "notes.txt", revision=commit.oid), "rb").read() == b"hello\n"
    assert (hub_server.repo_dir("user/upload") / "notes.txt").read_bytes() == b"changed\n"


def test_download_headers_for_regular_and_lfs_files(hub_server, hub_env):
    api = HfApi()
    api.create_repo("user/headers")
    data = os.urandom(100)
    api.upload_file(path_or_fileobj=data, path_in_repo="w.safetensors", repo_id="user/headers")
    api.upload_file(path_or_fileobj=b"text", path_in_repo="a.txt", repo_id="user/headers")
    head = api.repo_info("user/headers").sha
    status, headers, _ = http("HEAD", f"{hub_server.endpoint}/user/headers/resolve/main/w.safetensors")
    sha256 = api.get_paths_info("user/headers", "w.safetensors")[0].lfs.sha256
    assert (status, headers["X-Repo-Commit"], headers["Content-Length"]) == (200, head, "100")
    assert headers["ETag"] == headers["X-Linked-Etag"] == f'"{sha256}"' and headers["X-Linked-Size"] == "100"
    status, headers, body = http("GET", f"{hub_server.endpoint}/user/headers/resolve/{head}/a.txt")
    assert (status, body, headers.get("X-Linked-Etag")) == (200, b"text", None)
    assert headers["ETag"] == f'"{api.get_paths_info("user/headers", "a.txt")[0].blob_id}"'
    status, headers, _ = http("GET", f"{hub_server.endpoint}/user/headers/resolve/main/nope.txt")
    assert (status, headers["X-Error-Code"], headers["X-Repo-Commit"]) == (404, "EntryNotFound", head)


def test_missing_file_repo_and_revision_map_to_the_clients_errors(hub_env):
    api = HfApi()
    api.create_repo("user/errors")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("user/errors", "missing.txt")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("user/no-such-repo", "config.json")
    with pytest.raises(RevisionNotFoundError):
        api.repo_info("user/errors", revision="no-such-branch")
    assert not api.file_exists("user/errors", "missing.txt") and api.repo_exists("user/errors")


def test_lfs_upload_with_wrong_bytes_is_rejected(hub_server, hub_env):
    HfApi().create_repo("user/lfs-check")
    auth = {"Authorization": f"Bearer {hub_server.token}", "Content-Type": "application/json"}
    oid = "0" * 64
    batch = {"operation": "upload", "transfers": ["basic"], "objects": [{"oid": oid, "size": 5}]}
    status, _, body = http("POST", f"{hub_server.endpoint}/user/lfs-check.git/info/lfs/objects/batch",
                           json.dumps(batch).encode(), auth)  # fmt: skip
    assert status == 200
    href = json.loads(body)["objects"][0]["actions"]["upload"]["href"]
    status, _, body = http("PUT", href, b"hello")  # sha256("hello") is not "000..."
    assert status == 400 and b"mismatch" in body
    commit = (
        b'{"key": "header", "value": {"summary": "s"}}\n'
        + json.dumps({"key": "lfsFile", "value": {"path": "x.bin", "algo": "sha256", "oid": oid, "size": 5}}).encode()
    )
    status, _, body = http("POST", f"{hub_server.endpoint}/api/models/user/lfs-check/commit/main", commit, auth)
    assert status == 400 and b"never uploaded" in body


def test_a_commit_that_changes_nothing_is_still_made_as_on_the_hub(hub_server, hub_env):
    # The Hub makes empty commits (huggingface_hub issue #1411); the client avoids them itself (see above).
    api = HfApi()
    api.create_repo("user/empty-commit")
    head = api.repo_info("user/empty-commit").sha
    auth = {"Authorization": f"Bearer {hub_server.token}", "Content-Type": "application/x-ndjson"}
    commit = json.dumps({"key": "header", "value": {"summary": "nothing", "parentCommit": head}}).encode()
    status, _, body = http("POST", f"{hub_server.endpoint}/api/models/user/empty-commit/commit/main", commit, auth)
    assert status == 200 and json.loads(body)["commitOid"] != head
    assert [c.title for c in api.list_repo_commits("user/empty-commit")] == ["nothing", "initial commit"]
    status, _, _ = http("POST", f"{hub_server.endpoint}/api/models/user/empty-commit/commit/main", commit, auth)
    assert status == 412  # `head` is no longer the parent


def test_delete_file_and_folder(hub_server, hub_env):
    api = HfApi()
    api.create_repo("user/deletes")
    for path in ("keep.txt", "gone.txt", "dir/a.txt", "dir/b.txt"):
        api.upload_file(path_or_fileobj=path.encode(), path_in_repo=path, repo_id="user/deletes")
    api.delete_file("gone.txt", repo_id="user/deletes")
    api.delete_folder("dir", repo_id="user/deletes")
    assert sorted(api.list_repo_files("user/deletes")) == [".gitattributes", "keep.txt"]
    assert sorted(p.name for p in hub_server.repo_dir("user/deletes").iterdir()) == [".gitattributes", "keep.txt"]
    with pytest.raises(EntryNotFoundError):
        api.delete_file("gone.txt", repo_id="user/deletes")


def test_unimplemented_route_answers_501_naming_it(hub_server, hub_env):
    status, headers, body = http("GET", f"{hub_server.endpoint}/api/spaces/user/app")
    assert status == 501 and json.loads(body)["error"] == "hub_server does not implement GET /api/spaces/user/app"
    api = HfApi()
    api.create_repo("user/branches")
    with pytest.raises(HfHubHTTPError, match="does not implement POST /api/models/user/branches/branch/dev") as err:
        api.create_branch("user/branches", branch="dev")
    assert err.value.response.status_code == 501


@pytest.mark.slow
def test_datasets_push_to_hub_then_load_dataset_in_a_fresh_process(hub_server, hub_env):
    import datasets

    local = datasets.Dataset.from_dict({"x": list(range(20)), "text": [f"row {i}" for i in range(20)]})
    local.push_to_hub("user/pushed", config_name="cfg")
    assert (hub_server.repo_dir("user/pushed", "dataset") / "cfg" / "train-00000-of-00001.parquet").is_file()
    code = "import datasets, json; print(json.dumps(datasets.load_dataset('user/pushed', 'cfg')['train'].to_dict()))"
    assert json.loads(run_python(code, hub_env).splitlines()[-1]) == local.to_dict()


@pytest.mark.slow
def test_transformers_push_to_hub_then_from_pretrained_in_a_fresh_process(hub_server, hub_env, tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)  # fmt: skip
    model = LlamaForCausalLM(config)
    model.push_to_hub("user/tiny")
    assert (hub_server.repo_dir("user/tiny") / "model.safetensors").is_file()
    torch.save(model.state_dict(), tmp_path / "expected.pt")
    code = (
        "import sys, torch\nfrom transformers import AutoModelForCausalLM\n"
        "got = AutoModelForCausalLM.from_pretrained('user/tiny').state_dict()\n"
        f"expected = torch.load({str(tmp_path / 'expected.pt')!r})\n"
        "assert got.keys() == expected.keys(), (got.keys(), expected.keys())\n"
        "print(all(torch.equal(got[k], expected[k]) for k in got))\n"
    )
    assert run_python(code, hub_env).split() == ["True"]
