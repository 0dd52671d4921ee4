"""The model library: checkpoints on disk and the GGUFs made from them (Qt-free; the GUI's Library view and
``distilldesk models`` both read it).

* Checkpoints: snapshots in the standard Hugging Face cache (``huggingface_hub.scan_cache_dir``; every revision
  that holds a config.json is listed, with ``complete=False`` when shards are missing, e.g. an interrupted
  download that ``download()`` would resume), plus the built-in demo checkpoint.
* GGUFs: ``<data dir>/models/<model>/<model>-<TYPE>.gguf`` (where ``distilldesk quantize`` writes) and any extra
  folders/files the user added.  Type, size and bits per weight come from the GGUF header (no tensor data read,
  cached while the file is unchanged); an unreadable file is listed with its ``error`` instead of breaking the listing.
* A GGUF's model name: the folder it sits in under the models folder (where quantize puts it, named after the
  checkpoint; a user can regroup a file by moving it), else the name stored in the GGUF (``general.name``:
  our quantizer writes the checkpoint's name there), else its file name without the type suffix.  A file name
  alone says little: ``m-Q2_K.gguf`` is not a model called "m".
* :func:`scan` groups checkpoints and GGUFs by model name, matched by :func:`group_key` (case, spaces, hyphens
  and underscores ignored: "DeepSeek R1 Distill Qwen 7B" is "DeepSeek-R1-Distill-Qwen-7B"); each group's
  ``reference()`` is the most precise variant present (F32, F16, BF16, then Q8_0): the one comparisons measure
  the others against.  The GUI's Library and ``distilldesk models`` both list :func:`scan`.
"""
from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from . import paths
from .errors import DistillDeskError, RepoNotFoundError
from .gguf_header import file_type_name, read_header

log = logging.getLogger(__name__)

REFERENCE_ORDER = ("F32", "F16", "BF16", "Q8_0")


@dataclass(frozen=True)
class GgufEntry:
    path: Path
    model: str  # the group it belongs to
    file_type: str  # "Q4_K_M", "F16", ... ("?" when unknown)
    size_bytes: int
    n_params: int = 0
    bpw: float = 0.0  # bits per weight: tensor data bits / parameters
    error: str = ""  # why the header could not be read; "" when fine

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass(frozen=True)
class CheckpointEntry:
    name: str  # the model name GGUFs are grouped under (the repo's name)
    path: Path  # the folder quantizer.convert takes
    size_bytes: int
    repo_id: str = ""  # "" for folders outside the HF cache (the demo)
    commit: str = ""
    refs: tuple[str, ...] = ()  # branches/tags pointing at this snapshot ("main", ...)
    architecture: str = ""
    complete: bool = True  # False: shards missing (run the download again to resume)
    partial_bytes: int = 0  # bytes of interrupted transfers waiting to be resumed (whole repo)


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


# ---- GGUFs ----------------------------------------------------------------------------------------------------
def type_from_filename(p: Path) -> str:
    from quantizer.recipes import RECIPES

    stem = p.stem.upper()
    for name in sorted(RECIPES, key=len, reverse=True):
        if any(stem.endswith(sep + name) for sep in "-._"):
            return name
    return "?"


def model_from_filename(p: Path) -> str:
    t = type_from_filename(p)
    return (p.stem[: -len(t) - 1] if t != "?" else p.stem) or p.stem


def group_key(name: str) -> str:
    """How model names are matched: case-insensitive, runs of spaces, hyphens and underscores alike."""
    return re.sub(r"[\s_-]+", "-", name.strip()).lower()


def _folder_under_models(path: Path) -> str:
    """The first folder below the models folder that holds ``path`` ("" for a file directly in it or elsewhere)."""
    root = paths.models_dir()
    rel = path.relative_to(root).parts if path.is_relative_to(root) else ()
    return rel[0] if len(rel) > 1 else ""


