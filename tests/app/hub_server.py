"""A local Hugging Face Hub for tests: the endpoints huggingface_hub 1.x (and app.core.hub) really call.

    GET  /api/models?search=&filter=&sort=&limit=&expand=      search (list of model infos)
    GET  /api/models/{org}/{name}[/revision/{rev}][?blobs=true] model info: sha, siblings (+ size, blobId, lfs)
    HEAD /{org}/{name}/resolve/{rev}/{path}                     ETag, X-Linked-Etag/-Size (LFS), X-Repo-Commit
    GET  /{org}/{name}/resolve/{rev}/{path}                     the bytes; Range -> 206 + Content-Range

Errors carry huggingface_hub's ``X-Error-Code`` (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo) so the
client raises its typed errors.  No X-Xet-* headers are sent, so clients use plain HTTP.

Test knobs (thread-safe): ``cut(path, after=N, then_status=None)`` closes the connection after N body bytes of
the next GET of ``path`` (then answers ``then_status`` to later GETs of it until ``heal()``); ``stall(path,
after=N)`` sends N bytes and then hangs until the server stops; ``corrupt.add(path)`` flips a byte in what is
served (headers unchanged); ``api_delay`` delays API answers; ``ignore_range`` answers ranged GETs with the
whole file (200), as some proxies do.  Every request is logged in ``requests`` with the
body bytes actually written, so tests measure bytes on the wire.
"""
from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".onnx", ".pt", ".pth")
TOKEN = "hf_test_token_for_gated_repos"


@dataclass
class ServedFile:
    name: str
    source: bytes | Path
    lfs: bool
    size: int = 0
    sha256: str = ""
    oid: str = ""  # git blob sha1

    def __post_init__(self) -> None:
        h, g = hashlib.sha256(), hashlib.sha1()  # noqa: S324 - git object id
        self.size = len(self.source) if isinstance(self.source, bytes) else self.source.stat().st_size
        g.update(b"blob %d\0" % self.size)
        for chunk in self.chunks(0, self.size):
            h.update(chunk)
            g.update(chunk)
        self.sha256, self.oid = h.hexdigest(), g.hexdigest()

    def chunks(self, start: int, end: int, size: int = 1 << 16):
        if isinstance(self.source, bytes):
            for i in range(start, end, size):
                yield self.source[i:min(end, i + size)]
            return
        with open(self.source, "rb") as f:
            f.seek(start)
            pos = start
            while pos < end:
                b = f.read(min(size, end - pos))
                if not b:
                    return
                pos += len(b)
                yield b

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.oid


