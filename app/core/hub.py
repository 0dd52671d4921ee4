"""Hugging Face Hub: search, list a repo's files, download what conversion needs into the standard HF cache.

Qt-free service used by the GUI's download dialog and by ``distilldesk download``::

    search_models("r1 distill", limit=20)           -> [HubModel]   (only architectures the quantizer converts)
    list_files("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B") -> RepoListing (every file, size, sha256, needed?)
    download(repo_id, revision=None, progress=cb, cancel=event) -> DownloadResult (the snapshot folder)

* Only what conversion needs is fetched (:data:`NEEDED_FILES`, ``*.safetensors``; for a sharded checkpoint only
  the shards its index names); pickle/ONNX/GGUF files never are.
* Files land in the standard cache (``HF_HUB_CACHE`` / ``HF_HOME``, read at call time), so other tools' files
  are reused and ours serve them.  Transfers resume after a cut, a cancel or a kill (:mod:`app.core.hub_cache`),
  are checked against the Hub's sizes and sha256s, and free disk is checked before the first byte.
* Offline (``HF_HUB_OFFLINE=1`` or no network): a repo already in the cache is returned with ``offline=True`` and
  a plain message; anything else raises :class:`~app.core.errors.OfflineError`.
* Every failure is a typed :mod:`app.core.errors` error whose message says what happened and what to do.

Settings are read from the environment when a function is called, not when huggingface_hub is imported (its
``constants`` are frozen at import): ``endpoint`` (default ``HF_ENDPOINT`` or https://huggingface.co), ``token``
(default ``HF_TOKEN``, else the token ``hf auth login`` stored under ``HF_HOME``).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from . import hub_cache
from .errors import (
    DiskSpaceError,
    DownloadCancelled,
    HubError,
    IntegrityError,
    OfflineError,
    UnsupportedRepoError,
)
from .hub_cache import snapshot_complete
from .hub_errors import hub_error, is_transient

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
NEEDED_FILES = ("config.json", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
                "chat_template.jinja", "generation_config.json")
INDEX_FILE = hub_cache.INDEX_FILE
REFUSED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".gguf", ".onnx", ".onnx_data", ".h5", ".msgpack", ".pkl")
DISK_MARGIN = 64 * 1024 * 1024  # free space kept beyond the bytes to fetch
TIMEOUT = 10.0
REPORT_BYTES = 1 << 20  # progress is reported at least this many bytes apart mid-file...
REPORT_SECONDS = 0.1  # ...or this long apart


# ---- settings, read at call time ------------------------------------------------------------------------------
def endpoint_url(endpoint: str | None = None) -> str:
    return (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def is_offline() -> bool:
    v = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return v.strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_cache_dir() -> Path:
    from quantizer.checkpoint import hf_cache_dir

    return hf_cache_dir()


def resolve_token(token: str | None = None) -> str | None:
    """``token``, else HF_TOKEN (or the older HUGGING_FACE_HUB_TOKEN), else the one ``hf auth login`` stored."""
    if token:
        return token
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if os.environ.get(var, "").strip():
            return os.environ[var].strip()
    path = os.environ.get("HF_TOKEN_PATH") or os.path.join(
        os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                  os.path.expanduser("~/.cache"), "huggingface"), "token")
    try:
        return Path(path).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


# ---- what a repo holds ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RepoFile:
    path: str
    size: int
    sha256: str | None = None  # LFS files: the content's sha256 (also its cache blob name)
    blob_id: str | None = None  # git object id (the cache blob name of non-LFS files)
    needed: bool = False  # fetched by download()

    @property
    def etag(self) -> str | None:
        return self.sha256 or self.blob_id


@dataclass(frozen=True)
class RepoListing:
    repo_id: str
    revision: str
    commit: str
    files: list[RepoFile]
    gated: bool = False
    architecture: str | None = None  # config.json's architectures[0], when the Hub reports it
    offline: bool = False  # listed from the local cache (sizes from disk, no hashes)
    message: str = ""

    @property
    def needed(self) -> list[RepoFile]:
        return [f for f in self.files if f.needed]

    @property
    def needed_bytes(self) -> int:
        return sum(f.size for f in self.needed)


@dataclass(frozen=True)
class HubModel:
    """One search result."""
    repo_id: str
    architecture: str | None
    n_params: int | None
    downloads: int = 0
    likes: int = 0
    gated: bool = False
    last_modified: str = ""


def is_needed(path: str) -> bool:
    """Files conversion needs: top-level config/tokenizer/index files and ``*.safetensors`` weights."""
    if "/" in path or path.lower().endswith(REFUSED_SUFFIXES):
        return False
    return path in NEEDED_FILES or path.endswith(".safetensors")


def supported_architectures() -> tuple[str, ...]:
    from quantizer.arch import ARCHES

    return tuple(ARCHES)


@contextmanager
def _mapped(repo_id: str | None, revision: str | None, endpoint: str, token: str | None) -> Iterator[None]:
    """Turn huggingface_hub/httpx/OS errors into our typed errors (ours pass through unchanged)."""
    try:
        yield
    except (HubError, DiskSpaceError):
        raise
    except Exception as e:  # noqa: BLE001 - mapped to a typed error or re-raised unchanged
        mapped = hub_error(e, repo_id=repo_id, revision=revision, endpoint=endpoint, had_token=bool(token))
        if mapped is None:
            raise
        raise mapped from e


def _api(endpoint: str, token: str | None) -> Any:
    from huggingface_hub import HfApi

    from app import __version__

    return HfApi(endpoint=endpoint, token=token or False, library_name="distilldesk",
                 library_version=__version__)


def _refuse_offline(what: str) -> None:
    if is_offline():
        raise OfflineError(f"{what} needs the network, but offline mode is on (HF_HUB_OFFLINE=1); unset it to go "
                           f"online, or use what is already downloaded (`distilldesk models`)")


def search_models(query: str = "", *, limit: int = 20, endpoint: str | None = None,
                  token: str | None = None) -> list[HubModel]:
    """Hub models matching ``query`` whose architecture the quantizer converts, most downloaded first."""
    _refuse_offline("Searching the Hub")
    ep, tok = endpoint_url(endpoint), resolve_token(token)
    supported = set(supported_architectures())
    out: list[HubModel] = []
    with _mapped(None, None, ep, tok):
        it = _api(ep, tok).list_models(search=query or None, filter="safetensors", sort="downloads",
                                       limit=max(limit * 4, 40),
                                       expand=["config", "safetensors", "downloads", "likes", "gated",
                                               "lastModified"])
        for m in it:
            archs = (m.config or {}).get("architectures") or []
            if not archs or archs[0] not in supported:
                continue
            out.append(HubModel(m.id, archs[0], m.safetensors.total if m.safetensors else None,
                                m.downloads or 0, m.likes or 0, bool(m.gated),
                                m.last_modified.isoformat() if m.last_modified else ""))
            if len(out) >= limit:
                break
    return out


def list_files(repo_id: str, *, revision: str | None = None, endpoint: str | None = None,
               token: str | None = None, timeout: float = TIMEOUT) -> RepoListing:
    """Every file of ``repo_id`` at ``revision`` with its size and hashes, marked ``needed`` when download()
    would fetch it.  Offline (or unreachable Hub), the cached snapshot is listed instead (``offline=True``)."""
    revision = revision or "main"
    ep, tok = endpoint_url(endpoint), resolve_token(token)
    if is_offline():
        return _cached_listing(repo_id, revision, "offline mode is on (HF_HUB_OFFLINE=1)")
    try:
        with _mapped(repo_id, revision, ep, tok):
            info = _api(ep, tok).model_info(repo_id, revision=revision, files_metadata=True, timeout=timeout)
    except OfflineError as e:
        return _cached_listing(repo_id, revision, str(e))
    files = []
    for s in info.siblings or []:
        sha = s.lfs.sha256 if s.lfs else None
        size = s.size if s.size is not None else (s.lfs.size if s.lfs else 0)
        files.append(RepoFile(s.rfilename, int(size or 0), sha, s.blob_id, is_needed(s.rfilename)))
    archs = (info.config or {}).get("architectures") or [None]
    return RepoListing(repo_id, revision, info.sha, files, gated=bool(info.gated), architecture=archs[0])


def _cached_listing(repo_id: str, revision: str, why: str) -> RepoListing:
    """The cached snapshot as a listing, or OfflineError naming why the Hub could not be asked."""
    snap = cached_snapshot(repo_id, revision)
    if snap is None:
        raise OfflineError(f"{why}, and {repo_id} (revision {revision}) is not in the local cache "
                           f"({hub_cache_dir()}); connect to the internet and download it first")
    files = sorted((RepoFile(p.relative_to(snap).as_posix(), p.stat().st_size, needed=True)
                    for p in snap.rglob("*") if p.is_file()), key=lambda f: f.path)
    msg = f"Offline: {why}. Using the copy of {repo_id} already in the cache ({snap})."
    return RepoListing(repo_id, revision, snap.name, files, offline=True, message=msg)


def cached_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The cached snapshot folder of ``repo_id`` at ``revision`` if it holds a convertible checkpoint (config,
    and every shard its index names or at least one ``*.safetensors``), else None."""
    repo_dir = hub_cache.repo_folder(hub_cache_dir(), repo_id)
    commit = hub_cache.read_ref(repo_dir, revision or "main")
    if commit is None:
        return None
    snap = repo_dir / "snapshots" / commit
    return snap if snapshot_complete(snap) else None


