"""A local stand-in for the Hugging Face Hub, for tests: `python -m tests.hub_server --port P --root DIR --token T`.

It speaks the part of the Hub HTTP API that the installed `huggingface_hub` (so also `datasets` and `transformers`)
uses to create repos, upload (small files inline in the commit, LFS files through the Git LFS batch API) and download.
Anything else answers 501 naming the method and route, so a gap fails loudly instead of passing silently.
Xet is not spoken: clients need HF_HUB_DISABLE_XET=1, else `huggingface_hub` uploads through Xet whenever `hf_xet` is
installed, without asking the server. Revisions are branch names or commit shas; only `main` exists.

Layout under DIR, for tests to look at:
    DIR/models/<ns>/<name>/..., DIR/datasets/<ns>/<name>/...   the files at the head of `main`, rewritten per commit
    DIR/_meta/<models|datasets>/<ns>/<name>.json   refs and every commit with its whole file table
    DIR/_blobs/<sha256>   every version of every file, content-addressed: it serves old revisions
"""

import argparse
import base64
import fnmatch
import hashlib
import hmac
import json
import os
import re
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qs

import uvicorn
import yaml
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response

USER = "user"  # the one account this server knows; every valid token belongs to it
KINDS = {"models": "model", "datasets": "dataset"}  # URL segment -> repo type
REPO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # also keeps a name from escaping DIR ("..", "a/b")
LFS_SIZE = 10 * 1024 * 1024  # the Hub stores files over 10 MiB in LFS whatever their name
# The Hub's default .gitattributes for a new repo: these patterns decide which files go to LFS.
LFS_PATTERNS = (
    "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.lfs.* *.lz4 *.mlmodel *.model *.msgpack *.npy *.npz "
    "*.onnx *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors saved_model/**/* *.tar.* *.tar "
    "*.tflite *.tgz *.wasm *.xz *.zip *.zst *tfevents* *.mp3 *.wav *.flac *.ogg *.png *.jpg *.jpeg *.webp *.gif"
).split()
DEFAULT_GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS).encode()


class HubError(Exception):
    """An HTTP error in the Hub's shape: `X-Error-Code` is what `huggingface_hub` maps to its exception classes."""

    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.commit = status, message, code, commit


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def git_oid(data: bytes) -> str:
    """The git blob id, which the Hub reports as a file's `oid` and which the client compares before re-uploading."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The small text file git keeps in place of an LFS file: its git oid is the file's `oid` on the Hub."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def lfs_info(entry: dict, sha_key: str) -> dict:
    """The `lfs` block of a file: tree listings name the sha256 `oid`, repo info's siblings name it `sha256`."""
    pointer_size = len(lfs_pointer(entry["sha256"], entry["size"]))
    return {sha_key: entry["sha256"], "size": entry["size"], "pointerSize": pointer_size}


def clean_path(path: str) -> str:
    parts = path.strip("/").split("/")
    if not path or any(p in ("", ".", "..", ".git") for p in parts):
        raise HubError(400, f"invalid path in repo: {path!r}")
    return "/".join(parts)