@dataclass
class ServedRepo:
    repo_id: str
    commits: dict[str, dict[str, ServedFile]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    gated: bool = False
    private: bool = False
    downloads: int = 0
    config: dict = field(default_factory=dict)

    def resolve(self, rev: str) -> str | None:
        return rev if rev in self.commits else self.refs.get(rev)


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    status: int
    body_bytes: int = 0
    done: bool = True  # False while a body is still being written


class HubServer:
    def __init__(self) -> None:
        self.repos: dict[str, ServedRepo] = {}
        self.requests: list[Request] = []
        self.corrupt: set[str] = set()
        self.api_delay = 0.0
        self.ignore_range = False  # answer 200 with the whole file, like some proxies do
        self.hide_config = False  # model info without the "config" field (the Hub omits it for some repos)
        self._cuts: dict[str, tuple[int, int | None]] = {}
        self._failing: dict[str, int] = {}
        self._stalls: dict[str, int] = {}
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- setup ------------------------------------------------------------------------------------------------
    def add_repo(self, repo_id: str, files: dict[str, bytes | str | Path], *, revision: str = "main",
                 gated: bool = False, private: bool = False, downloads: int = 0) -> str:
        """Publish ``files`` as a new commit of ``repo_id`` that ``revision`` points to; returns the commit."""
        served = {n: ServedFile(n, s.encode() if isinstance(s, str) else s, n.endswith(LFS_SUFFIXES))
                  for n, s in files.items()}
        commit = hashlib.sha1(repr(sorted((n, f.oid) for n, f in served.items())).encode() +  # noqa: S324
                              repo_id.encode() + revision.encode()).hexdigest()
        repo = self.repos.setdefault(repo_id, ServedRepo(repo_id))
        repo.commits[commit] = served
        repo.refs[revision] = commit
        repo.gated, repo.private, repo.downloads = gated, private, downloads
        if "config.json" in served:
            repo.config = json.loads(_read(served["config.json"]))
        return commit

    def cut(self, path: str, *, after: int, then_status: int | None = None) -> None:
        with self._lock:
            self._cuts[path] = (after, then_status)

    def heal(self) -> None:
        with self._lock:
            self._cuts.clear()
            self._failing.clear()
            self._stalls.clear()

    def stall(self, path: str, *, after: int) -> None:
        with self._lock:
            self._stalls[path] = after

    def body_bytes(self, path: str | None = None, method: str = "GET") -> int:
        """Body bytes written for GETs of files whose path ends with ``path`` (all files when None)."""
        with self._lock:
            return sum(r.body_bytes for r in self.requests if r.method == method and "/resolve/" in r.path
                       and (path is None or r.path.endswith("/" + path)))

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until no body is being written: a client that hung up mid-body leaves the handler writing into
        the socket buffer until it notices, and those bytes must be counted before a test takes a reading."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if all(r.done for r in self.requests):
                    return
            time.sleep(0.01)
        raise TimeoutError("the test Hub server is still writing a response body")

    def file_gets(self, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests
                    if r.method == "GET" and "/resolve/" in r.path and r.path.endswith("/" + path)]

    # ---- lifecycle --------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> HubServer:
        handler = type("Handler", (_Handler,), {"hub": self})
        self._httpd = _QuietServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(5)
            self._httpd = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:  # noqa: ANN001
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)  # a client that gave up is not a server bug


def _read(f: ServedFile) -> bytes:
    return b"".join(f.chunks(0, f.size))