# ---- download -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DownloadProgress:
    """Sent to ``progress`` as bytes arrive.  ``done``/``total``: bytes of all needed files present locally
    (cached and resumed bytes count as done); ``fetched``: bytes received over the network by this call."""
    file: str
    file_done: int
    file_total: int
    done: int
    total: int
    fetched: int
    phase: str = "download"  # "download" | "cached" | "done"


@dataclass(frozen=True)
class DownloadResult:
    repo_id: str
    revision: str
    commit: str
    path: Path  # the snapshot folder: pass it (or the repo id) to quantizer.convert
    files: list[str]
    bytes_total: int
    bytes_fetched: int
    offline: bool = False
    message: str = ""


@dataclass
class _Job:
    listing: RepoListing
    endpoint: str
    token: str | None
    timeout: float
    progress: Callable[[DownloadProgress], None] | None
    cancel: threading.Event | None
    verify_cached: bool
    total: int = 0
    done: int = 0
    fetched: int = 0
    file_done: dict[str, int] = field(default_factory=dict)
    _last_done: int = 0
    _last_time: float = 0.0

    @property
    def repo_dir(self) -> Path:
        return hub_cache.repo_folder(hub_cache_dir(), self.listing.repo_id)

    def report(self, f: RepoFile, phase: str = "download", *, force: bool = False) -> None:
        """Call ``progress``; mid-file at most every REPORT_BYTES or REPORT_SECONDS (a GUI can forward every
        call as a signal), always at a file's start and end and for other phases."""
        if self.progress is None:
            return
        file_done = self.file_done.get(f.path, 0)
        now = time.monotonic()
        if (phase == "download" and not force and 0 < file_done < f.size
                and self.done - self._last_done < REPORT_BYTES and now - self._last_time < REPORT_SECONDS):
            return
        self._last_done, self._last_time = self.done, now
        self.progress(DownloadProgress(f.path, file_done, f.size, self.done, self.total, self.fetched, phase))


