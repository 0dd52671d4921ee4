"""The Hugging Face cache on disk, and one resumable, verified file transfer into it.

Layout (the one ``huggingface_hub`` writes, so files fetched by other tools are reused and ours are theirs)::

    <HF_HUB_CACHE>/models--<org>--<name>/blobs/<etag>                 file contents, named by sha256 (LFS) or git oid
                                        /blobs/<etag>.incomplete      a partial transfer, resumed with HTTP Range
                                        /snapshots/<commit>/<path>    relative symlink -> ../../blobs/<etag>
                                        /refs/<revision>              the commit a branch or tag pointed to
    <HF_HUB_CACHE>/.locks/models--<org>--<name>/<etag>.lock          same lock huggingface_hub takes

Why our own transfer instead of ``hf_hub_download``: huggingface_hub 1.x downloads into a *process-unique*
temporary file and deletes it on any failure, so an interrupted or killed download starts over from byte 0.
Here the partial file has a stable name (``<etag>.incomplete``, the name huggingface_hub 0.x used), is written
through as it arrives, and the next run asks only for the missing range.  The bytes are hashed as they are
written, so the sha256 (LFS files) or git blob id (small files) the Hub published is checked at no extra cost.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .errors import DownloadCancelled, IntegrityError

log = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
_BUFFER = 1 << 20  # write buffer: at most this much of a killed transfer is lost (and fetched again)
MAX_RETRIES = 4  # transport errors in a row without new bytes before giving up (the partial file is kept)


def repo_folder(cache: Path, repo_id: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


def lock_path(cache: Path, repo_id: str, etag: str) -> Path:
    return cache / ".locks" / repo_folder(cache, repo_id).name / f"{etag}.lock"


def read_ref(repo_dir: Path, revision: str) -> str | None:
    """The commit ``revision`` resolves to in the cache: itself if it is a cached commit, else ``refs/<rev>``."""
    if len(revision) == 40 and (repo_dir / "snapshots" / revision).is_dir():
        return revision
    ref = repo_dir / "refs" / revision
    try:
        return ref.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def snapshot_complete(snap: Path) -> bool:
    """The snapshot holds a convertible checkpoint: config.json and every shard its index names (or, without
    an index, at least one *.safetensors)."""
    if not (snap / "config.json").is_file():
        return False
    index = snap / INDEX_FILE
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False
        return bool(shards) and all((snap / s).is_file() for s in shards)
    return any(p.is_file() for p in snap.glob("*.safetensors"))


def write_ref(repo_dir: Path, revision: str, commit: str) -> None:
    if revision == commit:
        return
    ref = repo_dir / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    if not ref.exists() or ref.read_text(encoding="utf-8").strip() != commit:
        ref.write_text(commit, encoding="utf-8")


def link_pointer(blob: Path, pointer: Path) -> None:
    """``snapshots/<commit>/<path>`` -> the blob, as a relative symlink (moved in place where symlinks fail,
    as huggingface_hub does on Windows without developer mode)."""
    pointer.parent.mkdir(parents=True, exist_ok=True)
    if pointer.is_symlink() or pointer.exists():
        pointer.unlink()
    try:
        os.symlink(os.path.relpath(blob, pointer.parent), pointer)
    except OSError:
        os.replace(blob, pointer)


def new_hasher(size: int, sha256: str | None) -> hashlib._Hash:
    """sha256 for LFS files (compared with lfs.sha256), git's blob sha1 for the others (compared with blob id)."""
    if sha256:
        return hashlib.sha256()
    h = hashlib.sha1()  # noqa: S324 - git's object id, not a security hash
    h.update(b"blob %d\0" % size)
    return h