_API_MODEL = re.compile(r"^/api/models/([^/]+/[^/]+?)(?:/revision/([^/]+))?/?$")
_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 5  # idle keep-alive connections close by themselves
    hub: HubServer

    def log_message(self, *args: object) -> None:  # quiet
        pass

    # ---- plumbing ---------------------------------------------------------------------------------------------
    def _log(self, status: int, body: int = 0) -> Request:
        r = Request(self.command, urlsplit(self.path).path, self.headers.get("Range"), status, body)
        with self.hub._lock:
            self.hub.requests.append(r)
        return r

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              ctype: str = "application/json") -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self._log(status, len(body) if self.command != "HEAD" else 0)

    def _error(self, status: int, code: str, message: str, commit: str | None = None) -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": message}
        if commit:
            headers["X-Repo-Commit"] = commit
        self._send(status, json.dumps({"error": message}).encode(), headers)

    def _token_ok(self) -> bool:
        return self.headers.get("authorization", "") == f"Bearer {TOKEN}"

    def _has_token(self) -> bool:
        return bool(self.headers.get("authorization"))

    # ---- routes -----------------------------------------------------------------------------------------------
    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        path = unquote(url.path)
        if path.startswith("/api/"):
            if self.hub.api_delay:
                time.sleep(self.hub.api_delay)
            if path.rstrip("/") == "/api/models":
                return self._search(parse_qs(url.query))
            m = _API_MODEL.match(path)
            if m:
                return self._model_info(m.group(1), m.group(2) or "main", parse_qs(url.query))
            return self._error(404, "NotFound", "no such API route")
        m = _RESOLVE.match(path)
        if m:
            return self._resolve(m.group(1), m.group(2), m.group(3))
        return self._error(404, "NotFound", "no such route")

    def _repo(self, repo_id: str) -> ServedRepo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None or (repo.private and not self._token_ok()):
            self._error(401 if not self._has_token() else 404, "RepoNotFound",
                        "Repository not found")
            return None
        return repo

    def _info(self, repo: ServedRepo, commit: str, blobs: bool) -> dict:
        files = repo.commits[commit]
        siblings = []
        for f in files.values():
            s: dict = {"rfilename": f.name}
            if blobs:
                s.update(size=f.size, blobId=f.oid)
                if f.lfs:
                    s["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": 134}
            siblings.append(s)
        cfg = repo.config
        n_params = sum(f.size for f in files.values() if f.name.endswith(".safetensors")) // 2
        return {"_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id,  # noqa: S324
                "modelId": repo.repo_id, "author": repo.repo_id.split("/")[0], "sha": commit,
                "lastModified": "2025-01-20T09:00:00.000Z", "createdAt": "2025-01-20T09:00:00.000Z",
                "private": repo.private, "disabled": False, "gated": "manual" if repo.gated else False,
                "downloads": repo.downloads, "likes": repo.downloads // 10, "library_name": "transformers",
                "tags": ["transformers", "safetensors", cfg.get("model_type", ""), "text-generation"],
                "pipeline_tag": "text-generation",
                "config": None if self.hub.hide_config else {"architectures": cfg.get("architectures"),
                                                             "model_type": cfg.get("model_type")},
                "safetensors": {"parameters": {"BF16": n_params}, "total": n_params},
                "siblings": siblings}

    def _model_info(self, repo_id: str, rev: str, q: dict) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        commit = repo.resolve(unquote(rev))
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        info = self._info(repo, commit, q.get("blobs", ["false"])[0].lower() == "true")
        self._send(200, json.dumps(info).encode())

    def _search(self, q: dict) -> None:
        text = (q.get("search") or [""])[0].lower()
        filters = q.get("filter") or []
        out = []
        for repo in self.hub.repos.values():
            if repo.private or text not in repo.repo_id.lower():
                continue
            commit = repo.refs.get("main") or next(iter(repo.commits))
            info = self._info(repo, commit, False)
            if all(f in info["tags"] for f in filters):
                out.append(info)
        out.sort(key=lambda i: -i["downloads"])
        limit = int((q.get("limit") or ["1000"])[0])
        self._send(200, json.dumps(out[:limit]).encode())

    def _resolve(self, repo_id: str, rev: str, name: str) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        if repo.gated and not self._token_ok():
            return self._error(401 if not self._has_token() else 403, "GatedRepo",
                               "Access to this model is restricted: accept the conditions on its page")
        commit = repo.resolve(rev)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        f = repo.commits[commit].get(name)
        if f is None:
            return self._error(404, "EntryNotFound", f"{name} does not exist on {rev}", commit)
        headers = {"ETag": f'"{f.oid}"', "X-Repo-Commit": commit, "Accept-Ranges": "bytes"}
        if f.lfs:
            headers.update({"X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(f.size)})
        if self.command == "HEAD":
            return self._head(f, headers)
        with self.hub._lock:
            failing = self.hub._failing.get(name)
        if failing:
            return self._error(failing, "ServerError", "temporarily unavailable")
        self._body(f, headers)

    def _head(self, f: ServedFile, headers: dict[str, str]) -> None:
        self.send_response(200)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(f.size))
        self.end_headers()
        self._log(200)

    def _body(self, f: ServedFile, headers: dict[str, str]) -> None:
        start, end, status = 0, f.size, 200
        rng = None if self.hub.ignore_range else self.headers.get("Range")
        if rng:
            m = re.match(r"bytes=(\d+)-(\d*)$", rng.strip())
            if not m or int(m.group(1)) >= f.size:
                return self._error(416, "RangeNotSatisfiable", "bad range")
            start, end, status = int(m.group(1)), (int(m.group(2)) + 1 if m.group(2) else f.size), 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{f.size}"
        with self.hub._lock:
            cut = self.hub._cuts.pop(f.name, None)
            stall = self.hub._stalls.pop(f.name, None)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        req = self._log(status)
        req.done = False
        try:
            self._stream(f, req, start, end, cut, stall)
        finally:
            req.done = True

    def _stream(self, f: ServedFile, req: Request, start: int, end: int, cut, stall) -> None:
        limit = cut[0] if cut else stall if stall is not None else None
        pos = start
        for chunk in f.chunks(start, end):
            if f.name in self.hub.corrupt and pos <= f.size // 2 < pos + len(chunk):
                i = f.size // 2 - pos
                chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1:]
            if limit is not None and req.body_bytes + len(chunk) >= limit:
                chunk = chunk[:limit - req.body_bytes]
                self._write(req, chunk)
                return self._interrupt(f, cut)
            self._write(req, chunk)
            pos += len(chunk)

    def _write(self, req: Request, chunk: bytes) -> None:
        self.wfile.write(chunk)
        with self.hub._lock:
            req.body_bytes += len(chunk)

    def _interrupt(self, f: ServedFile, cut: tuple[int, int | None] | None) -> None:
        self.wfile.flush()
        if cut is None:  # stall: hold the connection open, silent, until the server stops
            self.hub._release.wait(60)
        elif cut[1] is not None:
            with self.hub._lock:
                self.hub._failing[f.name] = cut[1]
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