def download(repo_id: str, *, revision: str | None = None, endpoint: str | None = None, token: str | None = None,
             progress: Callable[[DownloadProgress], None] | None = None, cancel: threading.Event | None = None,
             timeout: float = TIMEOUT, verify_cached: bool = False) -> DownloadResult:
    """Fetch the files conversion needs into the HF cache; return the snapshot folder.

    Resumes partial files, skips files already cached (by any tool), checks free disk first and every fetched
    file's size and sha256 after.  ``verify_cached=True`` also re-hashes files that were already there.
    Raises DownloadCancelled (partial files kept), DiskSpaceError, IntegrityError, HubAuthError,
    RepoNotFoundError, UnsupportedRepoError, OfflineError, HubError.
    """
    revision = revision or "main"
    listing = list_files(repo_id, revision=revision, endpoint=endpoint, token=token, timeout=timeout)
    if listing.offline:
        snap = hub_cache.repo_folder(hub_cache_dir(), repo_id) / "snapshots" / listing.commit
        return DownloadResult(repo_id, revision, listing.commit, snap, [f.path for f in listing.files],
                              sum(f.size for f in listing.files), 0, offline=True, message=listing.message)
    ep, tok = endpoint_url(endpoint), resolve_token(token)
    _check_convertible(listing)
    job = _Job(listing, ep, tok, timeout, progress, cancel, verify_cached)
    job.total = listing.needed_bytes  # until the index says which shards are needed
    with _mapped(repo_id, revision, ep, tok):
        files = _plan(job)
        job.total = sum(f.size for f in files)
        _check_disk(job, files)
        for f in files:
            _fetch(job, f)
            if f.path == "config.json" and listing.architecture is None:  # the Hub did not say: check before
                _check_architecture(listing.repo_id, _config_architecture(_snapshot_file(job, f.path)))  # weights
        hub_cache.write_ref(job.repo_dir, revision, listing.commit)
    snap = job.repo_dir / "snapshots" / listing.commit
    if files:
        job.report(files[-1], "done")
    return DownloadResult(repo_id, revision, listing.commit, snap, [f.path for f in files], job.total,
                          job.fetched)


