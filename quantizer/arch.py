"""Architecture tables: how a Hugging Face ``*ForCausalLM`` checkpoint becomes a llama.cpp GGUF.

Each supported architecture is one :class:`Arch` record of data: its tensor-name map (with the shape every tensor
must have, in symbolic dimensions resolved from config.json), which tensors get Llama's rotary Q/K permutation,
and the ordered list of hyper-parameter keys llama.cpp's ``convert_hf_to_gguf.py`` writes (``TextModel`` /
``LlamaModel`` / ``Qwen2Model`` / ``Qwen3Model``, with transformers' config defaults filled in as its
``AutoConfig`` would).  Adding an architecture means adding a record, not a branch.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gguf import GGUFValueType as V

from .errors import ConfigError, ShapeMismatchError, UnsupportedArchitectureError
from .recipes import ModelParams

OMIT = object()  # default meaning "not written when config.json lacks it"
REQUIRED = object()  # default meaning "config.json must have it"


@dataclass(frozen=True)
class TensorRule:
    """One HF tensor -> GGUF tensor.  ``shape`` in numpy order, as symbolic dims (see :func:`dims`)."""
    hf: str  # HF name; "{bid}" stands for the layer number
    gguf: str  # GGUF name; "{bid}" likewise
    shape: tuple[str, ...]
    required: bool = True
    permute: str | None = None  # "n_head" / "n_head_kv": Llama's rotary permutation with that many heads


@dataclass(frozen=True)
class HParam:
    """One ``{arch}.*`` metadata key: first config key present, else ``default`` (a value, OMIT or REQUIRED)."""
    key: str
    config_keys: tuple[str, ...]
    vtype: V
    default: Any = REQUIRED


@dataclass(frozen=True)
class Arch:
    hf_name: str
    name: str  # GGUF general.architecture
    tensors: tuple[TensorRule, ...]
    hparams: tuple[HParam, ...]  # written before general.file_type
    hparams_after_file_type: tuple[HParam, ...] = ()
    config_defaults: Mapping[str, Any] = field(default_factory=dict)  # transformers' defaults for this config
    derive_head_dim: bool = False  # config gets head_dim = hidden_size // num_attention_heads when absent
    rope_freqs_tensor: bool = False  # Llama-3 rope scaling becomes a rope_freqs tensor
    vocab_add_space_prefix: bool = False  # tokenizer_config add_prefix_space -> tokenizer.ggml.add_space_prefix
    vocab_no_bos_sizes: tuple[int, ...] = ()  # vocab sizes llama.cpp writes add_bos_token = false for


# ---- tensor maps -----------------------------------------------------------------------------------------
_GLOBAL = (
    TensorRule("model.embed_tokens.weight", "token_embd.weight", ("n_vocab", "n_embd")),
    TensorRule("model.norm.weight", "output_norm.weight", ("n_embd",)),
    TensorRule("lm_head.weight", "output.weight", ("n_vocab", "n_embd"), required=False),
)
_L = "model.layers.{bid}."
_B = "blk.{bid}."
_LAYER = (
    TensorRule(_L + "input_layernorm.weight", _B + "attn_norm.weight", ("n_embd",)),
    TensorRule(_L + "self_attn.q_proj.weight", _B + "attn_q.weight", ("n_q", "n_embd")),
    TensorRule(_L + "self_attn.k_proj.weight", _B + "attn_k.weight", ("n_kv", "n_embd")),
    TensorRule(_L + "self_attn.v_proj.weight", _B + "attn_v.weight", ("n_kv", "n_embd")),
    TensorRule(_L + "self_attn.o_proj.weight", _B + "attn_output.weight", ("n_embd", "n_q")),
    TensorRule(_L + "post_attention_layernorm.weight", _B + "ffn_norm.weight", ("n_embd",)),
    TensorRule(_L + "mlp.gate_proj.weight", _B + "ffn_gate.weight", ("n_ff", "n_embd")),
    TensorRule(_L + "mlp.up_proj.weight", _B + "ffn_up.weight", ("n_ff", "n_embd")),
    TensorRule(_L + "mlp.down_proj.weight", _B + "ffn_down.weight", ("n_embd", "n_ff")),
)
_QKV_BIAS = (
    TensorRule(_L + "self_attn.q_proj.bias", _B + "attn_q.bias", ("n_q",)),
    TensorRule(_L + "self_attn.k_proj.bias", _B + "attn_k.bias", ("n_kv",)),
    TensorRule(_L + "self_attn.v_proj.bias", _B + "attn_v.bias", ("n_kv",)),
)
_O_BIAS = (TensorRule(_L + "self_attn.o_proj.bias", _B + "attn_output.bias", ("n_embd",)),)
_QK_NORM = (
    TensorRule(_L + "self_attn.q_norm.weight", _B + "attn_q_norm.weight", ("head_dim",)),
    TensorRule(_L + "self_attn.k_norm.weight", _B + "attn_k_norm.weight", ("head_dim",)),
)


def _optional(rules: Sequence[TensorRule]) -> tuple[TensorRule, ...]:
    return tuple(TensorRule(r.hf, r.gguf, r.shape, False, r.permute) for r in rules)


def _llama_permuted(rules: Sequence[TensorRule]) -> tuple[TensorRule, ...]:
    heads = {"attn_q.": "n_head", "attn_k.": "n_head_kv"}
    return tuple(TensorRule(r.hf, r.gguf, r.shape, r.required,
                            next((h for k, h in heads.items() if k in r.gguf), None)) for r in rules)


# ---- hyper-parameters, in the order TextModel.set_gguf_parameters writes them ------------------------------
_HEAD = (
    HParam("block_count", ("num_hidden_layers",), V.UINT32),
    HParam("context_length", ("max_position_embeddings",), V.UINT32),
    HParam("embedding_length", ("hidden_size",), V.UINT32),
    HParam("feed_forward_length", ("intermediate_size",), V.UINT32),
    HParam("attention.head_count", ("num_attention_heads",), V.UINT32),
    HParam("attention.head_count_kv", ("num_key_value_heads",), V.UINT32),
)
_ROPE_BASE = HParam("rope.freq_base", ("rope_theta",), V.FLOAT32, 10000.0)
_TAIL = (
    HParam("attention.layer_norm_rms_epsilon", ("rms_norm_eps",), V.FLOAT32, 1e-6),
    HParam("attention.key_length", ("head_dim",), V.UINT32, OMIT),
    HParam("attention.value_length", ("head_dim",), V.UINT32, OMIT),
)

# rope_scaling["rope_type"] -> the keys llama.cpp writes: (key, rope_scaling field or "=constant", type, default)
ROPE_SCALING: dict[str, tuple[tuple[str, str, V, Any], ...]] = {
    "linear": (("rope.scaling.type", "=linear", V.STRING, REQUIRED),
               ("rope.scaling.factor", "factor", V.FLOAT32, REQUIRED)),
    "yarn": (("rope.scaling.type", "=yarn", V.STRING, REQUIRED),
             ("rope.scaling.factor", "factor", V.FLOAT32, REQUIRED),
             ("rope.scaling.original_context_length", "original_max_position_embeddings", V.UINT32, REQUIRED),
             ("rope.scaling.yarn_ext_factor", "extrapolation_factor", V.FLOAT32, OMIT),
             ("rope.scaling.yarn_attn_factor", "attention_factor", V.FLOAT32, OMIT),
             ("rope.scaling.yarn_beta_fast", "beta_fast", V.FLOAT32, OMIT),
             ("rope.scaling.yarn_beta_slow", "beta_slow", V.FLOAT32, OMIT)),
    "longrope": (("rope.scaling.type", "=longrope", V.STRING, REQUIRED),),
    "su": (("rope.scaling.type", "=longrope", V.STRING, REQUIRED),),
    "llama3": (),  # becomes the rope_freqs tensor (llama) instead of keys
    "default": (),
    "dynamic": (),
}

ARCHES: dict[str, Arch] = {a.hf_name: a for a in (
    Arch("LlamaForCausalLM", "llama",
         tensors=_GLOBAL + _llama_permuted(_LAYER + _optional(_QKV_BIAS + _O_BIAS)),
         hparams=_HEAD + (_ROPE_BASE,) + _TAIL,
         hparams_after_file_type=(HParam("vocab_size", ("vocab_size",), V.UINT32),
                                  HParam("rope.dimension_count", ("head_dim",), V.UINT32)),
         config_defaults={"max_position_embeddings": 2048, "vocab_size": 32000},
         derive_head_dim=True, rope_freqs_tensor=True, vocab_add_space_prefix=True, vocab_no_bos_sizes=(49152,)),
    Arch("Qwen2ForCausalLM", "qwen2",
         tensors=_GLOBAL + _LAYER + _QKV_BIAS,
         hparams=_HEAD + (_ROPE_BASE,) + _TAIL,
         config_defaults={"max_position_embeddings": 32768, "vocab_size": 151936}),
    Arch("Qwen3ForCausalLM", "qwen3",
         tensors=_GLOBAL + _LAYER + _QK_NORM,
         hparams=_HEAD + (_ROPE_BASE,) + _TAIL,
         config_defaults={"max_position_embeddings": 32768, "vocab_size": 151936, "head_dim": 128}),
)}


def get_arch(config: Mapping[str, Any]) -> Arch:
    archs = config.get("architectures") or []
    hf = archs[0] if archs else None
    if hf not in ARCHES:
        raise UnsupportedArchitectureError(
            f"config.json names architecture {hf!r}, which DistillDesk cannot convert; supported: "
            f"{', '.join(ARCHES)} (the DeepSeek-R1 distills are Qwen2, Llama and Qwen3)")
    return ARCHES[hf]


def resolve_config(arch: Arch, config: Mapping[str, Any]) -> dict[str, Any]:
    """config.json with the defaults transformers' config class would add (what llama.cpp's converter sees)."""
    cfg = {**arch.config_defaults, **config}
    for key in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads"):
        if not isinstance(cfg.get(key), int) or cfg[key] <= 0:
            raise ConfigError(f"config.json lacks a positive integer {key!r}; download the model's config.json "
                              f"again")
    if cfg.get("num_key_value_heads") is None:
        cfg["num_key_value_heads"] = cfg["num_attention_heads"]
    if arch.derive_head_dim and cfg.get("head_dim") is None:
        cfg["head_dim"] = cfg["hidden_size"] // cfg["num_attention_heads"]
    rs = cfg.get("rope_scaling")
    if isinstance(rs, dict) and "rope_type" not in rs and "type" in rs:
        cfg["rope_scaling"] = {**rs, "rope_type": rs["type"]}
    return cfg


def dims(cfg: Mapping[str, Any]) -> dict[str, int]:
    """The symbolic dimensions tensor shapes are written in."""
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    return {"n_embd": cfg["hidden_size"], "n_ff": cfg["intermediate_size"], "n_vocab": cfg["vocab_size"],
            "n_head": n_head, "n_head_kv": n_kv, "head_dim": head_dim, "n_q": n_head * head_dim,
            "n_kv": n_kv * head_dim}


def model_params(arch: Arch, cfg: Mapping[str, Any]) -> ModelParams:
    return ModelParams(arch=arch.name, n_layer=cfg["num_hidden_layers"], n_head=cfg["num_attention_heads"],
                       n_head_kv=cfg["num_key_value_heads"])


# ---- metadata -----------------------------------------------------------------------------------------------
def _value(arch: Arch, p: HParam, cfg: Mapping[str, Any]) -> Any:
    for k in p.config_keys:
        if cfg.get(k) is not None:
            return cfg[k]
    if p.default is REQUIRED:
        raise ConfigError(f"config.json lacks {p.config_keys[0]!r}, which a {arch.hf_name} needs; download the "
                          f"model's config.json again")
    return p.default


def hparams_kv(arch: Arch, cfg: Mapping[str, Any], file_type: int) -> list[tuple[str, Any, V]]:
    """``(key, value, type)`` of every architecture key, in llama.cpp's order (general.file_type included)."""
    out: list[tuple[str, Any, V]] = []

    def add(params: Sequence[HParam]) -> None:
        for p in params:
            v = _value(arch, p, cfg)
            if v is not OMIT:
                out.append((f"{arch.name}.{p.key}", v, p.vtype))

    add(arch.hparams[:len(_HEAD)])
    out.extend(_rope_scaling_kv(arch, cfg))
    add(arch.hparams[len(_HEAD):])
    out.append(("general.file_type", file_type, V.UINT32))
    add(arch.hparams_after_file_type)
    return out