# ---- pytest fixtures (import them into a test module: ``from .hub_server import hub, small_repo``) -----------
SMALL_REPO = "distilldesk-test/SmolLM2-mini"
SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
CHECKPOINT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
                    "chat_template.jinja")
MODEL_CARD = "---\nlicense: apache-2.0\nbase_model: HuggingFaceTB/SmolLM2-135M\n---\n# mini\n"
JUNK = {"pytorch_model.bin": b"\x80\x02pickle" * 500, "model.onnx": b"onnx" * 1000, "model-Q4_0.gguf": b"GGUF" * 999,
        ".gitattributes": "*.safetensors filter=lfs\n", "original/params.json": "{}"}


def _small_files(checkpoint: Path) -> dict[str, bytes]:
    """The SmolLM2 config/tokenizer files, two small synthetic safetensors shards (~1.5 and ~4 MiB) with their
    index, a safetensors file the index does not name, and files conversion must never fetch."""
    import numpy as np
    from safetensors.numpy import save

    files: dict[str, bytes] = {n: (checkpoint / n).read_bytes() for n in CHECKPOINT_FILES}
    files["README.md"] = MODEL_CARD.encode()
    rng = np.random.default_rng(5)
    a = {"model.embed_tokens.weight": rng.standard_normal((768, 1024)).astype(np.float16)}
    b = {"model.norm.weight": rng.standard_normal(576).astype(np.float16),
         "lm_head.weight": rng.standard_normal((2048, 1024)).astype(np.float16)}
    files[SHARDS[0]], files[SHARDS[1]] = save(a), save(b)
    weight_map = {**{k: SHARDS[0] for k in a}, **{k: SHARDS[1] for k in b}}
    files["model.safetensors.index.json"] = json.dumps({"metadata": {"total_size": 0},
                                                        "weight_map": weight_map}).encode()
    files["consolidated.safetensors"] = save({"x": np.zeros(4096, np.float16)})
    files.update({k: v.encode() if isinstance(v, str) else v for k, v in JUNK.items()})
    return files


def _fixtures():
    import pytest

    @pytest.fixture(scope="session")
    def small_files(smollm2_checkpoint) -> dict[str, bytes]:
        return _small_files(Path(smollm2_checkpoint))

    @pytest.fixture
    def hub(monkeypatch, tmp_path):
        """A running local Hub; the app and huggingface_hub itself point at it (stopped at teardown)."""
        import os

        import huggingface_hub.constants as c

        server = HubServer().start()
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("DISTILLDESK_CACHE_DIR", str(tmp_path / "distilldesk-cache"))  # no demo checkpoint
        home = os.environ["HF_HOME"]
        for name, value in [("ENDPOINT", server.url), ("HF_HUB_DISABLE_TELEMETRY", True),
                            ("HF_HUB_OFFLINE", False), ("HF_HOME", home),
                            ("HF_HUB_CACHE", os.path.join(home, "hub")),
                            ("HF_TOKEN_PATH", os.path.join(home, "token")),
                            ("HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}")]:
            monkeypatch.setattr(c, name, value)
        try:
            yield server
        finally:
            server.stop()

    @pytest.fixture
    def small_repo(hub, small_files) -> HubServer:
        hub.add_repo(SMALL_REPO, small_files, downloads=100)
        return hub

    return small_files, hub, small_repo


small_files, hub, small_repo = _fixtures()