class Store:
    """Repos on disk: one JSON file of refs and commits per repo, file contents in a content-addressed blob store."""

    def __init__(self, root: str):
        self.root = Path(root)
        (self.root / "_blobs").mkdir(parents=True, exist_ok=True)

    def _meta_path(self, kind: str, repo: str) -> Path:
        return self.root / "_meta" / kind / f"{repo}.json"

    def load(self, kind: str, repo: str) -> dict:
        path = self._meta_path(kind, repo)
        if not path.is_file():
            raise HubError(404, f"Repository {kind}/{repo} not found", "RepoNotFound")
        return json.loads(path.read_text())

    def blob(self, sha256: str) -> Path:
        return self.root / "_blobs" / sha256

    def put_blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        if not self.blob(sha).exists():
            tmp = self.blob(sha).with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(self.blob(sha))
        return sha

    def create(self, kind: str, repo: str) -> bool:
        """Make the repo with the Hub's initial commit (a default .gitattributes); False if it already exists."""
        path = self._meta_path(kind, repo)
        if path.exists():
            return False
        meta = {"id": repo, "type": KINDS[kind], "createdAt": now(), "refs": {}, "commits": {}}
        files = {".gitattributes": self.regular_entry(DEFAULT_GITATTRIBUTES)}
        self.commit(kind, repo, meta, "main", files, "initial commit", "")
        return True

    def regular_entry(self, data: bytes) -> dict:
        return {"size": len(data), "sha256": self.put_blob(data), "oid": git_oid(data), "lfs": False}

    def lfs_entry(self, sha256: str, size: int) -> dict:
        return {"size": size, "sha256": sha256, "oid": git_oid(lfs_pointer(sha256, size)), "lfs": True}

    def resolve(self, meta: dict, rev: str) -> str:
        """A branch name, a full commit sha or an unambiguous prefix of one (7+ chars) -> the commit sha."""
        if rev in meta["refs"]:
            return meta["refs"][rev]
        found = [sha for sha in meta["commits"] if len(rev) >= 7 and sha.startswith(rev)]
        if len(found) != 1:
            raise HubError(404, f"Revision {rev} not found in {meta['id']}", "RevisionNotFound")
        return found[0]

    def commit(self, kind: str, repo: str, meta: dict, branch: str, files: dict, title: str, message: str) -> str:
        """Record a commit on `branch` (even one that changes nothing, as the Hub does) and refresh the checkout."""
        parent = meta["refs"].get(branch)
        stamp = now()
        sha = hashlib.sha1(json.dumps([parent, files, title, message, stamp], sort_keys=True).encode()).hexdigest()
        meta["commits"][sha] = {
            "id": sha, "parents": [parent] if parent else [], "title": title, "message": message, "date": stamp,
            "files": files,
        }  # fmt: skip
        meta["refs"][branch] = sha
        path = self._meta_path(kind, repo)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(meta, indent=1))
        if branch == "main":
            self.checkout(self.root / kind / repo, files)
        return sha

    def checkout(self, folder: Path, files: dict) -> None:
        shutil.rmtree(folder, ignore_errors=True)  # rewritten whole: simplest, and test repos are small
        for path, entry in files.items():
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.blob(entry["sha256"]), folder / path)


def folders_of(files: dict) -> set[str]:
    return {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}


def is_lfs(files: dict, store: Store, path: str, size: int) -> bool:
    """Large files, and files matched by a `filter=lfs` line of the repo's .gitattributes, go through LFS."""
    if size > LFS_SIZE:
        return True
    attrs = files.get(".gitattributes")
    text = store.blob(attrs["sha256"]).read_text() if attrs else ""
    for line in text.splitlines():
        pattern, *attributes = line.split() or [""]
        name = path if "/" in pattern else path.rsplit("/", 1)[-1]  # as in git: a pattern without "/" matches names
        if "filter=lfs" in attributes and fnmatch.fnmatch(name, pattern):
            return True
    return False


def under(files: dict, path: str) -> dict:
    """What a commit holds at `path`: the file's entry, or the entries of the files inside that folder."""
    return files[path] if path in files else {p: e for p, e in files.items() if p.startswith(path + "/")}


def last_commit(meta: dict, sha: str, path: str) -> dict:
    """The commit that last changed `path` (a file or a folder), following first parents back from `sha`."""
    current = under(meta["commits"][sha]["files"], path)
    while meta["commits"][sha]["parents"]:
        parent = meta["commits"][sha]["parents"][0]
        if under(meta["commits"][parent]["files"], path) != current:
            break
        sha = parent
    commit = meta["commits"][sha]
    return {"id": sha, "title": commit["title"], "date": commit["date"]}