def _rope_scaling_kv(arch: Arch, cfg: Mapping[str, Any]) -> list[tuple[str, Any, V]]:
    rs = cfg.get("rope_scaling")
    if not isinstance(rs, dict) or rs.get("rope_type") is None:
        return []
    keys = ROPE_SCALING.get(str(rs["rope_type"]).lower())
    if keys is None:
        raise ConfigError(f"config.json rope_scaling type {rs['rope_type']!r} is not supported; supported: "
                          f"{', '.join(ROPE_SCALING)}")
    out = []
    for key, src, vtype, default in keys:
        v = src[1:] if src.startswith("=") else rs.get(src, default)
        if v is REQUIRED:
            raise ConfigError(f"config.json rope_scaling lacks {src!r}; download the model's config.json again")
        if v is not OMIT:
            out.append((f"{arch.name}.{key}", v, vtype))
    return out


# ---- tensors ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlannedTensor:
    """One GGUF tensor to write: where its data comes from and how it is transformed."""
    name: str  # GGUF name
    shape: tuple[int, ...]  # numpy order
    hf_name: str | None  # source tensor; None for generated tensors (rope_freqs)
    permute_heads: int | None = None


def _rule_patterns(arch: Arch) -> list[tuple[re.Pattern[str], TensorRule]]:
    return [(re.compile("^" + re.escape(r.hf).replace(r"\{bid\}", r"(?P<bid>\d+)") + "$"), r)
            for r in arch.tensors]


