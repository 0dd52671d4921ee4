"""Streaming GGUF writer on ``gguf.GGUFWriter``: header, metadata and tensor infos first, then data one tensor at
a time, into a temporary file next to the output that is renamed only once complete.

Any exception (cancel, Ctrl-C, a failed write) inside the ``with`` block removes the temporary file, so an
interrupted conversion never leaves a partial GGUF behind.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType

from .errors import OutputError, OutputNotWritableError

log = logging.getLogger(__name__)


class StreamingGGUFWriter:
    """``with StreamingGGUFWriter(out, arch) as w: w.add_kv(...); w.add_tensor_info(...); w.begin();
    w.write_tensor(...) ...; w.commit()``."""

    def __init__(self, out: Path, arch: str) -> None:
        self.out = Path(out)
        self._gw = gguf.GGUFWriter(path=None, arch=arch)
        self._tmp: Path | None = None
        self._expected: list[tuple[str, int]] = []
        self._written = 0
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
        self.data_bytes += gguf.GGUFWriter.ggml_pad(nbytes, self._gw.data_alignment)

    # ---- writing ---------------------------------------------------------------------------------------------
    def begin(self) -> None:
        """Create the temporary file and write header, metadata and tensor infos."""
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.out.name}.", suffix=".partial", dir=self.out.parent)
        except OSError as e:
            raise OutputNotWritableError(
                f"cannot create a file in {self.out.parent} ({e.strerror or e}); choose an output folder you can "
                f"write to") from None
        os.close(fd)
        self._tmp = Path(tmp)
        try:
            self._gw.write_header_to_file(path=self._tmp)
            self._gw.write_kv_data_to_file()
            self._gw.write_ti_data_to_file()
        except OSError as e:
            raise OutputError(f"writing {self._tmp} failed ({e.strerror or e}); check the disk") from None

    def write_tensor(self, name: str, data: np.ndarray) -> None:
        """Append the next tensor's bytes (tensors must come in the declared order)."""
        want_name, want_bytes = self._expected[self._written]
        if name != want_name or data.nbytes != want_bytes:
            raise ValueError(f"tensor {name!r} ({data.nbytes} bytes) written where {want_name!r} "
                             f"({want_bytes} bytes) was declared")
        try:
            self._gw.write_tensor_data(np.ascontiguousarray(data))
        except OSError as e:
            raise OutputError(f"writing {self._tmp} failed ({e.strerror or e}); check the free disk space") from None
        self._written += 1

    def commit(self) -> Path:
        """Finish the file and move it into place; returns the output path."""
        if self._written != len(self._expected):
            raise ValueError(f"only {self._written} of {len(self._expected)} tensors were written")
        assert self._tmp is not None and self._gw.fout is not None
        try:
            for f in self._gw.fout:
                f.flush()
                os.fsync(f.fileno())
            self._gw.close()
            os.replace(self._tmp, self.out)
        except OSError as e:
            raise OutputError(f"finishing {self.out} failed ({e.strerror or e}); check the disk") from None
        self._tmp = None
        return self.out

    def abort(self) -> None:
        """Close and delete the temporary file (safe to call at any point, and more than once)."""
        try:
            self._gw.close()
        finally:
            if self._tmp is not None:
                self._tmp.unlink(missing_ok=True)
                log.info("removed the partial output %s", self._tmp)
                self._tmp = None

    def __enter__(self) -> StreamingGGUFWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._tmp is not None:
            self.abort()
