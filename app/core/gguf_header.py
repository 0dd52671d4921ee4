"""The one GGUF header reader of app.core: metadata, tensor extents, vocabulary fingerprint, whether the file is whole.

Every part of the app that looks at a GGUF without loading it goes through :func:`read_header`: the Engine's check
before handing a file to llama.cpp (so a wrong or damaged file gets a message saying what is wrong and what to
do, instead of llama.cpp's "failed to load model"), compare/eval (size, bits per weight, vocabulary fingerprint)
and the Library scan (type, size, bits per weight).  ``gguf.GGUFReader`` builds numpy views of every array item
(6.4 s for the 152k-token R1 vocabulary); this walks arrays without keeping them (0.07 s).  Results are cached
by ``(path, size, mtime_ns)``, so a Library rescan of unchanged files costs a ``stat`` each.

GGUF layout (v2/v3, little-endian): ``"GGUF"``, uint32 version, uint64 tensor count, uint64 metadata count;
metadata ``(string key, uint32 type, value)``; tensor infos ``(string name, uint32 n_dims, uint64 dims[n],
uint32 ggml type, uint64 offset)``; padding to ``general.alignment`` (default 32); tensor data.
Strings are ``uint64 length + utf-8 bytes``; arrays are ``uint32 item type, uint64 count, items``.
"""
from __future__ import annotations

import hashlib
import mmap
import os
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelLoadError

GGUF_MAGIC = b"GGUF"
VOCAB_KEY = "tokenizer.ggml.tokens"
CACHE_SIZE = 256                 # headers kept (a few KB each: arrays are not kept)
# value type -> struct format of a scalar (8 = string, 9 = array are handled apart)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def file_type_name(code: Any, fallback: str = "unknown") -> str:
    """``general.file_type`` (llama_ftype) as llama.cpp and our recipes name it (``"Q4_K_M"``, ``"F16"``), or
    ``fallback`` when absent or unknown."""
    from gguf.constants import LlamaFileType

    try:
        return LlamaFileType(int(code)).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except (ValueError, TypeError):
        return fallback