def _check_convertible(listing: RepoListing) -> None:
    names = [f.path for f in listing.needed]
    if not any(n.endswith(".safetensors") for n in names) or "config.json" not in names:
        pickles = [f.path for f in listing.files if f.path.lower().endswith(REFUSED_SUFFIXES)]
        what = f" (it has {', '.join(pickles[:3])})" if pickles else ""
        raise UnsupportedRepoError(
            f"{listing.repo_id} has no config.json with *.safetensors weights{what}; DistillDesk converts only "
            f"safetensors checkpoints (pickle files can run code). Look for a safetensors version of the model")
    if listing.architecture is not None:
        _check_architecture(listing.repo_id, listing.architecture)


def _check_architecture(repo_id: str, arch: str | None) -> None:
    if arch not in supported_architectures():
        raise UnsupportedRepoError(
            f"{repo_id} is a {arch or 'model without an architecture in config.json'}, which DistillDesk cannot "
            f"convert; supported: {', '.join(supported_architectures())}")


def _config_architecture(path: Path) -> str | None:
    try:
        archs = json.loads(path.read_text(encoding="utf-8")).get("architectures") or [None]
    except (OSError, ValueError, AttributeError):
        return None
    return archs[0]


def _plan(job: _Job) -> list[RepoFile]:
    """Small files first (the index first of all: it says which shards are needed), then the weights."""
    needed = {f.path: f for f in job.listing.needed}
    small = [needed[n] for n in NEEDED_FILES if n in needed]
    shards = sorted(n for n in needed if n.endswith(".safetensors"))
    if INDEX_FILE in needed:
        _fetch(job, needed[INDEX_FILE])
        index = _snapshot_file(job, INDEX_FILE)
        try:
            named = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise UnsupportedRepoError(f"{job.listing.repo_id}: {INDEX_FILE} is not a valid safetensors index "
                                       f"({e}); the repo is broken, report it to its owner") from None
        missing = sorted(named - set(shards))
        if missing:
            raise UnsupportedRepoError(f"{job.listing.repo_id}: the index names shards the repo does not have "
                                       f"({', '.join(missing[:3])}); the repo is incomplete")
        shards = sorted(named)
    return small + [needed[s] for s in shards]


def _snapshot_file(job: _Job, path: str) -> Path:
    return job.repo_dir / "snapshots" / job.listing.commit / path


def _blob(job: _Job, f: RepoFile) -> Path:
    return job.repo_dir / "blobs" / (f.etag or f"nohash-{f.path.replace('/', '_')}")


def _cached_ok(job: _Job, f: RepoFile) -> bool:
    """The file is already in the cache (snapshot pointer, or a blob another revision/tool fetched) at the
    right size (and hash, with verify_cached); a wrong-size copy is removed so it is fetched again."""
    pointer, blob = _snapshot_file(job, f.path), _blob(job, f)
    for p in (pointer, blob):
        if not p.exists():
            continue
        if p.stat().st_size != f.size:
            log.warning("%s in the cache has %d bytes, the Hub says %d: fetching it again", f.path,
                        p.stat().st_size, f.size)
            p.unlink()
            continue
        if job.verify_cached:
            try:
                hub_cache.check_digest(f.path, hub_cache.hash_file(p, hub_cache.new_hasher(f.size, f.sha256),
                                                                   cancel=job.cancel),
                                       f.sha256, f.blob_id, job.endpoint)
            except IntegrityError:
                for q in (pointer, p.resolve(), blob):
                    q.unlink(missing_ok=True)
                raise
        if p == blob:
            hub_cache.link_pointer(blob, pointer)
        return True
    return False


def _check_disk(job: _Job, files: list[RepoFile]) -> None:
    need = 0
    for f in files:
        if not (_snapshot_file(job, f.path).exists() or _blob(job, f).exists()):
            part = _blob(job, f).with_name(_blob(job, f).name + ".incomplete")
            need += f.size - (part.stat().st_size if part.exists() else 0)
    where = hub_cache_dir()
    probe = where
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need and free < need + DISK_MARGIN:
        raise DiskSpaceError(
            f"downloading {job.listing.repo_id} needs {_gib(need + DISK_MARGIN)} of free disk but {where} has "
            f"{_gib(free)}; free some space, or point HF_HUB_CACHE (or HF_HOME) at a bigger disk")


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _fetch(job: _Job, f: RepoFile) -> None:
    if job.cancel is not None and job.cancel.is_set():
        raise DownloadCancelled(f"download of {job.listing.repo_id} cancelled; run it again to resume")
    if f.path in job.file_done:
        return  # the index, fetched while planning
    if _cached_ok(job, f):
        job.file_done[f.path] = f.size
        job.done += f.size
        job.report(f, "cached")
        return
    job.file_done[f.path] = 0
    job.report(f, force=True)
    blob = _blob(job, f)

    def on_bytes(n: int, fetched: bool) -> None:
        job.file_done[f.path] += n
        job.done += n
        if fetched:
            job.fetched += n
        job.report(f)

    from huggingface_hub.utils import WeakFileLock

    lock = hub_cache.lock_path(hub_cache_dir(), job.listing.repo_id, blob.name)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with WeakFileLock(str(lock)):
        if not blob.exists():  # another process may have finished it while we waited for the lock
            t = hub_cache.Transfer(name=f.path, blob=blob, size=f.size, sha256=f.sha256, blob_id=f.blob_id,
                                   endpoint=job.endpoint, on_bytes=on_bytes, cancel=job.cancel)
            t.run(lambda headers: _stream(job, f, headers), is_transient)
        else:
            on_bytes(f.size - job.file_done[f.path], False)
        hub_cache.link_pointer(blob, _snapshot_file(job, f.path))


@contextmanager
def _stream(job: _Job, f: RepoFile, extra: dict[str, str]) -> Iterator[Any]:
    import httpx
    from huggingface_hub import hf_raise_for_status
    from huggingface_hub.utils import build_hf_headers, get_session

    from app import __version__

    url = (f"{job.endpoint}/{job.listing.repo_id}/resolve/{quote(job.listing.commit, safe='')}/"
           f"{quote(f.path)}")
    headers = build_hf_headers(token=job.token or False, library_name="distilldesk",
                               library_version=__version__)
    headers.update({"Accept-Encoding": "identity", **extra})
    timeout = httpx.Timeout(job.timeout, read=max(job.timeout, 30.0))
    with get_session().stream("GET", url, headers=headers, timeout=timeout) as r:
        hf_raise_for_status(r)
        yield r

