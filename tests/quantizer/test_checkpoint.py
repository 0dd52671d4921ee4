"""Reading checkpoints: folders, Hub repo ids in the local HF cache, shards, dtypes, and streaming memory."""
from __future__ import annotations

import os
import tracemalloc

import numpy as np
import pytest

import quantizer
from quantizer.checkpoint import Checkpoint, model_name, resolve_source, to_float32

from . import tiny_models as tm


@pytest.fixture(scope="module")
def tiny():
    cfg = tm.make_config("llama", 49152)
    return cfg, tm.make_weights(cfg, seed=3)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, "bf16"])
def test_every_dtype_reads_back_exactly(tmp_path, tiny, dtype):
    cfg, w = tiny
    ckpt = tm.write_checkpoint(tmp_path, cfg, w, dtype=dtype, tokenizer=tm.SMOL_TOKENIZER)
    want = tm.stored_as_float32(w, dtype)
    with Checkpoint(ckpt) as c:
        assert list(c.tensors) == sorted(w)  # llama.cpp's reading order
        for name, e in c.tensors.items():
            got = to_float32(c.raw(name), e.dtype)
            assert got.dtype == np.float32 and np.array_equal(got, want[name]), name


def test_sharded_equals_single_file(tmp_path, tiny):
    cfg, w = tiny
    one = tm.write_checkpoint(tmp_path / "one", cfg, w, dtype="bf16", tokenizer=tm.SMOL_TOKENIZER)
    three = tm.write_checkpoint(tmp_path / "three", cfg, w, dtype="bf16", tokenizer=tm.SMOL_TOKENIZER, shards=3)
    assert len(list(three.glob("model-*.safetensors"))) == 3
    quantizer.convert(one, tmp_path / "a.gguf", "BF16")
    quantizer.convert(three, tmp_path / "b.gguf", "BF16")
    # same tensors (the order is llama.cpp's: shard by shard, names sorted within each)
    assert _tensor_bytes(tmp_path / "a.gguf") == _tensor_bytes(tmp_path / "b.gguf")


def _tensor_bytes(path) -> dict:
    raw = path.read_bytes()
    infos = tm.read_gguf(path)[1]
    ends = sorted(off for _, _, off in infos.values())[1:] + [len(raw)]
    by_offset = dict(zip(sorted(off for _, _, off in infos.values()), ends, strict=True))
    return {name: (shape, qtype, raw[off:by_offset[off]]) for name, (shape, qtype, off) in infos.items()}


def test_hub_repo_id_from_the_local_cache(tmp_path, tiny, monkeypatch):
    cfg, w = tiny
    hub = tmp_path / "hf" / "hub"
    repo = hub / "models--deepseek-ai--Tiny-Distill"
    snap = repo / "snapshots" / "0123abcd"
    tm.write_checkpoint(snap, cfg, w, dtype=np.float16, tokenizer=tm.SMOL_TOKENIZER)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert resolve_source("deepseek-ai/Tiny-Distill") == snap.resolve()
    assert model_name("deepseek-ai/Tiny-Distill") == "Tiny-Distill"
    assert model_name(snap) == "Tiny-Distill"  # not the commit hash
    res = quantizer.convert("deepseek-ai/Tiny-Distill", tmp_path / "m.gguf", "F16")
    # named as convert_hf_to_gguf.py names a folder called Tiny-Distill (gguf.Metadata), not after the commit
    assert tm.read_gguf(res.path)[0]["general.name"][0] == "Tiny Distill"


def test_default_cli_output_goes_to_the_models_dir(tmp_path, tiny, capsys):
    from app.cli import main
    from app.core.paths import models_dir

    cfg, w = tiny
    ckpt = tm.write_checkpoint(tmp_path / "My-Model", cfg, w, dtype=np.float16, tokenizer=tm.SMOL_TOKENIZER)
    before = sorted(p.name for p in ckpt.iterdir())
    assert main(["quantize", str(ckpt), "--type", "q8_0", "--threads", "2"]) == 0
    out = models_dir() / "My-Model" / "My-Model-Q8_0.gguf"
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{out}  ") and line.endswith(" s") and " bpw " in line
    assert out.is_file() and sorted(p.name for p in ckpt.iterdir()) == before  # nothing written to the source


def test_peak_memory_is_about_two_float32_copies_of_the_largest_tensor(tmp_path):
    """Streaming: the conversion's peak Python/numpy allocation stays near 2 x the largest tensor in float32,
    far below the checkpoint's size (mmap'd pages are not allocations)."""
    cfg = tm.make_config("llama", 49152, intermediate_size=32768, num_hidden_layers=6)
    w = tm.make_weights(cfg, seed=4)
    ckpt = tm.write_checkpoint(tmp_path / "ckpt", cfg, w, dtype=np.float16, tokenizer=tm.SMOL_TOKENIZER)
    del w
    largest_f32 = 64 * 32768 * 4
    total = sum(f.stat().st_size for f in ckpt.glob("*.safetensors"))
    assert total > 10 * largest_f32 / 2
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        quantizer.convert(ckpt, tmp_path / "m.gguf", "Q8_0", threads=1)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    constant = 48 * 2**20  # vocabulary and merges as Python objects, gguf writer buffers
    assert peak < 2 * largest_f32 + constant, (peak / 2**20, largest_f32 / 2**20)
    assert peak < total / 2


def test_source_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x" * 16)
    with pytest.raises(quantizer.errors.CheckpointNotFoundError, match="checkpoint folder"):
        resolve_source(f)
    assert os.path.exists(f)
