"""Qwen2, Qwen3 and Llama-3.1-style conversion on tiny synthetic checkpoints, run in llama.cpp.

Oracle: a numpy forward pass of the Hugging Face model (tiny_models.forward) on the weights as stored.  With the
F32 recipe llama.cpp must reproduce its logits to float32 rounding and generate the same greedy tokens; a wrong
Q/K permutation, missing bias or q/k norm, or wrong rope_freqs moves the logits by orders of magnitude more.
"""
from __future__ import annotations

import gguf
import numpy as np
import pytest

import quantizer
from quantizer.arch import get_arch, hparams_kv, resolve_config

from . import tiny_models as tm

LLAMA31_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 256}
CASES = {
    "qwen2": dict(tokenizer=tm.R1_TOKENIZER, vocab=151936, dtype="bf16", shards=1, extra={}),
    "qwen3": dict(tokenizer=tm.R1_TOKENIZER, vocab=151936, dtype=np.float16, shards=2, extra={"head_dim": 16}),
    "llama": dict(tokenizer=tm.SMOL_TOKENIZER, vocab=49152, dtype=np.float16, shards=1,
                  extra={"rope_scaling": LLAMA31_ROPE}),
}
PROMPT = list(range(100, 124))


@pytest.fixture(scope="module", params=sorted(CASES))
def converted(request, tmp_path_factory):
    case = CASES[request.param]
    tmp = tmp_path_factory.mktemp(request.param)
    cfg = tm.make_config(request.param, case["vocab"], **case["extra"])
    w = tm.make_weights(cfg)
    ckpt = tm.write_checkpoint(tmp / "ckpt", cfg, w, dtype=case["dtype"], tokenizer=case["tokenizer"],
                               shards=case["shards"])
    res = quantizer.convert(ckpt, tmp / "model.gguf", "F32")
    return request.param, cfg, tm.stored_as_float32(w, case["dtype"]), res


def _llm(path):
    from llama_cpp import Llama

    # F32 KV cache: the default F16 cache would round K/V and blur the comparison
    return Llama(model_path=str(path), n_ctx=64, logits_all=True, type_k=0, type_v=0, n_threads=2, verbose=False)


def test_logits_match_the_hf_forward_pass(converted):
    arch, cfg, w, res = converted
    llm = _llm(res.path)
    llm.eval(PROMPT)
    got = llm.scores[:len(PROMPT)]
    want = tm.forward(cfg, w, PROMPT)
    assert np.abs(got - want).max() < 1e-4 * np.abs(want).max()


def test_greedy_generation_matches(converted):
    _, cfg, w, res = converted
    llm = _llm(res.path)
    ids = list(PROMPT[:8])
    llm.eval(ids)
    ours, theirs = [], []
    for _ in range(4):
        nxt = int(np.argmax(llm.scores[len(ids) - 1]))
        ours.append(nxt)
        theirs.append(int(np.argmax(tm.forward(cfg, w, ids)[-1])))
        ids.append(nxt)
        llm.eval([nxt])
    assert ours == theirs


def test_tensor_layout(converted):
    arch, cfg, _, res = converted
    names = tm.read_gguf(res.path)[1]
    assert ("blk.1.attn_q.bias" in names) == (arch == "qwen2")
    assert ("blk.1.attn_k_norm.weight" in names) == (arch == "qwen3")
    assert ("rope_freqs.weight" in names) == (arch == "llama")
    assert "output.weight" in names and len([n for n in names if n.startswith("blk.1.")]) == {
        "qwen2": 12, "qwen3": 11, "llama": 9}[arch]


def test_llama31_rope_freqs_are_the_scaling_factors(tmp_path):
    """rope_freqs holds inv_freq / scaled_inv_freq; llama.cpp divides theta by it.  And it changes the logits."""
    cfg = tm.make_config("llama", 49152, rope_scaling=LLAMA31_ROPE)
    w = tm.make_weights(cfg, seed=1)
    ckpt = tm.write_checkpoint(tmp_path / "ckpt", cfg, w, dtype=np.float16, tokenizer=tm.SMOL_TOKENIZER)
    res = quantizer.convert(ckpt, tmp_path / "m.gguf", "F32")
    shape, qtype, offset = tm.read_gguf(res.path)[1]["rope_freqs.weight"]
    assert qtype == gguf.GGMLQuantizationType.F32 and shape == [8]
    got = np.frombuffer(res.path.read_bytes(), np.float32, count=8, offset=offset)
    plain = dict(cfg, rope_scaling=None)
    want = tm.inv_freq(plain) / tm.inv_freq(cfg)
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=1e-6)
    assert want[0] == 1.0 and want[-1] == 8.0 and 1.0 < want[3] < 8.0  # kept, smoothed and scaled dims
    llm = _llm(res.path)
    llm.eval(PROMPT)
    w32 = tm.stored_as_float32(w, np.float16)
    err_scaled = np.abs(llm.scores[:len(PROMPT)] - tm.forward(cfg, w32, PROMPT)).max()
    err_unscaled = np.abs(llm.scores[:len(PROMPT)] - tm.forward(plain, w32, PROMPT)).max()
    assert err_scaled < 1e-3 < err_unscaled


def test_qwen2_hparams_equal_the_published_r1_gguf():
    """The qwen2.* keys our tables write for R1-Distill-Qwen-7B's config are those of the published GGUF."""
    import json

    cfg = json.loads((tm.R1_TOKENIZER / "config-7b.json").read_text())
    arch = get_arch(cfg)
    ours = {k: (v, t) for k, v, t in hparams_kv(arch, resolve_config(arch, cfg), 15)}
    ref = tm.read_gguf(tm.R1_TOKENIZER / "ggml-vocab-deepseek-r1-qwen.gguf")[0]
    theirs = {k: (v, t[0]) for k, (v, t) in ref.items() if k.startswith("qwen2.") or k == "general.file_type"}
    assert set(ours) == set(theirs)
    for k, (v, t) in theirs.items():
        assert ours[k][1] == t
        assert np.float32(ours[k][0]) == np.float32(v) if t == gguf.GGUFValueType.FLOAT32 else ours[k][0] == v


def test_qwen3_writes_key_length_and_llama_rope_dimension(converted):
    arch, cfg, _, res = converted
    fields = tm.read_gguf(res.path)[0]
    assert (f"{arch}.attention.key_length" in fields) == (arch != "qwen2")  # qwen2 config has no head_dim
    assert (f"{arch}.rope.dimension_count" in fields) == (arch == "llama")
    assert fields["general.file_type"][0] == 0
