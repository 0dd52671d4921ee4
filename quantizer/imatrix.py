"""Read llama.cpp importance-matrix files into ``{tensor_name: float32 per-column weights}``.

Two formats exist, both written by ``llama-imatrix`` (llama.cpp ``tools/imatrix/imatrix.cpp``) and read by
``llama-quantize`` (``common/imatrix-loader.cpp`` and ``tools/quantize/quantize.cpp``'s ``load_imatrix``):

* **GGUF** (the default since 2025): ``general.type = "imatrix"``, keys ``imatrix.datasets`` /
  ``imatrix.chunk_count`` / ``imatrix.chunk_size``, and per weight two F32 tensors ``<name>.in_sum2``
  (raw sums of squared activations, ``n_mat`` rows of ``n_cols``) and ``<name>.counts`` (``n_mat`` token
  counts).  The weights are ``in_sum2 / count`` per matrix, and 1 for a matrix (MoE expert) that saw no tokens.
* **legacy ``.dat``** (little-endian)::

      int32 n_entries
      n_entries x { int32 len; char name[len]; int32 ncall; int32 nval; float32 values[nval] }
      [int32 chunk_count; int32 len; char dataset[len]]     (optional trailer)

  where ``values`` are ``(sum / count) * ncall``; the weights are ``values / ncall`` (``values`` if ncall is 0).

:func:`imatrix_for` then picks a tensor's weights the way ``llama_model_quantize_impl`` does.
"""
from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ImatrixFileError

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
_KEY_DATASETS = "imatrix.datasets"
_KEY_CHUNK_COUNT = "imatrix.chunk_count"
_KEY_CHUNK_SIZE = "imatrix.chunk_size"
_SUMS, _COUNTS = ".in_sum2", ".counts"
_TOKEN_EMBD_NAMES = ("token_embd.weight", "per_layer_token_embd.weight")


@dataclass
class Imatrix:
    """A loaded importance matrix: per-tensor weights (``n_mat * n_cols`` float32 each) and provenance."""
    weights: dict[str, np.ndarray]
    format: str  # "gguf" | "legacy"
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0  # tokens per chunk (0 in legacy files)

    def __len__(self) -> int:
        return len(self.weights)


def _fail(path: Path, problem: str) -> ImatrixFileError:
    return ImatrixFileError(
        f"{path}: {problem}; pass an importance-matrix file made by llama-imatrix for this model "
        f"(GGUF or legacy .dat), or quantize without --imatrix")


