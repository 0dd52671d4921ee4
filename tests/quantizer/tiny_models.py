"""Tiny synthetic Llama / Qwen2 / Qwen3 checkpoints and a numpy forward pass of the Hugging Face model.

The forward pass is written from the Hugging Face modelling code (rotate-half RoPE on the *unpermuted* weights,
q/k/v biases, per-head q/k RMS norms, GQA, SwiGLU, Llama-3 rope scaling of inv_freq), independently of the
converter, so llama.cpp's logits on our GGUF can be checked against it: a wrong permutation, bias, norm or
rope_freqs shows up as different logits.
"""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent.parent / "data"
R1_TOKENIZER = DATA / "deepseek-r1-distill-qwen"
SMOL_TOKENIZER = Path(__file__).resolve().parents[2] / "resources" / "demo" / "smollm2-135m-instruct"

BASE = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "max_position_embeddings": 4096, "rope_theta": 10000.0,
        "tie_word_embeddings": False, "hidden_act": "silu"}


def make_config(arch: str, vocab_size: int, **extra) -> dict:
    kinds = {"llama": ("LlamaForCausalLM", "llama"), "qwen2": ("Qwen2ForCausalLM", "qwen2"),
             "qwen3": ("Qwen3ForCausalLM", "qwen3")}
    hf, model_type = kinds[arch]
    return {"architectures": [hf], "model_type": model_type, **BASE, "vocab_size": vocab_size, **extra}