def read_gguf_entry(path: Path, model: str | None = None) -> GgufEntry:
    """One GGUF as the library lists it, from its header (:func:`app.core.gguf_header.read_header`, cached by
    path, size and mtime: rescanning unchanged files costs a ``stat`` each).  ``model``: the group it belongs
    to; by default the name the module docstring describes."""
    try:
        h = read_header(path)
    except (DistillDeskError, OSError, ValueError) as e:  # a broken file is listed, marked, never fatal
        size = path.stat().st_size if path.exists() else 0
        model = model or _folder_under_models(path) or model_from_filename(path)
        return GgufEntry(path, model, type_from_filename(path), size, error=str(e))
    model = model or _folder_under_models(path) or h.name.strip() or model_from_filename(path)
    return GgufEntry(path, model, file_type_name(h.file_type, type_from_filename(path)), h.size_bytes,
                     h.n_params, h.bits_per_weight)


def output_path(model: str, recipe: str) -> Path:
    """Where the GGUF of ``model`` quantized with ``recipe`` goes: ``<models dir>/<model>/<model>-<RECIPE>.gguf``.
    Pure (nothing is created: the GUI shows it while the user is still choosing); whoever writes the file
    creates its folder."""
    return paths.models_dir() / model / f"{model}-{recipe.upper()}.gguf"


def make_folders(folder: Path) -> list[Path]:
    """``mkdir -p folder`` for a GGUF about to be written; returns the folders it created, outermost first, for
    :func:`remove_empty_folders` when the job fails or is cancelled."""
    created = [p for p in [folder, *folder.parents] if not p.exists()][::-1]
    folder.mkdir(parents=True, exist_ok=True)
    return created


def remove_empty_folders(created: list[Path]) -> None:
    """Undo :func:`make_folders` after a failed job: its folders go, innermost first, while they are empty (a
    file another job put there keeps its folder)."""
    for p in reversed(created):
        try:
            p.rmdir()
        except OSError:
            break


def list_ggufs(extra_dirs: Iterable[str | Path] = (), extra_files: Iterable[str | Path] = (),
               hidden: Iterable[str | Path] = ()) -> list[GgufEntry]:
    """GGUFs of the models folder, the extra folders and the extra files, less those in ``hidden`` (files the
    user removed from the library but kept on disk)."""
    found: dict[Path, None] = dict.fromkeys(sorted(paths.models_dir().rglob("*.gguf")))
    for d in extra_dirs:
        found.update(dict.fromkeys(sorted(Path(d).expanduser().glob("*.gguf"))))
    for f in extra_files:
        p = Path(f).expanduser()
        if p.is_file():
            found[p] = None
    for h in hidden:
        found.pop(Path(h).expanduser(), None)
    return [read_gguf_entry(p) for p in found]


def made_by_us(path: str | Path) -> bool:
    """Whether ``path`` lies in the models folder (where DistillDesk writes its GGUFs); any other file is the
    user's own, which the library lists but should not delete lightly."""
    return Path(path).resolve().is_relative_to(paths.models_dir().resolve())


def delete_gguf(path: str | Path) -> None:
    """Remove one GGUF (and its folder under models_dir when that leaves it empty)."""
    path = Path(path)
    path.unlink()
    parent = path.parent
    try:
        if parent != paths.models_dir() and parent.is_relative_to(paths.models_dir()) and not any(parent.iterdir()):
            parent.rmdir()
    except OSError:
        pass


# ---- checkpoints ----------------------------------------------------------------------------------------------
def _architecture(folder: Path) -> str:
    try:
        archs = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("architectures") or [""]
        return str(archs[0])
    except (OSError, ValueError, AttributeError):
        return ""