def tree_entry(meta: dict, sha: str, path: str, expand: bool) -> dict:
    """One file or folder as the tree and paths-info routes describe it (`RepoFile` / `RepoFolder` in the client)."""
    files = meta["commits"][sha]["files"]
    if path in files:
        e = files[path]
        out = {"type": "file", "oid": e["oid"], "size": e["size"], "path": path}
        if e["lfs"]:
            out["lfs"] = lfs_info(e, "oid")
    else:
        listing = json.dumps(under(files, path), sort_keys=True).encode()
        out = {"type": "directory", "oid": hashlib.sha1(listing).hexdigest(), "size": 0, "path": path}
    if expand:
        out["lastCommit"] = last_commit(meta, sha, path)
    return out


def repo_info(meta: dict, sha: str) -> dict:
    files = meta["commits"][sha]["files"]
    siblings = [
        {"rfilename": path, "size": e["size"], "blobId": e["oid"], "lfs": lfs_info(e, "sha256") if e["lfs"] else None}
        for path, e in sorted(files.items())
    ]
    repo_id, commit = meta["id"], meta["commits"][sha]
    return {
        "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24], "id": repo_id, "author": repo_id.split("/")[0],
        "sha": sha, "lastModified": commit["date"], "createdAt": meta["createdAt"], "private": False,
        "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
        "usedStorage": sum(e["size"] for e in files.values()),
    }  # fmt: skip


def apply_operations(store: Store, files: dict, operations: list[dict]) -> dict:
    """Apply the commit's NDJSON operations to a copy of the file table and return it."""
    files = dict(files)
    for op in operations:
        key, value = op.get("key"), op.get("value", {})
        path = clean_path(value.get("path", ""))
        if key == "file":
            if value.get("encoding", "base64") != "base64":
                raise HubError(400, f"unsupported encoding {value.get('encoding')!r} for {path}")
            data = base64.b64decode(value["content"])
            if len(data) > LFS_SIZE:
                raise HubError(400, f"{path} is over 10 MiB: upload it through LFS, not inline in the commit")
            files[path] = store.regular_entry(data)
        elif key == "lfsFile":
            blob = store.blob(value.get("oid", ""))
            if value.get("algo", "sha256") != "sha256" or not blob.is_file():
                raise HubError(400, f"LFS object {value.get('oid')} for {path} was never uploaded")
            size = blob.stat().st_size
            if value.get("size") not in (None, size):
                raise HubError(400, f"LFS object for {path} has size {size}, not {value['size']}")
            files[path] = store.lfs_entry(value["oid"], size)
        elif key == "deletedFile":
            if files.pop(path, None) is None:
                raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
        elif key == "deletedFolder":
            inside = [p for p in files if p.startswith(path + "/")]
            if not inside:
                raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
            for p in inside:
                del files[p]
        else:
            raise HubError(400, f"unknown commit operation {key!r}")
    return files


def unimplemented(request: Request) -> HubError:
    message = f"hub_server does not implement {request.method} {request.url.path}"
    print(message, file=sys.stderr, flush=True)  # also in the server's log, for when a client swallows the error
    return HubError(501, message)


def repo_url(request: Request, kind: str, repo: str) -> str:
    return f"{str(request.base_url).rstrip('/')}/{'' if kind == 'models' else 'datasets/'}{repo}"