def plan_tensors(arch: Arch, cfg: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> list[PlannedTensor]:
    """Map every checkpoint tensor (``shapes``, in reading order) to its GGUF tensor, checking it against config.

    Generated tensors (rope_freqs) come first, as in llama.cpp.  Raises ShapeMismatchError for a shape or layer
    count that contradicts config.json, a missing tensor, or a tensor this architecture does not have.
    """
    d = dims(cfg)
    n_layer = cfg["num_hidden_layers"]
    patterns = _rule_patterns(arch)
    out: list[PlannedTensor] = []
    freqs = rope_freqs(arch, cfg)
    if freqs is not None:
        out.append(PlannedTensor("rope_freqs.weight", freqs.shape, None))
    seen: set[tuple[str, int | None]] = set()
    for hf_name, shape in shapes.items():
        if hf_name.endswith(".rotary_emb.inv_freq"):
            continue  # recomputed by llama.cpp, never stored (llama.cpp's converter drops it too)
        rule, bid = _match(patterns, hf_name, arch)
        if bid is not None and bid >= n_layer:
            raise ShapeMismatchError(f"tensor {hf_name} belongs to layer {bid}, but config.json says "
                                     f"num_hidden_layers = {n_layer}; the config does not match the weights")
        want = tuple(d[s] for s in rule.shape)
        if tuple(shape) != want:
            raise ShapeMismatchError(
                f"tensor {hf_name} has shape {list(shape)} but config.json implies {list(want)} "
                f"({' x '.join(rule.shape)}); the config does not belong to these weights: download both again")
        seen.add((rule.hf, bid))
        name = rule.gguf.format(bid=bid)
        out.append(PlannedTensor(name, tuple(shape), hf_name, d[rule.permute] if rule.permute else None))
    _check_complete(arch, cfg, seen)
    return out


def _match(patterns: list[tuple[re.Pattern[str], TensorRule]], hf_name: str,
           arch: Arch) -> tuple[TensorRule, int | None]:
    for pat, rule in patterns:
        m = pat.match(hf_name)
        if m:
            return rule, (int(m.group("bid")) if "bid" in pat.groupindex else None)
    raise ShapeMismatchError(f"tensor {hf_name} is not part of a {arch.hf_name} model; is config.json's "
                             f"architecture right? (multimodal or adapter checkpoints are not supported)")


def _check_complete(arch: Arch, cfg: Mapping[str, Any], seen: set[tuple[str, int | None]]) -> None:
    for rule in arch.tensors:
        if not rule.required:
            continue
        layers: Sequence[int | None] = range(cfg["num_hidden_layers"]) if "{bid}" in rule.hf else [None]
        for bid in layers:
            if (rule.hf, bid) not in seen:
                raise ShapeMismatchError(
                    f"tensor {rule.hf.format(bid=bid)} is missing from the checkpoint (config.json says "
                    f"{cfg['num_hidden_layers']} layers); a shard is missing or the config is wrong")
    if not cfg.get("tie_word_embeddings", False) and ("lm_head.weight", None) not in seen:
        raise ShapeMismatchError("lm_head.weight is missing but config.json says tie_word_embeddings is false; "
                                 "a shard is missing or the config is wrong")


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Llama's rotary permutation (LlamaModel.permute): HF's half-split rotary layout -> ggml's interleaved."""
    return np.ascontiguousarray(
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


def rope_freqs(arch: Arch, cfg: Mapping[str, Any]) -> np.ndarray | None:
    """Llama-3 rope-scaling factors, computed in float32 step by step as LlamaModel.generate_extra_tensors does."""
    rs = cfg.get("rope_scaling")
    if not arch.rope_freqs_tensor or not isinstance(rs, dict) or str(rs.get("rope_type", "")).lower() != "llama3":
        return None
    # torch evaluates ``scalar / tensor`` as ``tensor.reciprocal() * scalar``; mirrored here for bit-equality.
    f32 = np.float32
    one = f32(1)
    base = rs.get("rope_theta", cfg.get("rope_theta", 10000.0))
    dim = dims(cfg)["head_dim"]
    freqs = one / (f32(base) ** (np.arange(0, dim, 2, dtype=f32) / f32(dim)))
    factor = rs.get("factor", 8.0)
    low, high = rs.get("low_freq_factor", 1.0), rs.get("high_freq_factor", 4.0)
    old_ctx = rs.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    out = []
    for freq in freqs:
        wavelen = (one / freq) * f32(2 * math.pi)
        if wavelen < f32(high_wavelen):
            out.append(one)
        elif wavelen > f32(low_wavelen):
            out.append(f32(factor))
        else:
            smooth = ((one / wavelen) * f32(old_ctx) - f32(low)) / f32(high - low)
            out.append(one / ((one - smooth) / f32(factor) + smooth))
    return np.array(out, dtype=f32)
