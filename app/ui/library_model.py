"""What the Library view lists: checkpoints and the GGUF variants made from them.

This is the view's adapter over the services (Qt-free, so it runs in a worker thread): it uses
``app.core.library`` when that service exists and otherwise scans on its own -- GGUFs under
``app.core.paths.models_dir()`` (``<model>/<model>-<TYPE>.gguf``) plus extra folders/files from Settings, and
the checkpoints it knows about (the demo checkpoint, Hugging Face cache snapshots holding safetensors).
GGUF headers are read with :func:`app.core.logits.read_gguf_info` (no tensor data is touched).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from app.core import paths

log = logging.getLogger(__name__)

# Which variant serves as the reference when comparing: the first present in this order.
REFERENCE_ORDER = ("F32", "F16", "BF16", "Q8_0")


@dataclass(frozen=True)
class GgufEntry:
    path: Path
    model: str  # the group it belongs to
    file_type: str  # "Q4_K_M", "F16", ... ("?" when unreadable)
    size_bytes: int
    n_params: int = 0
    bpw: float = 0.0
    error: str = ""  # why the header could not be read (corrupt/truncated file); "" when fine

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass(frozen=True)
class CheckpointEntry:
    name: str
    path: Path
    size_bytes: int
    repo_id: str = ""


@dataclass
class ModelGroup:
    name: str
    checkpoint: CheckpointEntry | None = None
    ggufs: list[GgufEntry] = field(default_factory=list)

    def reference(self) -> GgufEntry | None:
        ok = {g.file_type: g for g in self.ggufs if g.ok}
        for t in REFERENCE_ORDER:
            if t in ok:
                return ok[t]
        return None

    def quantized(self) -> list[GgufEntry]:
        ref = self.reference()
        return [g for g in self.ggufs if g.ok and (ref is None or g.path != ref.path)]


def file_type_name(ftype: int | None, fallback: str = "?") -> str:
    """general.file_type (llama_ftype) -> recipe name."""
    if ftype is None:
        return fallback
    try:
        from quantizer.recipes import RECIPES

        for name, info in RECIPES.items():
            if info.ftype == ftype:
                return name
    except ImportError:
        pass
    return fallback


def _type_from_filename(p: Path) -> str:
    stem = p.stem.upper()
    try:
        from quantizer.recipes import RECIPES

        for name in sorted(RECIPES, key=len, reverse=True):
            if stem.endswith("-" + name) or stem.endswith("." + name) or stem.endswith("_" + name):
                return name
    except ImportError:
        pass
    return "?"


# Header facts by (path, size, mtime): reading a GGUF header parses its whole vocabulary (~0.1-0.3 s for a 150k
# vocabulary), so an unchanged file is read once per session.
_CACHE: dict[tuple[str, int, int], GgufEntry] = {}


def read_gguf_entry(path: Path, model: str) -> GgufEntry:
    try:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
    except OSError:
        key = None
    hit = _CACHE.get(key) if key else None
    if hit is not None:
        return hit if hit.model == model else GgufEntry(hit.path, model, hit.file_type, hit.size_bytes,
                                                        hit.n_params, hit.bpw, hit.error)
    entry = _read_gguf_entry(path, model)
    if key is not None and entry.ok:
        _CACHE[key] = entry
    return entry


def _read_gguf_entry(path: Path, model: str) -> GgufEntry:
    from app.core.logits import read_gguf_info

    try:
        info = read_gguf_info(path)
    except Exception as e:  # noqa: BLE001 - a broken file is listed (marked), never fatal
        size = path.stat().st_size if path.exists() else 0
        return GgufEntry(path, model, _type_from_filename(path), size, error=str(e))
    return GgufEntry(path, model, file_type_name(info.file_type, _type_from_filename(path)), info.size_bytes,
                     info.n_params, info.bits_per_weight)


def output_path(model: str, recipe: str) -> Path:
    """Where the GGUF of ``model`` quantized with ``recipe`` goes."""
    return paths.models_dir() / model / f"{model}-{recipe}.gguf"


def _dir_size(p: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(p):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size  # follows HF cache symlinks to the blobs
            except OSError:
                pass
    return total


def _known_checkpoints() -> list[CheckpointEntry]:
    out: list[CheckpointEntry] = []
    demo = paths.cache_dir() / "demo"
    if demo.is_dir():
        for d in sorted(demo.iterdir()):
            if (d / "config.json").is_file() and any(d.glob("*.safetensors")):
                out.append(CheckpointEntry(d.name, d, _dir_size(d)))
    try:
        from quantizer.checkpoint import hf_cache_dir
    except ImportError:
        return out
    hub = hf_cache_dir()
    if hub.is_dir():
        for repo in sorted(hub.glob("models--*")):
            snaps = sorted((s for s in (repo / "snapshots").glob("*") if (s / "config.json").exists()
                            and any(s.glob("*.safetensors"))), key=lambda s: s.stat().st_mtime)
            if snaps:
                repo_id = repo.name[len("models--"):].replace("--", "/")
                out.append(CheckpointEntry(repo_id.split("/")[-1], snaps[-1], _dir_size(snaps[-1]), repo_id))
    return out


def _gguf_files(extra_dirs: Iterable[str], extra_files: Iterable[str]) -> list[tuple[Path, str]]:
    found: dict[Path, str] = {}
    root = paths.models_dir()
    for p in sorted(root.rglob("*.gguf")):
        rel = p.relative_to(root)
        found[p] = rel.parts[0] if len(rel.parts) > 1 else _model_from_filename(p)
    for d in extra_dirs:
        for p in sorted(Path(d).expanduser().glob("*.gguf")):
            found.setdefault(p, _model_from_filename(p))
    for f in extra_files:
        p = Path(f).expanduser()
        if p.exists():
            found.setdefault(p, _model_from_filename(p))
    return list(found.items())


def _model_from_filename(p: Path) -> str:
    t = _type_from_filename(p)
    stem = p.stem
    if t != "?":
        stem = stem[: -len(t) - 1]
    return stem or p.stem


def scan(extra_dirs: Iterable[str] = (), extra_files: Iterable[str] = ()) -> list[ModelGroup]:
    """Every model group: checkpoints and GGUFs matched by model name (case-insensitive)."""
    groups: dict[str, ModelGroup] = {}
    for ck in _known_checkpoints():
        groups.setdefault(ck.name.lower(), ModelGroup(ck.name)).checkpoint = ck
    for p, model in _gguf_files(extra_dirs, extra_files):
        g = groups.setdefault(model.lower(), ModelGroup(model))
        g.ggufs.append(read_gguf_entry(p, g.name))
    order = {t: i for i, t in enumerate(REFERENCE_ORDER)}
    for g in groups.values():
        g.ggufs.sort(key=lambda e: (order.get(e.file_type, len(order)), -e.size_bytes))
    return sorted(groups.values(), key=lambda g: g.name.lower())


def delete_gguf(path: Path) -> None:
    """Remove one GGUF (and its folder under models_dir when that leaves it empty)."""
    path = Path(path)
    path.unlink()
    parent = path.parent
    try:
        if parent != paths.models_dir() and parent.is_relative_to(paths.models_dir()) and not any(parent.iterdir()):
            parent.rmdir()
    except OSError:
        pass
