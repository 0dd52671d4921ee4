"""Reading a Hugging Face checkpoint: folder or cached Hub repo id, config.json, safetensors (single or sharded).

Only safetensors are read (pickle ``*.bin``/``*.pt`` are refused: loading them runs arbitrary code).  Every
header is parsed and validated up front (length past the end of the file, bad JSON, unknown dtype, offsets out of
range or contradicting the shape) so that a broken checkpoint fails before any output is written.  Tensor data is
memory-mapped and read one tensor at a time: only the tensor being converted is ever in memory.
"""
from __future__ import annotations

import errno
import json
import logging
import mmap
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

import numpy as np

from .errors import (
    CheckpointNotFoundError,
    ConfigError,
    CorruptCheckpointError,
    MissingFileError,
    PickleCheckpointError,
)

log = logging.getLogger(__name__)

# safetensors dtype -> (bytes per element, numpy dtype of the raw data)
_DTYPES: dict[str, tuple[int, np.dtype]] = {
    "F32": (4, np.dtype("<f4")),
    "F16": (2, np.dtype("<f2")),
    "BF16": (2, np.dtype("<u2")),  # raw bits; widened to float32 by shifting into the high half
}
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
_INDEX_NAME = "model.safetensors.index.json"
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lies: file, dtype, shape (numpy order) and absolute byte range."""
    name: str
    file: Path
    dtype: str  # "F32" | "F16" | "BF16"
    shape: tuple[int, ...]
    offset: int  # absolute offset of the data in ``file``
    nbytes: int


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, resolved from the environment now (not at import time)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return Path(home) / "hub"


def resolve_source(src: str | os.PathLike[str]) -> Path:
    """A checkpoint folder, or the snapshot folder of a Hub repo id already in the local Hugging Face cache."""
    p = Path(src).expanduser()
    if p.is_dir():
        return p.resolve()
    if p.exists():
        raise CheckpointNotFoundError(
            f"{p} is a file; pass the checkpoint folder that holds config.json and the *.safetensors files")
    text = str(src)
    if _REPO_ID.match(text):
        snap = _cached_snapshot(text)
        if snap is not None:
            return snap
        raise CheckpointNotFoundError(
            f"{text!r} is not in the local Hugging Face cache ({hf_cache_dir()}); download it first "
            f"(`distilldesk download {text}`) or pass the checkpoint folder")
    raise CheckpointNotFoundError(f"checkpoint folder {p} does not exist; check the path")


def _cached_snapshot(repo_id: str) -> Path | None:
    repo_dir = hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    snaps = repo_dir / "snapshots"
    if not snaps.is_dir():
        return None
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        snap = snaps / ref.read_text(encoding="utf-8").strip()
        if snap.is_dir():
            return snap
    candidates = sorted((d for d in snaps.iterdir() if (d / "config.json").exists()),
                        key=lambda d: d.stat().st_mtime)
    return candidates[-1] if candidates else None


def model_name(src: str | os.PathLike[str]) -> str:
    """A human name for the checkpoint: the repo name of an HF-cache snapshot, else the folder name."""
    p = Path(src)
    for parent in [p, *p.parents]:
        if parent.name.startswith("models--"):
            return parent.name.split("--")[-1]
    if not p.exists() and _REPO_ID.match(str(src)):
        return str(src).split("/")[-1]
    return p.resolve().name if p.exists() else p.name


def load_json(path: Path, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise MissingFileError(f"{path.parent} has no {path.name}; the checkpoint is incomplete: download "
                               f"{what} again") from None
    except OSError as e:
        raise unreadable(path, e) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); download it again") from None


def unreadable(path: Path, e: OSError) -> CorruptCheckpointError:
    """The error for a checkpoint file the OS will not open (a link to itself, no permission, a folder...)."""
    if e.errno == errno.ELOOP:
        return CorruptCheckpointError(f"{path} is a symbolic link that leads back to itself; replace it with the "
                                      f"real file (download it again)")
    return CorruptCheckpointError(f"{path} cannot be read ({e.strerror or e}); check the file and its permissions, "
                                  f"or download it again")


def read_header(path: Path) -> dict[str, TensorEntry]:
    """Parse and validate one safetensors file's header as the safetensors library does: tensors in the file's
    name order, their data exactly tiling the data section (no overlaps, gaps or trailing bytes)."""
    what = f"{path.name} is truncated or corrupt"
    fix = "download this file again"
    try:
        size = path.stat().st_size
        if size < 8:
            raise CorruptCheckpointError(f"{what}: only {size} bytes; {fix}")
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n > size - 8 or n > _MAX_HEADER:
                raise CorruptCheckpointError(f"{what}: its header claims {n} bytes but the file has {size}; {fix}")
            raw = f.read(n)
    except OSError as e:
        raise unreadable(path, e) from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptCheckpointError(f"{what}: its header is not valid JSON ({e}); {fix}") from None
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"{what}: its header is not a JSON object; {fix}")
    data_start, data_size = 8 + n, size - 8 - n
    out: dict[str, TensorEntry] = {}
    for name in sorted(k for k in header if k != "__metadata__"):
        out[name] = _entry(path, name, header[name], data_start, data_size)
    _check_tiling(path, out, data_start, data_size)
    return out


def _check_tiling(path: Path, entries: dict[str, TensorEntry], data_start: int, data_size: int) -> None:
    """safetensors' own ``Metadata::validate``: sorted by offset, each tensor starts where the previous one ends,
    the last ends where the file does.  Overlapping tensors would otherwise convert into wrong weights."""
    pos = 0
    for e in sorted(entries.values(), key=lambda e: (e.offset, e.offset + e.nbytes)):
        begin = e.offset - data_start
        if begin != pos:
            how = "overlaps the tensor before it" if begin < pos else f"leaves a gap of {begin - pos} bytes"
            raise CorruptCheckpointError(f"{path.name} is corrupt: tensor {e.name!r} at data offset {begin} {how} "
                                         f"(the safetensors library refuses this file too); download it again")
        pos = begin + e.nbytes
    if pos != data_size:
        raise CorruptCheckpointError(f"{path.name} is corrupt: its tensors cover {pos} of its {data_size} data "
                                     f"bytes (the safetensors library refuses this file too); download it again")


def _entry(path: Path, name: str, meta: Any, data_start: int, data_size: int) -> TensorEntry:
    bad = f"{path.name} is corrupt: tensor {name!r}"
    try:
        dtype, shape, (begin, end) = meta["dtype"], tuple(int(s) for s in meta["shape"]), meta["data_offsets"]
        begin, end = int(begin), int(end)
    except (KeyError, TypeError, ValueError):
        raise CorruptCheckpointError(f"{bad} has a malformed header entry; download the file again") from None
    if dtype not in _DTYPES:
        raise CorruptCheckpointError(
            f"{path.name}: tensor {name!r} has dtype {dtype}; only F32, F16 and BF16 weights can be converted "
            f"(use the unquantized release of this model)")
    if any(s < 0 for s in shape) or not 0 <= begin <= end <= data_size:
        raise CorruptCheckpointError(
            f"{bad} has data offsets [{begin}, {end}) outside the file's {data_size} data bytes; the file is "
            f"truncated: download it again")
    nbytes = prod(shape) * _DTYPES[dtype][0]
    if end - begin != nbytes:
        raise CorruptCheckpointError(
            f"{bad} spans {end - begin} bytes but its shape {list(shape)} x {dtype} needs {nbytes}; download "
            f"the file again")
    return TensorEntry(name, path, dtype, shape, data_start + begin, nbytes)


class Checkpoint:
    """An opened checkpoint folder: ``config`` and ``tensors`` (name -> entry, in llama.cpp's reading order).

    Use as a context manager (or call :meth:`close`) to release the memory maps.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.config: dict[str, Any] = self._load_config()
        self.weight_files: list[Path] = self._weight_files()
        self.tensors: dict[str, TensorEntry] = self._index()
        self._maps: dict[Path, mmap.mmap] = {}

    # ---- opening -------------------------------------------------------------------------------------------
    def _load_config(self) -> dict[str, Any]:
        cfg = load_json(self.folder / "config.json", "config.json")
        if not isinstance(cfg, dict):
            raise ConfigError(f"{self.folder / 'config.json'} is not a JSON object; download it again")
        if isinstance(cfg.get("text_config"), dict):  # multimodal wrappers keep the LM config inside
            cfg = {**cfg, **cfg["text_config"]}
        return cfg

    def _weight_files(self) -> list[Path]:
        index = self.folder / _INDEX_NAME
        if index.is_file():
            wm = load_json(index, _INDEX_NAME).get("weight_map")
            if not isinstance(wm, dict) or not wm:
                raise ConfigError(f"{index} has no weight_map; download it again")
            self._weight_map: dict[str, str] = wm
            files = [self.folder / f for f in sorted(set(wm.values()))]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise MissingFileError(f"{self.folder} lacks the shard(s) {', '.join(missing)} listed in "
                                       f"{_INDEX_NAME}; finish the download")
            return files
        self._weight_map = {}
        files = sorted(p for p in self.folder.iterdir() if p.name.startswith("model") and p.suffix == ".safetensors")
        if files:
            return files
        pickles = sorted(p.name for p in self.folder.iterdir() if p.suffix in _PICKLE_SUFFIXES)
        if pickles:
            raise PickleCheckpointError(
                f"{self.folder} holds only pickle weights ({', '.join(pickles[:3])}); DistillDesk loads "
                f"safetensors only, because pickle files can run arbitrary code: download the safetensors "
                f"version of this model (most Hub repos have one)")
        raise MissingFileError(f"{self.folder} has no model*.safetensors weights; download the model's "
                               f"*.safetensors files")

    def _index(self) -> dict[str, TensorEntry]:
        tensors: dict[str, TensorEntry] = {}
        for f in self.weight_files:
            tensors.update(read_header(f))
        if self._weight_map:
            missing = sorted(set(self._weight_map) - set(tensors))
            if missing:
                raise CorruptCheckpointError(
                    f"{len(missing)} tensor(s) listed in {_INDEX_NAME} are in none of the shards (first: "
                    f"{missing[0]}); a shard is incomplete: download it again")
        return tensors

    # ---- reading -------------------------------------------------------------------------------------------
    def raw(self, name: str) -> np.ndarray:
        """The tensor's data as stored (a read-only view into the memory map; BF16 as uint16 bits)."""
        e = self.tensors[name]
        m = self._maps.get(e.file)
        if m is None:
            with open(e.file, "rb") as f:
                m = self._maps[e.file] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        dt = _DTYPES[e.dtype][1]
        return np.frombuffer(m, dtype=dt, count=prod(e.shape), offset=e.offset).reshape(e.shape)

    def release(self, name: str, start: int, end: int) -> None:
        """Drop the pages of bytes ``start:end`` of a tensor's data from this process's memory map (they are
        read again from the file if needed): a finished tensor then no longer counts in our resident memory."""
        e = self.tensors[name]
        m = self._maps.get(e.file)
        advice = getattr(mmap, "MADV_DONTNEED", None)
        if m is None or advice is None or not hasattr(m, "madvise"):
            return
        page = mmap.PAGESIZE
        lo = (e.offset + start) // page * page
        hi = min(len(m), -(-(e.offset + end) // page) * page)
        if hi > lo:
            m.madvise(advice, lo, hi - lo)

    def close(self) -> None:
        for m in self._maps.values():
            try:
                m.close()
            except BufferError:  # a view is still alive somewhere; the map closes when it is collected
                pass
        self._maps.clear()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def input_files(self) -> Iterator[Path]:
        """Every file conversion reads (an output path equal to one of these is refused)."""
        yield from self.weight_files
        for name in ("config.json", _INDEX_NAME, "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                     "generation_config.json"):
            if (self.folder / name).exists():
                yield self.folder / name


def to_float32(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Widen stored data to a new float32 array (exact for F16 and BF16)."""
    if dtype == "BF16":
        bits = raw.astype(np.uint32)
        bits <<= 16  # in place: one float32-sized array, no temporary
        return bits.view(np.float32)
    if dtype == "F16":  # a table lookup is twice as fast as numpy's (scalar) half -> float cast
        return np.take(_f16_table(), raw.view(np.uint16), mode="wrap")  # (every index is in range: no checks)
    return raw.astype(np.float32)


_F16_TABLE: np.ndarray | None = None


def _f16_table() -> np.ndarray:
    """float32 value of every fp16 bit pattern (256 KiB), from numpy's own exact cast, NaN and Inf included."""
    global _F16_TABLE
    if _F16_TABLE is None:
        _F16_TABLE = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
    return _F16_TABLE