def create_app(root: str, token: str) -> FastAPI:
    store = Store(root)
    app = FastAPI(title="local hub", openapi_url=None, docs_url=None, redoc_url=None)
    # Every handler is `async def`, so requests run one at a time on the event loop: no locks around the JSON files.

    def check_auth(request: Request, required: bool) -> None:
        """A wrong token is always 401; anonymous is fine for reads of these (public) repos, not for writes."""
        header = request.headers.get("authorization")
        if header is not None and not hmac.compare_digest(header, f"Bearer {token}"):
            raise HubError(401, "Invalid credentials in Authorization header")
        if header is None and required:
            raise HubError(401, "Invalid username or password.")

    def open_repo(request: Request, kind: str, ns: str, name: str, write: bool) -> dict:
        """Check the token, then load the repo. A kind of repo this server lacks (spaces, ...) is a 501, not a 404."""
        if kind not in KINDS:
            raise unimplemented(request)
        check_auth(request, required=write)
        return store.load(kind, f"{ns}/{name}")

    def upload_sig(oid: str) -> str:
        # LFS uploads are PUT with no auth header (to a presigned URL on the real Hub), so the URL carries a signature.
        return hmac.new(token.encode(), oid.encode(), "sha256").hexdigest()

    @app.exception_handler(HubError)
    async def hub_error(request: Request, exc: HubError) -> JSONResponse:
        message = exc.message.encode("ascii", "replace").decode()  # headers must be latin-1
        headers = {"X-Error-Message": message, "X-Error-Code": exc.code, "X-Repo-Commit": exc.commit}
        headers = {key: value for key, value in headers.items() if value}
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)

    @app.get("/api/whoami-v2")
    async def whoami(request: Request):
        check_auth(request, required=True)
        auth = {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}}
        return {"type": "user", "id": "0" * 24, "name": USER, "fullname": "Test User", "email": "user@example.com",
                "emailVerified": True, "isPro": False, "orgs": [], "auth": auth}  # fmt: skip

    @app.post("/api/repos/create")
    async def create_repo(request: Request):
        check_auth(request, required=True)
        body = await request.json()
        kind = {"model": "models", "dataset": "datasets"}.get(body.get("type") or "model")
        if kind is None:
            raise HubError(501, f"hub_server only creates model and dataset repos, not {body.get('type')!r}")
        ns, name = body.get("organization") or USER, body.get("name", "")
        if not (REPO_NAME.fullmatch(ns) and REPO_NAME.fullmatch(name)) or ".." in name:
            raise HubError(400, f"invalid repo name {ns}/{name}")
        repo, url = f"{ns}/{name}", repo_url(request, kind, f"{ns}/{name}")
        if not store.create(kind, repo):  # 409 with the url: `create_repo(exist_ok=True)` reads it from the body
            error = f"You already created this {KINDS[kind]} repo"
            return JSONResponse({"error": error, "url": url}, status_code=409)
        return {"url": url, "name": repo, "id": repo}

    @app.post("/api/validate-yaml")
    async def validate_yaml(request: Request):
        # The client checks a README.md's metadata block here before uploading anything.
        content = (await request.json()).get("content", "")
        try:
            block = content.split("---", 2)[1] if content.startswith("---") else ""
            yaml.safe_load(block)
        except (yaml.YAMLError, IndexError) as err:
            return JSONResponse({"errors": [{"message": str(err)}], "warnings": []}, status_code=400)
        return {"errors": [], "warnings": []}

    @app.get("/api/{kind}/{ns}/{name}")
    @app.get("/api/{kind}/{ns}/{name}/revision/{rev}")
    async def info(kind: str, ns: str, name: str, request: Request, rev: str = "main"):
        meta = open_repo(request, kind, ns, name, write=False)
        return repo_info(meta, store.resolve(meta, rev))

    @app.get("/api/{kind}/{ns}/{name}/refs")
    async def refs(kind: str, ns: str, name: str, request: Request):
        meta = open_repo(request, kind, ns, name, write=False)
        branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": sha} for b, sha in meta["refs"].items()]
        return {"branches": branches, "tags": [], "converts": [], "pullRequests": []}

    @app.get("/api/{kind}/{ns}/{name}/commits/{rev}")
    async def commits(kind: str, ns: str, name: str, rev: str, request: Request):
        meta = open_repo(request, kind, ns, name, write=False)
        sha, out = store.resolve(meta, rev), []
        while sha:
            c = meta["commits"][sha]
            out.append({"id": sha, "authors": [{"user": USER}], **{k: c[k] for k in ("title", "message", "date")}})
            sha = c["parents"][0] if c["parents"] else None
        return out

    @app.get("/api/{kind}/{ns}/{name}/tree/{rev}")
    @app.get("/api/{kind}/{ns}/{name}/tree/{rev}/{path:path}")
    async def tree(kind: str, ns: str, name: str, rev: str, request: Request, path: str = ""):
        meta = open_repo(request, kind, ns, name, write=False)
        sha = store.resolve(meta, rev)
        files, path = meta["commits"][sha]["files"], path.strip("/")
        recursive = request.query_params.get("recursive", "").lower() in ("1", "true")
        expand = request.query_params.get("expand", "").lower() in ("1", "true")
        prefix = path + "/" if path else ""
        children = [p for p in sorted(set(files) | folders_of(files)) if p.startswith(prefix)]
        if path and not children:
            raise HubError(404, f"{path} does not exist at {rev}", "EntryNotFound", sha)
        if not recursive:
            children = [p for p in children if "/" not in p[len(prefix) :]]
        return [tree_entry(meta, sha, p, expand) for p in children]

    @app.post("/api/{kind}/{ns}/{name}/paths-info/{rev}")
    async def paths_info(kind: str, ns: str, name: str, rev: str, request: Request):
        # A form (`paths=a&paths=b&expand=False`), parsed here to need no python-multipart. Unknown paths are skipped.
        meta = open_repo(request, kind, ns, name, write=False)
        sha = store.resolve(meta, rev)
        form = parse_qs((await request.body()).decode())
        known = set(meta["commits"][sha]["files"]) | folders_of(meta["commits"][sha]["files"])
        expand = form.get("expand", ["false"])[0].lower() in ("1", "true")
        return [tree_entry(meta, sha, p.strip("/"), expand) for p in form.get("paths", []) if p.strip("/") in known]

    @app.post("/api/{kind}/{ns}/{name}/preupload/{rev}")
    async def preupload(kind: str, ns: str, name: str, rev: str, request: Request):
        meta = open_repo(request, kind, ns, name, write=True)
        sha = store.resolve(meta, rev)
        files, out = meta["commits"][sha]["files"], []
        for f in (await request.json())["files"]:
            lfs = is_lfs(files, store, f["path"], f["size"])
            old = files.get(f["path"])  # its oid lets the client drop unchanged files from the commit
            oid = None if old is None else old["sha256"] if old["lfs"] else old["oid"]
            out.append({"path": f["path"], "uploadMode": ["regular", "lfs"][lfs], "shouldIgnore": False, "oid": oid})
        return {"files": out, "commitOid": sha}

    async def lfs_batch(kind: str, ns: str, name: str, request: Request):
        """Git LFS batch API: an upload action for each object the store lacks, none for those it has."""
        open_repo(request, kind, ns, name, write=True)
        body = await request.json()
        if body.get("operation") != "upload" or "basic" not in body.get("transfers", ["basic"]):
            raise HubError(501, "hub_server's LFS batch API only does basic uploads")
        objects = []
        for obj in body["objects"]:
            item = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if not store.blob(obj["oid"]).is_file():
                href = f"{str(request.base_url).rstrip('/')}/_lfs/{obj['oid']}"
                item["actions"] = {"upload": {"href": f"{href}?size={obj['size']}&sig={upload_sig(obj['oid'])}"}}
            objects.append(item)
        return JSONResponse({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                            media_type="application/vnd.git-lfs+json")  # fmt: skip

    @app.post("/datasets/{ns}/{name}.git/info/lfs/objects/batch")
    async def lfs_batch_dataset(ns: str, name: str, request: Request):
        return await lfs_batch("datasets", ns, name, request)

    @app.post("/{ns}/{name}.git/info/lfs/objects/batch")
    async def lfs_batch_model(ns: str, name: str, request: Request):
        return await lfs_batch("models", ns, name, request)

    @app.put("/_lfs/{oid}")
    async def lfs_upload(oid: str, size: int, sig: str, request: Request):
        """Receive one LFS object; keep it only if its sha256 and size are the ones announced to the batch API."""
        if not hmac.compare_digest(sig, upload_sig(oid)):
            raise HubError(403, "bad upload signature")
        digest, got = hashlib.sha256(), 0
        with tempfile.NamedTemporaryFile(dir=store.root / "_blobs", delete=False) as tmp:
            async for chunk in request.stream():
                digest.update(chunk)
                got += len(chunk)
                tmp.write(chunk)
        if digest.hexdigest() != oid or got != size:
            os.unlink(tmp.name)
            raise HubError(400, f"LFS object mismatch: announced {oid} ({size} B), got {digest.hexdigest()} ({got} B)")
        os.replace(tmp.name, store.blob(oid))
        return Response(status_code=200, headers={"ETag": f'"{oid}"'})

    @app.post("/api/{kind}/{ns}/{name}/commit/{rev}")
    async def commit(kind: str, ns: str, name: str, rev: str, request: Request):
        meta = open_repo(request, kind, ns, name, write=True)
        if request.query_params.get("create_pr"):
            raise HubError(501, "hub_server does not implement pull requests (create_pr)")
        if rev not in meta["refs"]:
            raise HubError(404, f"Branch {rev} not found in {ns}/{name}", "RevisionNotFound")
        lines = [json.loads(line) for line in (await request.body()).decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "a commit starts with a header line")
        header, head = lines[0]["value"], meta["refs"][rev]
        if header.get("parentCommit") not in (None, head):
            raise HubError(412, f"parent commit {header['parentCommit']} is not the head of {rev} ({head})")
        files = apply_operations(store, meta["commits"][head]["files"], lines[1:])
        title, message = header.get("summary", ""), header.get("description", "")
        sha = store.commit(kind, f"{ns}/{name}", meta, rev, files, title, message)
        url = repo_url(request, kind, f"{ns}/{name}/commit/{sha}")
        return {"success": True, "commitOid": sha, "commitUrl": url, "pullRequestUrl": None}

    def resolve(kind: str, ns: str, name: str, rev: str, path: str, request: Request) -> FileResponse:
        """Serve a file with the headers `hf_hub_download` checks; HEAD gets the headers only; Range is honoured."""
        meta = open_repo(request, kind, ns, name, write=False)
        sha = store.resolve(meta, rev)
        entry = meta["commits"][sha]["files"].get(path)
        if entry is None:
            raise HubError(404, f"Entry {path} not found at {rev}", "EntryNotFound", sha)
        headers = {"X-Repo-Commit": sha, "ETag": f'"{entry["oid"]}"', "Accept-Ranges": "bytes"}
        if entry["lfs"]:
            headers.update({"ETag": f'"{entry["sha256"]}"', "X-Linked-Etag": f'"{entry["sha256"]}"',
                            "X-Linked-Size": str(entry["size"])})  # fmt: skip
        return FileResponse(store.blob(entry["sha256"]), headers=headers, media_type="application/octet-stream")

    @app.api_route("/datasets/{ns}/{name}/resolve/{rev}/{path:path}", methods=["GET", "HEAD"])
    async def resolve_dataset(ns: str, name: str, rev: str, path: str, request: Request):
        return resolve("datasets", ns, name, rev, path, request)

    @app.api_route("/{ns}/{name}/resolve/{rev}/{path:path}", methods=["GET", "HEAD"])
    async def resolve_model(ns: str, name: str, rev: str, path: str, request: Request):
        return resolve("models", ns, name, rev, path, request)

    @app.api_route("/{route:path}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
    async def not_implemented(route: str, request: Request):
        raise unimplemented(request)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", required=True, help="folder that holds the repos")
    parser.add_argument("--token", required=True, help="the one access token accepted (user name: 'user')")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--log-level", default="warning", help="'info' logs every request")
    args = parser.parse_args()
    uvicorn.run(create_app(args.root, args.token), host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
