"""Stored reference distributions: the reference model runs once, every candidate is scored against the store.

Two kinds of rows, one store:

* **Eval (llama.cpp's format).**  :class:`BaseFile` reads and :class:`BaseWriter` writes exactly the file
  ``llama-perplexity --kl-divergence-base FILE`` writes (``tools/perplexity/perplexity.cpp``)::

      "_logits_"  uint32 n_ctx  int32 n_vocab  int32 n_chunk  int32 tokens[n_chunk * n_ctx]
      then per chunk, per scored row (n_ctx - 1 - n_ctx/2 of them), nv = 2*((n_vocab+1)/2) + 4 uint16:
      float scale, float min_log_prob, uint16 q[n_vocab] (+ padding)  with
      log p(v) = scale * q[v] + min_log_prob,  q = round((logit - min_logit) / scale),
      min_logit clamped to max_logit - 16, scale = (max_logit - min_logit) / 65535

  :func:`encode_rows` repeats llama.cpp's float32 arithmetic step by step, so a file we write is byte-identical
  to llama-perplexity's on the same logits, and one it wrote can be read here (``distilldesk eval --base``).
* **Compare (full precision).**  One answer's rows are small, so they are kept as raw float32 logits.

:class:`RefStore` keeps entries under ``cache_dir()/references/<key>/`` where the key hashes the reference file's
identity (name, size, modification time), the tokens (or the text and chunking), and the settings that change
logits (flash attention, KV cache type, GPU offload).  An entry is written to a ``*.partial`` folder and renamed
only when complete (cancel or a crash leave nothing that could be read as an entry), its total size is bounded
(oldest used first out), and ``get`` refreshes an entry's use time.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .errors import CompareError

log = logging.getLogger(__name__)

MAGIC = b"_logits_"
HEADER = struct.Struct("<8sIii")
DEFAULT_MAX_BYTES = 4_000_000_000


class BaseFileError(CompareError):
    """A reference base file (llama-perplexity's ``--kl-divergence-base`` format) is unreadable or does not fit."""


def row_width(n_vocab: int) -> int:
    """uint16 values per stored row: two floats (4 uint16) and the levels, padded to an even count."""
    return 2 * ((n_vocab + 1) // 2) + 4


def _nearest_int(x: np.ndarray) -> np.ndarray:
    """llama.cpp's ``nearest_int``: add 1.5 * 2^23 in float32, read the mantissa bits (round half to even)."""
    v = (x.astype(np.float32) + np.float32(12582912.0)).view(np.int32)
    return (v & 0x007FFFFF) - 0x00400000


def encode_rows(logits: np.ndarray) -> np.ndarray:
    """Rows of raw float32 logits ``(n, n_vocab)`` -> llama-perplexity's uint16 rows ``(n, row_width)``, with the
    same float32 operations in the same order as ``log_softmax(..., uint16_t * log_prob, ...)``."""
    z = np.ascontiguousarray(logits, dtype=np.float32)
    n, n_vocab = z.shape
    out = np.zeros((n, row_width(n_vocab)), dtype=np.uint16)
    mx = z.max(axis=1)
    mn = np.maximum(z.min(axis=1), mx - np.float32(16))
    for i in range(n):
        # sum in double of expf(logit - max): expf taken as float64 exp rounded to float32
        e = np.exp((z[i] - mx[i]).astype(np.float64)).astype(np.float32)
        lse = np.float32(np.log(e.astype(np.float64).sum()))
        min_log_prob = np.float32(np.float32(mn[i] - mx[i]) - lse)
        scale = np.float32(np.float32(mx[i] - mn[i]) / np.float32(65535.0))
        out[i, :4] = np.array([scale, min_log_prob], dtype=np.float32).view(np.uint16)
        if scale:
            inv = np.float32(np.float32(1.0) / scale)
            q = _nearest_int(inv * (z[i] - mn[i]))
            out[i, 4:4 + n_vocab] = np.where(z[i] > mn[i], q, 0).astype(np.uint16)
    return out


def decode_rows(rows: np.ndarray, n_vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """Stored uint16 rows -> (log p_ref as float32 ``(n, n_vocab)`` computed as llama.cpp does, the mask of the
    terms llama.cpp counts in the KL sum: ``log p > -16``)."""
    d = np.ascontiguousarray(rows[:, :4]).view(np.float32)
    scale, min_log_prob = d[:, :1], d[:, 1:2]
    lp = scale * rows[:, 4:4 + n_vocab].astype(np.float32) + min_log_prob
    return lp, lp > np.float32(-16.0)


# ---- llama-perplexity's base file -----------------------------------------------------------------------------
@dataclass(frozen=True)
class BaseInfo:
    """The header of a base file."""

    n_ctx: int
    n_vocab: int
    n_chunk: int

    @property
    def first(self) -> int:
        return self.n_ctx // 2

    @property
    def rows_per_chunk(self) -> int:
        return self.n_ctx - 1 - self.n_ctx // 2

    @property
    def data_offset(self) -> int:
        return HEADER.size + 4 * self.n_ctx * self.n_chunk

    def size(self) -> int:
        return self.data_offset + 2 * row_width(self.n_vocab) * self.rows_per_chunk * self.n_chunk


class BaseFile:
    """A base file opened for reading: its header, its tokens, and its rows read a block at a time (never the
    whole file in memory).  Refuses files that are not in the format or are shorter or longer than it says."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        what = f"{self.path.name} is not a llama-perplexity --kl-divergence-base file"
        try:
            self._fh: BinaryIO = open(self.path, "rb")  # noqa: SIM115 - kept open for the reads; closed by close()
        except FileNotFoundError:
            raise BaseFileError(f"no base file {self.path}: give the file llama-perplexity --kl-divergence-base "
                                "(or distilldesk eval --save-base) wrote") from None
        try:
            head = self._fh.read(HEADER.size)
            if len(head) < HEADER.size or head[:8] != MAGIC:
                raise BaseFileError(f"{what} (it does not start with \"_logits_\"): give the file "
                                    "llama-perplexity --kl-divergence-base wrote")
            _, n_ctx, n_vocab, n_chunk = HEADER.unpack(head)
            if n_ctx < 4 or n_vocab < 2 or n_chunk < 1:
                raise BaseFileError(f"{what}: its header says n_ctx={n_ctx}, n_vocab={n_vocab}, "
                                    f"n_chunk={n_chunk}; make the base file again")
            self.info = BaseInfo(n_ctx, n_vocab, n_chunk)
            actual = os.fstat(self._fh.fileno()).st_size
            if actual != self.info.size():
                state = "truncated" if actual < self.info.size() else "longer than its header says"
                raise BaseFileError(f"{self.path.name} is {state} ({actual} bytes, its header needs "
                                    f"{self.info.size()}): make the base file again")
            self.tokens = np.fromfile(self._fh, dtype="<i4", count=n_ctx * n_chunk)
            if self.tokens.size and (self.tokens.min() < 0 or self.tokens.max() >= n_vocab):
                raise BaseFileError(f"{what}: it holds token ids outside its vocabulary of {n_vocab}; make the "
                                    "base file again")
        except BaseException:
            self._fh.close()
            raise

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> BaseFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def chunk_tokens(self, c: int) -> list[int]:
        n = self.info.n_ctx
        return [int(t) for t in self.tokens[c * n:(c + 1) * n]]

    def rows(self, chunk: int, start: int, count: int) -> np.ndarray:
        """``count`` stored rows of ``chunk`` from scored row ``start`` (0 = position n_ctx/2) as uint16."""
        info, nv = self.info, row_width(self.info.n_vocab)
        off = info.data_offset + 2 * nv * (chunk * info.rows_per_chunk + start)
        self._fh.seek(off)
        return np.fromfile(self._fh, dtype="<u2", count=count * nv).reshape(count, nv)


class BaseWriter:
    """Writes a base file chunk by chunk (header first, as llama-perplexity does)."""

    def __init__(self, fh: BinaryIO, n_ctx: int, n_vocab: int, tokens: np.ndarray) -> None:
        self._fh = fh
        n_chunk = len(tokens) // n_ctx
        fh.write(HEADER.pack(MAGIC, n_ctx, n_vocab, n_chunk))
        fh.write(np.asarray(tokens[:n_chunk * n_ctx], dtype="<i4").tobytes())

    def write_rows(self, logits: np.ndarray) -> None:
        """Encode and append rows, 32 at a time (no copy of a whole batch: the reference's phase is the one
        whose memory peak counts)."""
        for a in range(0, len(logits), 32):
            block = encode_rows(logits[a:a + 32])
            self._fh.write(memoryview(np.asarray(block, dtype="<u2")))  # a copy only on a big-endian machine


# ---- the store ------------------------------------------------------------------------------------------------
def file_identity(path: str | Path) -> dict[str, Any]:
    """A model file's identity without hashing gigabytes: name, size, modification time."""
    p = Path(path)
    st = p.stat()
    return {"name": p.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def make_key(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Entry:
    """A complete stored reference: its folder and its ``meta.json``."""

    folder: Path
    meta: dict[str, Any]

    def file(self, name: str) -> Path:
        return self.folder / name


class RefStore:
    """Stored references under ``root`` (default ``cache_dir()/references``), at most ``max_bytes`` in all."""

    def __init__(self, root: str | Path | None = None, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if root is None:
            from .paths import cache_dir

            root = cache_dir() / "references"
        self.root = Path(root)
        self.max_bytes = int(max_bytes)

    def get(self, key: str) -> Entry | None:
        folder = self.root / key
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning("ignoring a damaged stored reference %s: %s", folder, e)
            return None
        with contextlib.suppress(OSError):
            os.utime(folder / "meta.json")          # used now: evicted last
        return Entry(folder, meta)

    @contextlib.contextmanager
    def writing(self, key: str, meta: dict[str, Any]) -> Iterator[Path]:
        """A fresh folder to write an entry's files into; on success ``meta`` (which the caller may still
        complete) is written and the folder replaces any older entry of ``key``.  On any exception (cancel
        included) the folder is removed: no half-written entry is ever found by :meth:`get`."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{key}.", suffix=".partial", dir=self.root))
        try:
            yield tmp
            meta = {**meta, "key": key, "created": time.time()}
            (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
            final = self.root / key
            if final.exists():
                shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.evict(keep=key)

    def entries(self) -> list[tuple[float, int, Path]]:
        """(last use, bytes, folder) of every complete entry."""
        out = []
        if not self.root.is_dir():
            return out
        for d in self.root.iterdir():
            meta = d / "meta.json"
            if d.is_dir() and meta.exists():
                size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
                out.append((meta.stat().st_mtime, size, d))
        return out

    def evict(self, keep: str | None = None) -> list[Path]:
        """Remove the least recently used entries until the store holds at most ``max_bytes`` (the entry
        ``keep``, just written, stays even if it alone is larger)."""
        entries = sorted(self.entries())
        total = sum(size for _, size, _ in entries)
        gone = []
        for _, size, folder in entries:
            if total <= self.max_bytes:
                break
            if folder.name == keep:
                continue
            shutil.rmtree(folder, ignore_errors=True)
            total -= size
            gone.append(folder)
            log.info("reference store: removed %s (%d bytes) to stay under %d", folder.name, size, self.max_bytes)
        return gone

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
