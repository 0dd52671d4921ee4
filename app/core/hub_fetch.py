"""Fetching a Hub repo's files into the Hugging Face cache: one job's bookkeeping and progress, the checks of
what is already cached, free disk, and the HTTP stream.  :mod:`app.core.hub` drives it (``list_files`` fetches a
sharded checkpoint's index with it, ``download`` everything conversion needs); the resumable, verified transfer
of one file is :class:`app.core.hub_cache.Transfer`.
"""
from __future__ import annotations

import logging
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
from .errors import DiskSpaceError, DownloadCancelled, IntegrityError
from .hub_errors import is_transient
from .units import format_size

log = logging.getLogger(__name__)

DISK_MARGIN = 64 * 1024 * 1024  # free space kept beyond the bytes to fetch
REPORT_BYTES = 1 << 20  # progress is reported at least this many bytes apart mid-file...
REPORT_SECONDS = 0.1  # ...or this long apart


def hub_cache_dir() -> Path:
    from quantizer.checkpoint import hf_cache_dir

    return hf_cache_dir()


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


@dataclass
class FetchJob:
    """One download's state: where files go (``repo_id`` at ``commit``), how to ask, and the byte counts."""
    repo_id: str
    commit: str
    endpoint: str
    token: str | None
    timeout: float
    progress: Callable[[DownloadProgress], None] | None = None
    cancel: threading.Event | None = None
    verify_cached: bool = False
    total: int = 0
    done: int = 0
    fetched: int = 0
    file_done: dict[str, int] = field(default_factory=dict)
    _last_done: int = 0
    _last_time: float = 0.0

    @property
    def repo_dir(self) -> Path:
        return hub_cache.repo_folder(hub_cache_dir(), self.repo_id)

    @property
    def snapshot(self) -> Path:
        return self.repo_dir / "snapshots" / self.commit

    def snapshot_file(self, path: str) -> Path:
        return self.snapshot / path

    def blob(self, f: RepoFile) -> Path:
        return self.repo_dir / "blobs" / (f.etag or f"nohash-{f.path.replace('/', '_')}")

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


def _cached_ok(job: FetchJob, f: RepoFile) -> bool:
    """The file is already in the cache (snapshot pointer, or a blob another revision/tool fetched) at the
    right size (and hash, with verify_cached); a wrong-size copy is removed so it is fetched again."""
    pointer, blob = job.snapshot_file(f.path), job.blob(f)
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


def check_disk(job: FetchJob, files: list[RepoFile]) -> None:
    """DiskSpaceError unless the cache's disk holds what is still to fetch of ``files`` (plus a margin)."""
    need = 0
    for f in files:
        if not (job.snapshot_file(f.path).exists() or job.blob(f).exists()):
            part = job.blob(f).with_name(job.blob(f).name + ".incomplete")
            need += f.size - (part.stat().st_size if part.exists() else 0)
    where = hub_cache_dir()
    probe = where
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need and free < need + DISK_MARGIN:
        raise DiskSpaceError(
            f"downloading {job.repo_id} needs {format_size(need + DISK_MARGIN)} of free disk but {where} has "
            f"{format_size(free)}; free some space, or point HF_HUB_CACHE (or HF_HOME) at a bigger disk")


def fetch(job: FetchJob, f: RepoFile) -> None:
    """Put ``f`` into the cache (skipped when already there, resumed when partial), counting its bytes."""
    if job.cancel is not None and job.cancel.is_set():
        raise DownloadCancelled(f"download of {job.repo_id} cancelled; run it again to resume")
    if f.path in job.file_done:
        return  # fetched earlier in this job (the index, while planning)
    if _cached_ok(job, f):
        job.file_done[f.path] = f.size
        job.done += f.size
        job.report(f, "cached")
        return
    job.file_done[f.path] = 0
    job.report(f, force=True)
    blob = job.blob(f)

    def on_bytes(n: int, fetched: bool) -> None:
        job.file_done[f.path] += n
        job.done += n
        if fetched:
            job.fetched += n
        job.report(f)

    from huggingface_hub.utils import WeakFileLock

    lock = hub_cache.lock_path(hub_cache_dir(), job.repo_id, blob.name)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with WeakFileLock(str(lock)):
        if not blob.exists():  # another process may have finished it while we waited for the lock
            t = hub_cache.Transfer(name=f.path, blob=blob, size=f.size, sha256=f.sha256, blob_id=f.blob_id,
                                   endpoint=job.endpoint, on_bytes=on_bytes, cancel=job.cancel)
            t.run(lambda headers: _stream(job, f, headers), is_transient)
        else:
            on_bytes(f.size - job.file_done[f.path], False)
        hub_cache.link_pointer(blob, job.snapshot_file(f.path))


@contextmanager
def _stream(job: FetchJob, f: RepoFile, extra: dict[str, str]) -> Iterator[Any]:
    import httpx
    from huggingface_hub import hf_raise_for_status
    from huggingface_hub.utils import build_hf_headers, get_session

    from app import __version__

    url = f"{job.endpoint}/{job.repo_id}/resolve/{quote(job.commit, safe='')}/{quote(f.path)}"
    headers = build_hf_headers(token=job.token or False, library_name="distilldesk",
                               library_version=__version__)
    headers.update({"Accept-Encoding": "identity", **extra})
    timeout = httpx.Timeout(job.timeout, read=max(job.timeout, 30.0))
    with get_session().stream("GET", url, headers=headers, timeout=timeout) as r:
        hf_raise_for_status(r)
        yield r