def _head_dim(cfg: dict) -> int:
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def make_weights(cfg: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights with the HF names and shapes of ``cfg``'s architecture."""
    rng = np.random.default_rng(seed)
    d, ff, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = _head_dim(cfg)
    nq, nkv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    kind = cfg["model_type"]

    def mat(*shape, scale=0.08):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def norm(n):
        return (1.0 + rng.standard_normal(n) * 0.1).astype(np.float32)

    w = {"model.embed_tokens.weight": mat(v, d, scale=0.5), "model.norm.weight": norm(d)}
    if not cfg.get("tie_word_embeddings"):
        w["lm_head.weight"] = mat(v, d, scale=0.2)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w |= {p + "input_layernorm.weight": norm(d), p + "post_attention_layernorm.weight": norm(d),
              p + "self_attn.q_proj.weight": mat(nq, d), p + "self_attn.k_proj.weight": mat(nkv, d),
              p + "self_attn.v_proj.weight": mat(nkv, d), p + "self_attn.o_proj.weight": mat(d, nq),
              p + "mlp.gate_proj.weight": mat(ff, d), p + "mlp.up_proj.weight": mat(ff, d),
              p + "mlp.down_proj.weight": mat(d, ff)}
        if kind == "qwen2":
            w |= {p + "self_attn.q_proj.bias": mat(nq, scale=0.3), p + "self_attn.k_proj.bias": mat(nkv, scale=0.3),
                  p + "self_attn.v_proj.bias": mat(nkv, scale=0.3)}
        if kind == "qwen3":
            w |= {p + "self_attn.q_norm.weight": norm(hd), p + "self_attn.k_norm.weight": norm(hd)}
    return w


def write_checkpoint(folder: Path, cfg: dict, weights: dict[str, np.ndarray], *, dtype=np.float16,
                     tokenizer: Path = R1_TOKENIZER, shards: int = 1) -> Path:
    """Save ``weights`` (cast to ``dtype``; "bf16" for bfloat16) as safetensors next to config and tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tokenizer / f).exists():
            shutil.copyfile(tokenizer / f, folder / f)
    stored = {k: _cast(v, dtype) for k, v in weights.items()}
    if shards == 1:
        save_safetensors(folder / "model.safetensors", stored)
        return folder
    names = sorted(stored)
    weight_map = {}
    for s in range(shards):
        part = {n: stored[n] for n in names[s::shards]}
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_safetensors(folder / fname, part)
        weight_map |= {n: fname for n in part}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def save_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """Write a safetensors file by hand (uint16 arrays are stored as BF16, which numpy cannot express)."""
    names = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.uint16): "BF16"}
    header: dict = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        header[name] = {"dtype": names[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        blobs.append(a.tobytes())
        offset += a.nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for b in blobs:
            f.write(b)


def _cast(x: np.ndarray, dtype) -> np.ndarray:
    if dtype == "bf16":  # round to nearest even, as torch does; stored as the raw 16 bits
        bits = x.astype(np.float32).view(np.uint32)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        return bits.astype(np.uint16)
    return x.astype(dtype)


def stored_as_float32(weights: dict[str, np.ndarray], dtype) -> dict[str, np.ndarray]:
    """The weights as the checkpoint holds them (after the cast), widened back to float32."""
    if dtype == "bf16":
        return {k: (_cast(v, "bf16").astype(np.uint32) << 16).view(np.float32) for k, v in weights.items()}
    return {k: v.astype(dtype).astype(np.float32) for k, v in weights.items()}


# ---- the Hugging Face forward pass ----------------------------------------------------------------------------
def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    x64 = x.astype(np.float64)
    return x64 / np.sqrt((x64 * x64).mean(-1, keepdims=True) + eps) * w


def inv_freq(cfg: dict) -> np.ndarray:
    """HF's rotary inverse frequencies, with ``_compute_llama3_parameters`` when rope_type is llama3."""
    hd = _head_dim(cfg)
    base = cfg.get("rope_theta", 10000.0)
    inv = 1.0 / base ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    rs = cfg.get("rope_scaling") or {}
    if rs.get("rope_type") != "llama3":
        return inv
    factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    old = rs["original_max_position_embeddings"]
    wavelen = 2 * np.pi / inv
    scaled = np.where(wavelen > old / low, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old / high) & ~(wavelen > old / low)
    return np.where(medium, smoothed, scaled)


def _rope(x: np.ndarray, pos: np.ndarray, inv: np.ndarray) -> np.ndarray:
    ang = pos[:, None] * inv[None, :]  # (T, hd/2)
    cos = np.concatenate([np.cos(ang)] * 2, -1)[:, None, :]
    sin = np.concatenate([np.sin(ang)] * 2, -1)[:, None, :]
    half = x.shape[-1] // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], -1)
    return x * cos + rot * sin


def forward(cfg: dict, w: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """Logits (T, vocab) of the HF model in float64."""
    eps, hd = cfg["rms_norm_eps"], _head_dim(cfg)
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    T = len(ids)
    pos = np.arange(T, dtype=np.float64)
    inv = inv_freq(cfg)
    h = w["model.embed_tokens.weight"][ids].astype(np.float64)
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        x = _rms(h, w[p + "input_layernorm.weight"], eps)
        q, k, v = (x @ w[p + f"self_attn.{n}_proj.weight"].T + w.get(p + f"self_attn.{n}_proj.bias", 0.0)
                   for n in "qkv")
        q, k, v = q.reshape(T, nh, hd), k.reshape(T, nkv, hd), v.reshape(T, nkv, hd)
        if p + "self_attn.q_norm.weight" in w:
            q, k = _rms(q, w[p + "self_attn.q_norm.weight"], eps), _rms(k, w[p + "self_attn.k_norm.weight"], eps)
        q, k = _rope(q, pos, inv), _rope(k, pos, inv)
        k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)
        att = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + mask
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        o = np.einsum("hts,shd->thd", att, v).reshape(T, nh * hd)
        h = h + o @ w[p + "self_attn.o_proj.weight"].T
        x = _rms(h, w[p + "post_attention_layernorm.weight"], eps)
        g = x @ w[p + "mlp.gate_proj.weight"].T
        h = h + ((g / (1 + np.exp(-g))) * (x @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
    out = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return _rms(h, w["model.norm.weight"], eps) @ out.T


# ---- a small independent GGUF reader (gguf.GGUFReader takes seconds on 150k-token vocabularies) -------------
def read_gguf(path: Path) -> tuple[dict, dict]:
    """``({key: (value, [type, item type])}, {tensor: (ggml shape, type, data offset)})``."""
    from gguf import GGUFValueType as V

    scalar = {V.UINT8: "B", V.INT8: "b", V.UINT16: "H", V.INT16: "h", V.UINT32: "I", V.INT32: "i",
              V.FLOAT32: "f", V.BOOL: "?", V.UINT64: "Q", V.INT64: "q", V.FLOAT64: "d"}
    raw = Path(path).read_bytes()
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from("<" + fmt, raw, pos)[0]
        pos += struct.calcsize("<" + fmt)
        return v

    def text():
        nonlocal pos
        n = take("Q")
        pos += n
        return raw[pos - n:pos].decode("utf-8")

    def value(t):
        return text() if t == V.STRING else take(scalar[t])

    assert raw[:4] == b"GGUF" and struct.unpack_from("<I", raw, 4)[0] == 3
    pos = 8
    n_tensors, n_kv = take("Q"), take("Q")
    kv = {}
    for _ in range(n_kv):
        key, t = text(), V(take("I"))
        if t == V.ARRAY:
            it, n = V(take("I")), take("Q")
            kv[key] = ([value(it) for _ in range(n)], [t, it])
        else:
            kv[key] = (value(t), [t])
    infos = {}
    for _ in range(n_tensors):
        name = text()
        shape = [take("Q") for _ in range(take("I"))]
        infos[name] = (shape, take("I"), take("Q"))
    data_start = pos + (-pos % 32)
    return kv, {k: (s, t, data_start + off) for k, (s, t, off) in infos.items()}