@dataclass(frozen=True)
class GGUFHeader:
    """What :func:`read_header` found.  ``metadata`` holds scalars and strings; arrays appear as their length
    under ``metadata_array_lengths``.  ``data_bytes``: bytes of all tensor data; ``n_params``: elements of all
    tensors; ``vocab_sha256``: hash of the ``tokenizer.ggml.tokens`` array exactly as stored (two files with the
    same hash have the same token texts in the same order; "" without a vocabulary)."""

    path: Path
    version: int
    metadata: dict[str, Any]
    metadata_array_lengths: dict[str, int]
    n_tensors: int
    n_params: int
    data_offset: int
    data_end: int                  # where the last tensor's data ends (the least the file size must be)
    file_size: int
    data_bytes: int = 0
    vocab_sha256: str = ""
    tensor_types: dict[int, int] = field(default_factory=dict)   # ggml type -> number of tensors

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    def arch_value(self, key: str, default: Any = None) -> Any:
        """``metadata[f"{architecture}.{key}"]``, e.g. ``arch_value("context_length")``."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    @property
    def size_bytes(self) -> int:
        return self.file_size

    @property
    def name(self) -> str:
        return str(self.metadata.get("general.name") or "")

    @property
    def file_type(self) -> int | None:
        v = self.metadata.get("general.file_type")
        return int(v) if v is not None else None

    @property
    def file_type_name(self) -> str:
        return file_type_name(self.file_type)

    @property
    def n_vocab(self) -> int:
        return self.metadata_array_lengths.get(VOCAB_KEY, 0)

    @property
    def tokenizer_model(self) -> str:
        return str(self.metadata.get("tokenizer.ggml.model") or "")

    @property
    def bits_per_weight(self) -> float:
        """Tensor data bits per parameter (the figure llama.cpp's loader prints as "BPW")."""
        return self.data_bytes * 8 / self.n_params if self.n_params else 0.0


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


# (absolute path, size, mtime_ns) -> header, or the message of the ModelLoadError it raised
_cache: OrderedDict[tuple[str, int, int], GGUFHeader | str] = OrderedDict()
_cache_lock = threading.Lock()


def read_header(path: str | Path) -> GGUFHeader:
    """Read and check ``path``'s GGUF header.  Raises ModelLoadError (not found, not GGUF, unsupported version,
    corrupt header, truncated data) with what to do next.  Cached by (path, size, mtime_ns): a file changed on
    disk is read again."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model file not found: {path} does not exist; check the path")
    if not path.is_file():
        raise ModelLoadError(f"{path} is not a file: choose a .gguf model file")
    st = os.stat(path)
    key = (str(path.absolute()), st.st_size, st.st_mtime_ns)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
    if isinstance(hit, str):
        raise ModelLoadError(hit)
    if hit is not None:
        return hit
    try:
        result: GGUFHeader | str = _read(path, st.st_size)
    except ModelLoadError as e:
        result = str(e)
    with _cache_lock:
        _cache[key] = result
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    if isinstance(result, str):
        raise ModelLoadError(result)
    return result


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


def _read(path: Path, size: int) -> GGUFHeader:
    """Every failure is one ModelLoadError whose message names the file, says what is wrong and what to do."""
    again = "probably an interrupted download or copy: download or convert it again"
    if size == 0:
        raise ModelLoadError(f"{path.name} is empty (0 bytes), {again}")
    with open(path, "rb") as f:
        head = f.read(4)
        if head != GGUF_MAGIC:
            hint = " (it looks like a safetensors/pickle checkpoint: quantize it to GGUF first)" \
                if head[:1] in (b"{", b"\x80", b"P") or path.suffix in (".safetensors", ".bin", ".pt") else ""
            raise ModelLoadError(f"{path.name} is not a GGUF file{hint}: choose a .gguf model, or make one with "
                                 f"`distilldesk quantize`")
        if size < 24:
            raise ModelLoadError(f"{path.name} is truncated: it ends after {size} bytes, inside its header, {again}")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            try:
                return _parse(path, mm, size)
            except ModelLoadError:            # already says what is wrong (a ValueError too: not caught below)
                raise
            except EOFError:
                raise ModelLoadError(f"{path.name} is truncated or corrupt: its header runs past the end of the "
                                     f"file ({size:,} bytes), {again}") from None
            except (ValueError, struct.error, OverflowError) as e:
                raise ModelLoadError(f"{path.name} is corrupt: its header cannot be read ({e}); download or "
                                     f"convert it again") from None


def _metadata(c: _Cursor, n_kv: int) -> tuple[dict[str, Any], dict[str, int], str]:
    """(scalars and strings, array lengths, sha256 of the vocabulary array's bytes)."""
    meta: dict[str, Any] = {}
    arrays: dict[str, int] = {}
    vocab_sha = ""
    for _ in range(n_kv):
        key, vtype = c.string(), c.take("<I")
        if vtype in _SCALARS:
            meta[key] = c.take(_SCALARS[vtype])
        elif vtype == _STRING:
            meta[key] = c.string()
        elif vtype == _ARRAY:
            item_type, count = c.take("<I"), c.take("<Q")
            arrays[key] = count
            start = c.pos
            c.skip_array(item_type, count)
            if key == VOCAB_KEY:
                vocab_sha = hashlib.sha256(c.buf[start:c.pos]).hexdigest()
        else:
            raise ValueError(f"unknown metadata type {vtype} for {key!r}")
    return meta, arrays, vocab_sha


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
    meta, arrays, vocab_sha = _metadata(c, n_kv)
    sizes = _type_sizes()
    n_params, data_bytes, extent, types = 0, 0, 0, {}
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
        block, type_size = sizes[ttype]
        nbytes = n // block * type_size
        n_params += n
        data_bytes += nbytes
        types[ttype] = types.get(ttype, 0) + 1
        extent = max(extent, offset + nbytes)
    align = int(meta.get("general.alignment", 32)) or 32
    data_offset = (c.pos + align - 1) // align * align
    data_end = data_offset + extent if n_tensors else c.pos
    if data_end > size:
        raise ModelLoadError(f"{path.name} is truncated: its tensors need {data_end:,} bytes but the file has "
                             f"{size:,}, probably an interrupted download or copy: download or convert it again")
    return GGUFHeader(path=path, version=version, metadata=meta, metadata_array_lengths=arrays,
                      n_tensors=n_tensors, n_params=n_params, data_offset=data_offset, data_end=data_end,
                      file_size=size, data_bytes=data_bytes, vocab_sha256=vocab_sha, tensor_types=types)