def _dir_size(p: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(p):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size  # follows the snapshot symlinks to the blobs
            except OSError:
                pass
    return total


def hf_checkpoints() -> list[CheckpointEntry]:
    """Every cached model revision that holds a config.json, newest first within a repo ('main' first)."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    from .hub import hub_cache_dir, snapshot_complete

    cache = hub_cache_dir()
    try:
        info = scan_cache_dir(cache)
    except CacheNotFound:
        return []
    for w in info.warnings:
        log.debug("HF cache scan: %s", w)
    out: list[CheckpointEntry] = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id.lower()):
        if repo.repo_type != "model":
            continue
        partial = sum(p.stat().st_size for p in (repo.repo_path / "blobs").glob("*.incomplete"))
        revs = sorted(repo.revisions, key=lambda r: ("main" not in r.refs, -r.last_modified))
        for rev in revs:
            snap = Path(rev.snapshot_path)
            if not (snap / "config.json").is_file():
                continue
            out.append(CheckpointEntry(repo.repo_id.split("/")[-1], snap, rev.size_on_disk, repo.repo_id,
                                       rev.commit_hash, tuple(sorted(rev.refs)), _architecture(snap),
                                       snapshot_complete(snap), partial))
    return out


def demo_checkpoints() -> list[CheckpointEntry]:
    out = []
    demo = paths.cache_dir() / "demo"
    if demo.is_dir():
        for d in sorted(demo.iterdir()):
            if (d / "config.json").is_file() and any(d.glob("*.safetensors")):
                out.append(CheckpointEntry(d.name, d, _dir_size(d), architecture=_architecture(d)))
    return out


def list_checkpoints() -> list[CheckpointEntry]:
    return demo_checkpoints() + hf_checkpoints()


def delete_checkpoint(repo_id: str, commit: str | None = None) -> int:
    """Remove a cached checkpoint (one revision, or every revision of the repo) the way ``hf cache rm`` does:
    blobs no other revision uses are deleted.  Returns the bytes freed."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    from .hub import hub_cache_dir

    try:
        info = scan_cache_dir(hub_cache_dir())
    except CacheNotFound:
        info = None
    repo = next((r for r in info.repos if r.repo_id == repo_id and r.repo_type == "model"), None) if info else None
    if repo is None:
        raise RepoNotFoundError(f"{repo_id} is not in the local Hugging Face cache ({hub_cache_dir()}); "
                                f"nothing to delete")
    commits = [r.commit_hash for r in repo.revisions if commit is None or r.commit_hash.startswith(commit)]
    if not commits:
        raise RepoNotFoundError(f"{repo_id} has no cached revision {commit!r}; `distilldesk models` lists them")
    strategy = info.delete_revisions(*commits)
    freed = strategy.expected_freed_size
    strategy.execute()
    if commit is None:  # also drop refs and interrupted transfers of the repo
        import shutil

        shutil.rmtree(repo.repo_path, ignore_errors=True)
    return freed


# ---- grouping -------------------------------------------------------------------------------------------------
def scan(extra_dirs: Iterable[str | Path] = (), extra_files: Iterable[str | Path] = (),
         hidden: Iterable[str | Path] = ()) -> list[ModelGroup]:
    """Every model group: checkpoints and GGUFs matched by model name (:func:`group_key`), sorted by name;
    within a group the reference variant comes first, then larger files first.  A group is named after its
    checkpoint, else its first GGUF."""
    groups: dict[str, ModelGroup] = {}
    for ck in list_checkpoints():
        g = groups.setdefault(group_key(ck.name), ModelGroup(ck.name))
        if g.checkpoint is None or (not g.checkpoint.complete and ck.complete):
            g.checkpoint = ck
    for e in list_ggufs(extra_dirs, extra_files, hidden):
        g = groups.setdefault(group_key(e.model), ModelGroup(e.model))
        g.ggufs.append(e if e.model == g.name else GgufEntry(e.path, g.name, e.file_type, e.size_bytes,
                                                             e.n_params, e.bpw, e.error))
    order = {t: i for i, t in enumerate(REFERENCE_ORDER)}
    for g in groups.values():
        g.ggufs.sort(key=lambda e: (order.get(e.file_type, len(order)), -e.size_bytes))
    return sorted(groups.values(), key=lambda g: g.name.lower())