def hash_file(path: Path, hasher: hashlib._Hash, on_bytes: Callable[[int], None] | None = None,
              cancel: threading.Event | None = None) -> hashlib._Hash:
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            if cancel is not None and cancel.is_set():
                raise DownloadCancelled("cancelled while checking a downloaded file; nothing was lost")
            hasher.update(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
    return hasher


def check_digest(name: str, hasher: hashlib._Hash, sha256: str | None, blob_id: str | None,
                 endpoint: str) -> None:
    want = sha256 or blob_id
    if want and hasher.hexdigest() != want:
        kind = "sha256" if sha256 else "git blob id"
        raise IntegrityError(
            f"{name}: the downloaded bytes have {kind} {hasher.hexdigest()[:16]}…, but {endpoint} says "
            f"{want[:16]}…; the file was corrupted on the way (or by a proxy). The bad copy was removed: run the "
            f"download again")


class Transfer:
    """One file: ``url`` -> ``blob``, resuming ``blob.incomplete``, hashing on the fly, then verifying.

    ``open_stream(headers)`` returns a context manager yielding an ``httpx.Response`` (already status-checked);
    ``is_transient(exc)`` says which exceptions are worth another ranged request.
    """

    def __init__(self, *, name: str, blob: Path, size: int, sha256: str | None, blob_id: str | None,
                 endpoint: str, on_bytes: Callable[[int, bool], None], cancel: threading.Event | None) -> None:
        self.name, self.blob, self.size = name, blob, size
        self.sha256, self.blob_id, self.endpoint = sha256, blob_id, endpoint
        self.part = blob.with_name(blob.name + ".incomplete")
        self.on_bytes, self.cancel = on_bytes, cancel
        self.fetched = 0  # bytes received over the network by this transfer
        self.have = 0  # bytes in the partial file
        self.hasher = new_hasher(size, sha256)  # of those bytes

    def partial_bytes(self) -> int:
        try:
            n = self.part.stat().st_size
        except OSError:
            return 0
        return n if n <= self.size else 0

    def run(self, open_stream: Callable, is_transient: Callable[[BaseException], bool]) -> None:
        self.blob.parent.mkdir(parents=True, exist_ok=True)
        self.have = self.partial_bytes()
        if self.have == 0 and self.part.exists():
            self.part.unlink()  # longer than the file: not a prefix of it
        self.hasher = new_hasher(self.size, self.sha256)
        if self.have:
            log.info("resuming %s at byte %d of %d", self.name, self.have, self.size)
            hash_file(self.part, self.hasher, None, self.cancel)
            self.on_bytes(self.have, False)
        failures = 0
        while self.have < self.size:
            self._check_cancel()
            before = self.have
            try:
                self._one_request(open_stream)
            except Exception as e:  # noqa: BLE001 - transient ones are retried, the rest re-raised as they are
                if not is_transient(e):
                    raise
                failures = 0 if self.have > before else failures + 1
                if failures > MAX_RETRIES:
                    raise
                log.warning("transfer of %s broke at byte %d (%s); resuming", self.name, self.have, e)
                time.sleep(min(0.5 * failures, 4.0))
        self._finish()

    def _check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise DownloadCancelled(f"download cancelled during {self.name}; the partial file is kept and the next "
                                    f"download resumes where this one stopped")

    def _one_request(self, open_stream: Callable) -> None:
        """One GET from ``self.have`` on; ``have``/``hasher`` always describe what is in the partial file."""
        with open_stream({"Range": f"bytes={self.have}-"} if self.have else {}) as r:
            if self.have and r.status_code != 206:
                log.warning("server ignored the Range request for %s: starting it over", self.name)
                self.on_bytes(-self.have, False)
                self.have, self.hasher = 0, new_hasher(self.size, self.sha256)
                self.part.unlink(missing_ok=True)
            with open(self.part, "ab", buffering=_BUFFER) as out:
                for chunk in r.iter_bytes():
                    self._check_cancel()
                    if self.have + len(chunk) > self.size:
                        out.close()
                        self.part.unlink(missing_ok=True)
                        raise IntegrityError(f"{self.name}: the server sent more than the {self.size} bytes the "
                                             f"Hub's metadata announces; the partial file was removed: run the "
                                             f"download again")
                    out.write(chunk)
                    self.hasher.update(chunk)
                    self.have += len(chunk)
                    self.fetched += len(chunk)
                    self.on_bytes(len(chunk), True)

    def _finish(self) -> None:
        if self.part.stat().st_size != self.size:
            got = self.part.stat().st_size
            self.part.unlink(missing_ok=True)
            raise IntegrityError(f"{self.name}: got {got} bytes, the Hub says {self.size}; the partial file was "
                                 f"removed: run the download again")
        try:
            check_digest(self.name, self.hasher, self.sha256, self.blob_id, self.endpoint)
        except IntegrityError:
            self.part.unlink(missing_ok=True)
            raise
        os.replace(self.part, self.blob)
