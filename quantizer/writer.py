"""Streaming GGUF writer on ``gguf.GGUFWriter``: header, metadata and tensor infos first, then the tensor data,
into a temporary file next to the output that is renamed only once complete.

Every tensor's place in the file is known once the header is written, so data may arrive in any order and from
several threads at once (:meth:`StreamingGGUFWriter.write_rows` writes a block of rows at its offset with
``pwrite``); :meth:`~StreamingGGUFWriter.commit` checks that every byte was written.  The big metadata arrays
(vocabulary, merges, token types) are packed in bulk, byte for byte what ``GGUFWriter`` packs one value at a time.

Any exception (cancel, Ctrl-C, a failed write) inside the ``with`` block removes the temporary file, so an
interrupted conversion never leaves a partial GGUF behind.
"""
from __future__ import annotations

import logging
import os
import re
import struct
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType

from .errors import OutputError, OutputNotWritableError

log = logging.getLogger(__name__)

_PACK_LEN = struct.Struct("<Q").pack
_MAX_WRITE = 1 << 30  # Linux writes at most ~2 GiB per call; stay well below


def _pwrite(fd: int, data: memoryview, offset: int) -> int:
    """``os.pwrite``, or seek-and-write under a lock where there is none (Windows)."""
    if hasattr(os, "pwrite"):
        return os.pwrite(fd, data, offset)
    with _SEEK_LOCK:
        os.lseek(fd, offset, os.SEEK_SET)
        return os.write(fd, data)


_SEEK_LOCK = threading.Lock()


