"""Hugging Face Hub: search, list a repo's files, download what conversion needs into the standard HF cache.

Qt-free service used by the GUI's download dialog and by ``distilldesk download``::

    search_models("r1 distill", limit=20)           -> [HubModel]   (only architectures the quantizer converts)
    list_files("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B") -> RepoListing (every file, size, sha256, needed?)
    download(repo_id, revision=None, progress=cb, cancel=event) -> DownloadResult (the snapshot folder)

* Only what conversion needs is fetched (:data:`NEEDED_FILES`, ``*.safetensors``; for a sharded checkpoint only
  the shards its index names), and ``list_files`` marks exactly those ``needed`` (it reads the index too);
  pickle/ONNX/GGUF files never are.  The transfers themselves live in :mod:`app.core.hub_fetch`.
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

import dataclasses
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import hub_cache
from .errors import DiskSpaceError, HubError, OfflineError, UnsupportedRepoError
from .hub_cache import snapshot_complete
from .hub_errors import hub_error
from .hub_fetch import DownloadProgress, FetchJob, RepoFile, check_disk, fetch, hub_cache_dir

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
# README.md: the model card (license, base models, name), which the quantizer writes into the GGUF's metadata
NEEDED_FILES = ("config.json", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
                "chat_template.jinja", "generation_config.json", "README.md")
INDEX_FILE = hub_cache.INDEX_FILE
REFUSED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".gguf", ".onnx", ".onnx_data", ".h5", ".msgpack", ".pkl")
TIMEOUT = 10.0
__all__ = ["DownloadProgress", "DownloadResult", "HubModel", "RepoFile", "RepoListing", "cached_snapshot",
           "download", "endpoint_url", "hub_cache_dir", "is_needed", "is_offline", "list_files", "resolve_token",
           "search_models"]


# ---- settings, read at call time ------------------------------------------------------------------------------
def endpoint_url(endpoint: str | None = None) -> str:
    return (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def is_offline() -> bool:
    v = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return v.strip().upper() in ("1", "ON", "YES", "TRUE")


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
    """Files conversion needs, by name: top-level config/tokenizer/index files and ``*.safetensors`` weights
    (of a sharded checkpoint, only the shards its index names: see :func:`list_files`)."""
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
    would fetch it: for a sharded checkpoint that means reading its index (fetched into the cache, where the
    download uses it), so ``needed_bytes`` is what the download will fetch.  Offline (or unreachable Hub), the
    cached snapshot is listed instead (``offline=True``)."""
    listing = _listing(repo_id, revision or "main", endpoint, token, timeout)
    if listing.offline:
        return listing
    ep, tok = endpoint_url(endpoint), resolve_token(token)
    with _mapped(repo_id, listing.revision, ep, tok):
        return _with_index(listing, FetchJob(repo_id, listing.commit, ep, tok, timeout))


def _listing(repo_id: str, revision: str, endpoint: str | None, token: str | None,
             timeout: float) -> RepoListing:
    """The Hub's file list (``needed`` by name only), or the cached snapshot when offline."""
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


def _with_index(listing: RepoListing, job: FetchJob) -> RepoListing:
    """``listing`` with only the shards its safetensors index names marked needed (the index is fetched through
    ``job`` into the cache).  Unchanged when there is no index (a single-file checkpoint)."""
    by_path = {f.path: f for f in listing.files}
    if INDEX_FILE not in by_path:
        return listing
    fetch(job, by_path[INDEX_FILE])
    try:
        named = set(json.loads(job.snapshot_file(INDEX_FILE).read_text(encoding="utf-8"))["weight_map"].values())
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UnsupportedRepoError(f"{listing.repo_id}: {INDEX_FILE} is not a valid safetensors index "
                                   f"({e}); the repo is broken, report it to its owner") from None
    missing = sorted(n for n in named if not (n in by_path and is_needed(n)))
    if missing:
        raise UnsupportedRepoError(f"{listing.repo_id}: the index names shards the repo does not have "
                                   f"({', '.join(missing[:3])}); the repo is incomplete")
    files = [dataclasses.replace(f, needed=f.needed and (not f.path.endswith(".safetensors") or f.path in named))
             for f in listing.files]
    return dataclasses.replace(listing, files=files)


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


def download(repo_id: str, *, revision: str | None = None, endpoint: str | None = None, token: str | None = None,
             progress: Callable[[DownloadProgress], None] | None = None, cancel: threading.Event | None = None,
             timeout: float = TIMEOUT, verify_cached: bool = False) -> DownloadResult:
    """Fetch the files conversion needs (what :func:`list_files` marks ``needed``) into the HF cache; return the
    snapshot folder.

    Resumes partial files, skips files already cached (by any tool), checks free disk first and every fetched
    file's size and sha256 after.  ``verify_cached=True`` also re-hashes files that were already there.
    Raises DownloadCancelled (partial files kept), DiskSpaceError, IntegrityError, HubAuthError,
    RepoNotFoundError, UnsupportedRepoError, OfflineError, HubError.
    """
    revision = revision or "main"
    listing = _listing(repo_id, revision, endpoint, token, timeout)
    if listing.offline:
        snap = hub_cache.repo_folder(hub_cache_dir(), repo_id) / "snapshots" / listing.commit
        return DownloadResult(repo_id, revision, listing.commit, snap, [f.path for f in listing.files],
                              sum(f.size for f in listing.files), 0, offline=True, message=listing.message)
    ep, tok = endpoint_url(endpoint), resolve_token(token)
    _check_convertible(listing)  # before the first byte (the index included)
    job = FetchJob(repo_id, listing.commit, ep, tok, timeout, progress, cancel, verify_cached)
    job.total = listing.needed_bytes  # until the index says which shards are needed
    with _mapped(repo_id, revision, ep, tok):
        listing = _with_index(listing, job)  # the same rule list_files applies
        files = _plan(listing)
        job.total = sum(f.size for f in files)
        check_disk(job, files)
        for f in files:
            fetch(job, f)
            if f.path == "config.json" and listing.architecture is None:  # the Hub did not say: check before
                _check_architecture(listing.repo_id, _config_architecture(job.snapshot_file(f.path)))  # weights
        hub_cache.write_ref(job.repo_dir, revision, listing.commit)
    if files:
        job.report(files[-1], "done")
    return DownloadResult(repo_id, revision, listing.commit, job.snapshot, [f.path for f in files], job.total,
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


def _plan(listing: RepoListing) -> list[RepoFile]:
    """The needed files in fetch order: small files first (the index first of all), then the weights."""
    needed = {f.path: f for f in listing.needed}
    small = [needed[n] for n in NEEDED_FILES if n in needed]
    return small + [needed[n] for n in sorted(needed) if n.endswith(".safetensors")]