def load_imatrix(path: str | Path) -> Imatrix:
    """Read an imatrix file of either format; raises ImatrixFileError saying what is wrong and what to do."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ImatrixFileError(f"importance-matrix file {path} does not exist; check the path") from None
    except OSError as e:
        raise ImatrixFileError(f"cannot read importance-matrix file {path}: {e.strerror or e}") from None
    im = _load_gguf(path) if raw[:4] == GGUF_MAGIC else _load_legacy(path, raw)
    _validate(path, im)
    log.info("loaded %d importance-matrix entries from %s (%s, %d chunks)", len(im), path, im.format,
             im.chunk_count)
    return im


def read_imatrix(path: str | Path) -> dict[str, np.ndarray]:
    """``{tensor_name: float32 weights}`` of an imatrix file (see :func:`load_imatrix`)."""
    return load_imatrix(path).weights


# ---- legacy .dat -------------------------------------------------------------------------------------------
class _Cursor:
    """Little-endian reads from a bytes buffer that report truncation as ImatrixFileError."""

    def __init__(self, path: Path, raw: bytes) -> None:
        self.path, self.raw, self.pos = path, raw, 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.raw):
            raise _fail(self.path, f"the file is truncated or corrupt (reading {what} at byte {self.pos})")
        out = self.raw[self.pos:self.pos + n]
        self.pos += n
        return out

    def i32(self, what: str) -> int:
        return struct.unpack("<i", self.take(4, what))[0]

    @property
    def left(self) -> int:
        return len(self.raw) - self.pos


def _load_legacy(path: Path, raw: bytes) -> Imatrix:
    cur = _Cursor(path, raw)
    n_entries = cur.i32("the entry count") if raw else 0
    if n_entries < 1:
        raise _fail(path, "it holds no entries (neither a GGUF imatrix nor a legacy .dat with data)")
    weights: dict[str, np.ndarray] = {}
    for i in range(n_entries):
        what = f"entry {i + 1} of {n_entries}"
        name_len = cur.i32(f"the name length of {what}")
        try:
            name = cur.take(name_len, f"the name of {what}").decode("utf-8")
        except UnicodeDecodeError:
            raise _fail(path, f"the name of {what} is not text; the file is not an imatrix") from None
        ncall = cur.i32(f"the call count of {name!r}")
        nval = cur.i32(f"the value count of {name!r}")
        if nval < 1:
            raise _fail(path, f"entry {name!r} has {nval} values")
        sums = np.frombuffer(cur.take(4 * nval, f"the values of {name!r}"), dtype="<f4")
        weights[name] = (sums / np.float32(ncall) if ncall > 0 else sums).astype(np.float32)
    chunk_count, datasets = 0, []
    if cur.left >= 4:  # optional trailer: chunk count, then the dataset file name
        chunk_count = cur.i32("the chunk count")
        if cur.left >= 4:
            n = cur.i32("the dataset name length")
            if 0 < n <= cur.left:
                datasets.append(cur.take(n, "the dataset name").decode("utf-8", "replace"))
    return Imatrix(weights, "legacy", datasets, chunk_count, 0)


# ---- GGUF --------------------------------------------------------------------------------------------------
def _field_value(reader, key: str):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def _load_gguf(path: Path) -> Imatrix:
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # GGUFReader raises ValueError/IndexError/struct errors on corrupt files
        raise _fail(path, f"it starts like a GGUF file but cannot be parsed ({e})") from None
    gtype = _field_value(reader, "general.type")
    if gtype is not None and gtype != "imatrix":
        raise _fail(path, f"it is a GGUF of type {gtype!r}, not an importance matrix")
    if any(_field_value(reader, k) is None for k in (_KEY_DATASETS, _KEY_CHUNK_COUNT, _KEY_CHUNK_SIZE)):
        raise _fail(path, f"the imatrix metadata ({_KEY_DATASETS}, {_KEY_CHUNK_COUNT}, {_KEY_CHUNK_SIZE}) is "
                          f"missing, as llama-quantize also refuses")
    pairs: dict[str, dict[str, object]] = {}
    for t in reader.tensors:
        for suffix in (_SUMS, _COUNTS):
            if t.name.endswith(suffix):
                if t.tensor_type != gguf.GGMLQuantizationType.F32:
                    raise _fail(path, f"tensor {t.name!r} is {t.tensor_type.name}; imatrix sums and counts are F32")
                pairs.setdefault(t.name[:-len(suffix)], {})[suffix] = t
    if not pairs:
        raise _fail(path, "it holds no '<tensor>.in_sum2' / '<tensor>.counts' pairs")
    weights = {name: _gguf_entry(path, name, p) for name, p in sorted(pairs.items())}
    datasets = [str(d) for d in (_field_value(reader, _KEY_DATASETS) or [])]
    return Imatrix(weights, "gguf", datasets, int(_field_value(reader, _KEY_CHUNK_COUNT)),
                   int(_field_value(reader, _KEY_CHUNK_SIZE)))


def _gguf_entry(path: Path, name: str, pair: dict[str, object]) -> np.ndarray:
    if _SUMS not in pair or _COUNTS not in pair:
        raise _fail(path, f"entry {name!r} has {'sums' if _SUMS in pair else 'counts'} but not "
                          f"{'counts' if _SUMS in pair else 'sums'}")
    sums = np.asarray(pair[_SUMS].data, dtype=np.float32).reshape(-1)
    counts = np.rint(np.asarray(pair[_COUNTS].data, dtype=np.float64).reshape(-1))  # std::lround
    n_mat = counts.size
    if n_mat == 0 or sums.size == 0 or sums.size % n_mat:
        raise _fail(path, f"entry {name!r} has {sums.size} sums for {n_mat} counts")
    per = sums.reshape(n_mat, -1)
    c = counts.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(c > 0, per / np.where(c > 0, c, 1), np.float32(1))  # unused experts: weight 1
    return out.astype(np.float32).reshape(-1)


# ---- validation and lookup ---------------------------------------------------------------------------------
def _validate(path: Path, im: Imatrix) -> None:
    for name, w in im.weights.items():
        if not np.all(np.isfinite(w)):
            raise _fail(path, f"entry {name!r} holds NaN or Inf values (the imatrix run diverged); recompute it")
        if np.any(w < 0):
            raise _fail(path, f"entry {name!r} holds negative importance values, which sums of squares cannot be")


def imatrix_for(weights: dict[str, np.ndarray] | Imatrix | None, name: str,
                shape: tuple[int, ...]) -> np.ndarray | None:
    """The importance weights for tensor ``name`` of numpy ``shape``, as llama_model_quantize_impl picks them.

    Returns None when there is no imatrix or no entry (logged).  The entry must hold ``n_cols`` values
    (``n_expert * n_cols`` for 3-D expert tensors), else ImatrixFileError: the file belongs to another model.
    A wrongly sized entry for the token embedding is ignored (llama.cpp's imatrix never fits it).
    For 3-D tensors the result is ``(n_expert, n_cols)``, else ``(n_cols,)``.
    """
    if weights is None:
        return None
    if isinstance(weights, Imatrix):
        weights = weights.weights
    w = weights.get(name)
    if w is None:
        log.info("imatrix has no weights for %s; quantizing it without", name)
        return None
    n_cols = shape[-1]
    n_mat = shape[0] if len(shape) == 3 else 1
    if w.size != n_cols * n_mat:
        if name in _TOKEN_EMBD_NAMES:
            return None
        raise ImatrixFileError(
            f"the imatrix entry for {name} has {w.size} values but the tensor needs {n_cols * n_mat}; "
            f"the imatrix was computed for a different model: use one made from this checkpoint")
    return w.reshape(n_mat, n_cols) if len(shape) == 3 else w