def _start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Linux: start writing these bytes to disk now (``sync_file_range(SYNC_FILE_RANGE_WRITE)``, which neither
    waits nor drops them from the cache), so that the fsync before the rename has almost nothing left to do
    (it took ~10% of a small model's conversion).  Elsewhere nothing."""
    global _SYNC_FILE_RANGE
    if _SYNC_FILE_RANGE is None:
        _SYNC_FILE_RANGE = _find_sync_file_range()
    if _SYNC_FILE_RANGE:
        _SYNC_FILE_RANGE(fd, offset, nbytes, 2)  # SYNC_FILE_RANGE_WRITE; a failure only means no head start


def _find_sync_file_range() -> Any:
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE: Any = None


class _BulkGGUFWriter(gguf.GGUFWriter):
    """``GGUFWriter`` whose arrays of plain ``str`` or ``int`` values are packed in one go (numpy for the ints,
    one ``bytes.join`` for the strings) instead of one ``struct.pack`` per value; everything else, and any array
    the fast path does not cover, goes to ``GGUFWriter._pack_val`` unchanged."""

    def _pack_val(self, val: Any, vtype: GGUFValueType, add_vtype: bool,
                  sub_type: GGUFValueType | None = None) -> bytes:
        if (vtype == GGUFValueType.ARRAY and isinstance(val, (list, tuple)) and len(val) > 1
                and self.endianess == gguf.GGUFEndian.LITTLE):
            packed = _pack_array_items(val, sub_type)
            if packed is not None:
                ltype, body = packed
                head = struct.pack("<I", vtype) if add_vtype else b""
                return head + struct.pack("<IQ", ltype, len(val)) + body
        return super()._pack_val(val, vtype, add_vtype, sub_type)


_INT_FORMATS = {GGUFValueType.INT32: "<i4", GGUFValueType.UINT32: "<u4", GGUFValueType.INT64: "<i8",
                GGUFValueType.UINT64: "<u8", GGUFValueType.INT16: "<i2", GGUFValueType.UINT16: "<u2",
                GGUFValueType.INT8: "<i1", GGUFValueType.UINT8: "<u1"}


def _pack_array_items(val: Sequence[Any], sub_type: GGUFValueType | None) -> tuple[GGUFValueType, bytes] | None:
    """(element type, packed elements) of a homogeneous array of ``str`` or ``int``, else None."""
    kinds = set(map(type, val))
    if kinds == {str} and sub_type in (None, GGUFValueType.STRING):
        joined = "\0".join(val)  # one encode and one split instead of one encode per string
        if joined.count("\0") == len(val) - 1:
            enc = joined.encode("utf-8").split(b"\0")
        else:  # a string holds a NUL itself
            enc = [s.encode("utf-8") for s in val]
        parts: list[bytes] = [b""] * (2 * len(enc))
        parts[0::2] = map(_PACK_LEN, map(len, enc))
        parts[1::2] = enc
        return GGUFValueType.STRING, b"".join(parts)
    if kinds == {int}:  # get_type(int) is INT32 (bool is its own type, so it never gets here)
        ltype = GGUFValueType.INT32 if sub_type is None else sub_type
        fmt = _INT_FORMATS.get(ltype)
        if fmt is None:
            return None
        info = np.iinfo(np.dtype(fmt))
        lo, hi = min(val), max(val)
        if lo < info.min or hi > info.max:
            return None  # let struct raise its own error
        return ltype, np.array(val, dtype=np.int64).astype(fmt).tobytes()
    return None


class StreamingGGUFWriter:
    """``with StreamingGGUFWriter(out, arch) as w: w.add_kv(...); w.add_tensor_info(...); [w.create();] w.begin();
    w.write_tensor(...) or w.write_rows(...) ...; w.commit()``."""

    def __init__(self, out: Path, arch: str) -> None:
        self.out = Path(out)
        self._gw = _BulkGGUFWriter(path=None, arch=arch)
        self._tmp: Path | None = None
        self._fd = -1
        self._expected: list[tuple[str, int]] = []  # (name, data bytes) in declaration order
        self._offsets: list[int] = []  # each tensor's data offset from the start of the data section
        self._done: list[int] = []  # data bytes written per tensor
        self._lock = threading.Lock()
        self._data_start = 0
        self._written = 0  # tensors written through write_tensor
        self.data_bytes = 0  # tensor data including alignment padding

    # ---- declaring -------------------------------------------------------------------------------------------
    def add_kv(self, key: str, value: Any, vtype: GGUFValueType) -> None:
        if vtype == GGUFValueType.ARRAY:
            self._gw.add_array(key, value)
        elif key == gguf.Keys.General.ARCHITECTURE:
            return  # written by GGUFWriter itself, first
        else:
            self._gw.add_key_value(key, value, vtype)

    def add_tensor_info(self, name: str, shape: tuple[int, ...], qtype: GGMLQuantizationType, nbytes: int) -> None:
        """Declare a tensor: ``shape`` in numpy order (logical elements, not bytes), ``nbytes`` of its data."""
        self._gw.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)
        self._expected.append((name, nbytes))
        self._offsets.append(self.data_bytes)
        self._done.append(0)
        self.data_bytes += gguf.GGUFWriter.ggml_pad(nbytes, self._gw.data_alignment)

    def parameter_count(self) -> tuple[int, int, int, int]:
        """``GGUFWriter.get_total_parameter_count()`` of the declared tensors (total, shared, expert, experts)."""
        return self._gw.get_total_parameter_count()

    # ---- writing ---------------------------------------------------------------------------------------------
    def create(self) -> None:
        """Create the temporary file next to the output (its descriptor is what :meth:`pwrite_rows` writes to,
        also in worker processes forked after this)."""
        if self._tmp is not None:
            return
        remove_stale_partials(self.out.parent, self.out.name)
        try:
            self._fd, tmp = tempfile.mkstemp(prefix=f".{self.out.name}.{os.getpid()}.", suffix=PARTIAL_SUFFIX,
                                             dir=self.out.parent)
        except OSError as e:
            raise OutputNotWritableError(
                f"cannot create a file in {self.out.parent} ({e.strerror or e}); choose an output folder you can "
                f"write to") from None
        self._tmp = Path(tmp)

    def begin(self) -> None:
        """Write header, metadata and tensor infos (creating the temporary file first if needed)."""
        self.create()
        try:
            self._gw.write_header_to_file(path=self._tmp)
            self._gw.write_kv_data_to_file()
            self._gw.write_ti_data_to_file()
            if self._gw.fout is None:
                raise RuntimeError("GGUFWriter did not open the temporary file")
            f = self._gw.fout[0]
            f.flush()
            self._data_start = gguf.GGUFWriter.ggml_pad(f.tell(), self._gw.data_alignment)
        except OSError as e:
            raise OutputError(f"writing {self._tmp} failed ({e.strerror or e}); check the disk") from None
        self._gw.kv_data = [{}]  # the vocabulary is on disk; let it go

    @property
    def data_start(self) -> int:
        """Offset of the tensor data in the file (known once :meth:`begin` has run)."""
        return self._data_start

    def set_data_start(self, offset: int) -> None:
        """Tell a copy of this writer in a worker process forked before :meth:`begin` where the data starts."""
        self._data_start = offset

    def write_rows(self, index: int, offset: int, data: np.ndarray) -> None:
        """Write ``data`` (C-contiguous) at byte ``offset`` of tensor number ``index`` (declaration order).
        Safe to call from several threads at once, for distinct parts of the data."""
        self.mark_written(index, self.pwrite_rows(index, offset, data))

    def pwrite_rows(self, index: int, offset: int, data: np.ndarray) -> int:
        """The writing half of :meth:`write_rows`, without the bookkeeping: usable from a forked worker process
        (which shares the file descriptor); the parent then calls :meth:`mark_written`.  Returns the bytes."""
        name, want = self._expected[index]
        if offset < 0 or offset + data.nbytes > want:
            raise ValueError(f"{data.nbytes} bytes at offset {offset} do not fit tensor {name!r} ({want} bytes)")
        buf = memoryview(np.ascontiguousarray(data).reshape(-1).view(np.uint8))
        pos = self._data_start + self._offsets[index] + offset
        start = pos
        try:
            while buf:
                n = _pwrite(self._fd, buf[:_MAX_WRITE], pos)
                buf, pos = buf[n:], pos + n
        except OSError as e:
            raise OutputError(f"writing {self._tmp} failed ({e.strerror or e}); check the free disk space") from None
        _start_writeback(self._fd, start, pos - start)
        return data.nbytes

    def mark_written(self, index: int, nbytes: int) -> None:
        """Count ``nbytes`` of tensor ``index`` as written (:meth:`commit` checks every tensor is complete)."""
        with self._lock:
            self._done[index] += nbytes

    def write_tensor(self, name: str, data: np.ndarray) -> None:
        """Write the next tensor's bytes (tensors in the declared order)."""
        want_name, want_bytes = self._expected[self._written]
        if name != want_name or data.nbytes != want_bytes:
            raise ValueError(f"tensor {name!r} ({data.nbytes} bytes) written where {want_name!r} "
                             f"({want_bytes} bytes) was declared")
        self.write_rows(self._written, 0, data)
        self._written += 1

    def commit(self) -> Path:
        """Finish the file and move it into place; returns the output path."""
        missing = [name for (name, want), done in zip(self._expected, self._done, strict=True) if done != want]
        if missing:
            raise ValueError(f"{len(missing)} of {len(self._expected)} tensors were not completely written "
                             f"(first: {missing[0]!r})")
        if self._tmp is None or self._gw.fout is None:
            raise RuntimeError("commit() before begin(): nothing was written")
        try:
            os.ftruncate(self._fd, self._data_start + self.data_bytes)  # the last tensor's padding
            os.fsync(self._fd)
            self._close_fd()
            self._gw.close()
            os.chmod(self._tmp, _new_file_mode())  # mkstemp made it 0600; a model file is as readable as any other
            os.replace(self._tmp, self.out)
        except OSError as e:
            raise OutputError(f"finishing {self.out} failed ({e.strerror or e}); check the disk") from None
        self._tmp = None
        return self.out

    def abort(self) -> None:
        """Close and delete the temporary file (safe to call at any point, and more than once)."""
        try:
            self._close_fd()
            self._gw.close()
        finally:
            if self._tmp is not None:
                self._tmp.unlink(missing_ok=True)
                log.info("removed the partial output %s", self._tmp)
                self._tmp = None

    def _close_fd(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> StreamingGGUFWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._tmp is not None:
            self.abort()


# ---- our temporary files ------------------------------------------------------------------------------------
# ``.<output name>.<pid>.<random>.partial`` (``.<output name>.<random>.partial`` before the pid was added).  A
# process killed outright (SIGKILL, power cut) cannot remove its own: the next conversion into that folder does.
PARTIAL_SUFFIX = ".partial"
_PARTIAL_RE = re.compile(r"^\.(?P<name>.+?)\.(?:(?P<pid>\d+)\.)?(?P<rand>[a-z0-9_]{8})\.partial$")
_LEGACY_STALE_S = 3600.0  # a partial without a pid is stale once nobody has written to it for an hour


@dataclass(frozen=True)
class PartialFile:
    path: Path
    output_name: str  # the GGUF it was to become
    size_bytes: int
    stale: bool  # its writer is gone: safe to delete


def partial_files(folder: Path) -> list[PartialFile]:
    """Our temporary files in ``folder``, with whether their writer is gone."""
    out = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return []
    for p in entries:
        m = _PARTIAL_RE.match(p.name)
        if m is None:
            continue
        try:
            st = p.stat()
        except OSError:
            continue
        pid = int(m["pid"]) if m["pid"] else None
        out.append(PartialFile(p, m["name"], st.st_size, _writer_gone(pid, st.st_mtime)))
    return sorted(out, key=lambda f: f.path.name)


def remove_stale_partials(folder: Path, output_name: str | None = None) -> list[Path]:
    """Delete the stale partial files in ``folder`` (of ``output_name`` only, when given); returns them."""
    removed = []
    for f in partial_files(folder):
        if f.stale and (output_name is None or f.output_name == output_name):
            try:
                f.path.unlink()
            except OSError as e:
                log.warning("could not remove the stale partial output %s (%s)", f.path, e.strerror or e)
                continue
            log.info("removed %s, left by a conversion that was killed", f.path)
            removed.append(f.path)
    return removed


def _writer_gone(pid: int | None, mtime: float) -> bool:
    import time

    if pid is None:
        return time.time() - mtime > _LEGACY_STALE_S
    if pid == os.getpid():
        return False
    try:
        import psutil
    except ImportError:
        return time.time() - mtime > _LEGACY_STALE_S
    try:
        # a process with that pid started after the file was last written is another process (pid reused)
        return not psutil.pid_exists(pid) or psutil.Process(pid).create_time() > mtime + 1.0
    except psutil.NoSuchProcess:  # it exited meanwhile
        return True
    except (psutil.Error, OSError):  # someone else's process: leave its file alone
        return False


def _new_file_mode() -> int:
    """The mode ``open()`` would give a new file: 0666 less the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask
