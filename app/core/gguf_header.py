"""A fast, checking reader of a GGUF file's header: scalar metadata, tensor extents, and whether the file is whole.

Used before handing a file to llama.cpp, so that a wrong or damaged file gets a message saying what is wrong and
what to do, instead of llama.cpp's "failed to load model".  ``gguf.GGUFReader`` builds numpy views of every
array item (seconds for a 152k-token vocabulary); this skips arrays and reads only what we need.

GGUF layout (v2/v3, little-endian): ``"GGUF"``, uint32 version, uint64 tensor count, uint64 metadata count;
metadata ``(string key, uint32 type, value)``; tensor infos ``(string name, uint32 n_dims, uint64 dims[n],
uint32 ggml type, uint64 offset)``; padding to ``general.alignment`` (default 32); tensor data.
Strings are ``uint64 length + utf-8 bytes``; arrays are ``uint32 item type, uint64 count, items``.
"""
from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelLoadError

GGUF_MAGIC = b"GGUF"
# value type -> struct format of a scalar (8 = string, 9 = array are handled apart)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFHeader:
    """What :func:`read_header` found.  ``metadata`` holds scalars and strings; arrays appear as their length
    under ``metadata_array_lengths``."""

    path: Path
    version: int
    metadata: dict[str, Any]
    metadata_array_lengths: dict[str, int]
    n_tensors: int
    n_params: int
    data_offset: int
    data_end: int                  # where the last tensor's data ends (the least the file size must be)
    file_size: int
    tensor_types: dict[int, int] = field(default_factory=dict)   # ggml type -> number of tensors

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    def arch_value(self, key: str, default: Any = None) -> Any:
        """``metadata[f"{architecture}.{key}"]``, e.g. ``arch_value("context_length")``."""
        return self.metadata.get(f"{self.architecture}.{key}", default)


class _Cursor:
    def __init__(self, buf: Any, size: int) -> None:
        self.buf, self.size, self.pos = buf, size, 0

    def take(self, fmt: str) -> Any:
        n = struct.calcsize(fmt)
        if self.pos + n > self.size:
            raise EOFError
        v = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += n
        return v

    def string(self) -> str:
        n = self.take("<Q")
        if self.pos + n > self.size:
            raise EOFError
        s = bytes(self.buf[self.pos:self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return s

    def skip_array(self, item_type: int, count: int) -> None:
        if item_type in _SCALARS:
            self.pos += struct.calcsize(_SCALARS[item_type]) * count
        elif item_type == _STRING:
            for _ in range(count):        # each string is length-prefixed: walk them
                n = self.take("<Q")
                self.pos += n
        elif item_type == _ARRAY:
            for _ in range(count):
                sub, n = self.take("<I"), self.take("<Q")
                self.skip_array(sub, n)
        else:
            raise ValueError(f"unknown GGUF array item type {item_type}")
        if self.pos > self.size:
            raise EOFError


def _type_sizes() -> dict[int, tuple[int, int]]:
    import gguf

    return {int(t): v for t, v in gguf.GGML_QUANT_SIZES.items()}


def read_header(path: str | Path) -> GGUFHeader:
    """Read and check ``path``'s GGUF header.  Raises ModelLoadError (not found, not GGUF, unsupported version,
    corrupt header, truncated data) with what to do next."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelLoadError(f"{path} is not a file: choose a .gguf model file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4)
        if head != GGUF_MAGIC:
            hint = " (it looks like a safetensors/pickle checkpoint: quantize it to GGUF first)" \
                if head[:1] in (b"{", b"\x80", b"P") or path.suffix in (".safetensors", ".bin", ".pt") else ""
            raise ModelLoadError(f"{path.name} is not a GGUF file{hint}: choose a .gguf model, or make one with "
                                 f"`distilldesk quantize`")
        if size < 24:
            raise ModelLoadError(f"{path.name} is truncated ({size} bytes): download or convert it again")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            try:
                return _parse(path, mm, size)
            except (EOFError, ValueError, struct.error, OverflowError) as e:
                raise ModelLoadError(
                    f"{path.name} is truncated or corrupt (its header cannot be read: {e or 'unexpected end'}): "
                    f"download or convert it again") from None


def _parse(path: Path, mm: Any, size: int) -> GGUFHeader:
    c = _Cursor(mm, size)
    c.pos = 4
    version = c.take("<I")
    if version not in (2, 3):
        raise ModelLoadError(f"{path.name} is GGUF version {version}; only versions 2 and 3 are supported: "
                             f"convert the model again with a current tool")
    n_tensors, n_kv = c.take("<Q"), c.take("<Q")
    if n_tensors > 1 << 24 or n_kv > 1 << 24:
        raise ValueError("implausible tensor/metadata counts")
    meta: dict[str, Any] = {}
    arrays: dict[str, int] = {}
    for _ in range(n_kv):
        key, vtype = c.string(), c.take("<I")
        if vtype in _SCALARS:
            meta[key] = c.take(_SCALARS[vtype])
        elif vtype == _STRING:
            meta[key] = c.string()
        elif vtype == _ARRAY:
            item_type, count = c.take("<I"), c.take("<Q")
            arrays[key] = count
            c.skip_array(item_type, count)
        else:
            raise ValueError(f"unknown metadata type {vtype} for {key!r}")
    sizes = _type_sizes()
    n_params, extent, types = 0, 0, {}
    for _ in range(n_tensors):
        name, n_dims = c.string(), c.take("<I")
        if n_dims > 8:
            raise ValueError(f"tensor {name!r} has {n_dims} dimensions")
        n = 1
        for _ in range(n_dims):
            n *= c.take("<Q")
        ttype, offset = c.take("<I"), c.take("<Q")
        if ttype not in sizes:
            raise ModelLoadError(f"{path.name}: tensor {name!r} has ggml type {ttype}, which this version does "
                                 f"not know: update DistillDesk or use another quantization")
        block, nbytes = sizes[ttype]
        n_params += n
        types[ttype] = types.get(ttype, 0) + 1
        extent = max(extent, offset + n // block * nbytes)
    align = int(meta.get("general.alignment", 32)) or 32
    data_offset = (c.pos + align - 1) // align * align
    data_end = data_offset + extent if n_tensors else c.pos
    if data_end > size:
        raise ModelLoadError(f"{path.name} is truncated: its tensors need {data_end:,} bytes but the file has "
                             f"{size:,} (an interrupted download or copy?): download or convert it again")
    return GGUFHeader(path=path, version=version, metadata=meta, metadata_array_lengths=arrays,
                      n_tensors=n_tensors, n_params=n_params, data_offset=data_offset, data_end=data_end,
                      file_size=size, tensor_types=types)
