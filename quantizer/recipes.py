"""Quantization recipes: which GGML type every tensor gets, and how big the GGUF will be.

A recipe is a llama.cpp file type (``Q4_K_M`` ...).  :func:`plan` decides the type of *every* tensor exactly as
llama.cpp does, so our GGUF is tensor-for-tensor the one ``llama-quantize`` would make from the F16 GGUF:

* float recipes (F32/F16/BF16) follow ``convert_hf_to_gguf.py``: 1-D tensors, norms and non-``.weight`` tensors
  (biases) stay F32, the other matrices take the output type;
* quantized recipes follow ``llama_tensor_get_type`` / ``llama_model_quantize_impl`` in llama.cpp's
  ``src/llama-quant.cpp``: which tensors may be quantized at all, the output / tied-embedding rule, per-category
  rules (attn_v, ffn_down, attn_output ...) with their layer counters and ``use_more_bits`` layers, GQA and
  70B bumps, and the fallback to a 32-block type when a row is not a multiple of the type's block size.

The per-category rules are small tables keyed by recipe (see ``_ATTN_V_RULES`` ...), one function per category.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from math import prod

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from .errors import UnknownRecipeError

T = GGMLQuantizationType

QUANTIZATION_VERSION = 2  # general.quantization_version (GGML_QNT_VERSION)
ALIGNMENT = 32  # GGUF_DEFAULT_ALIGNMENT: every tensor's data is padded to this


@dataclass(frozen=True)
class TensorInfo:
    name: str  # GGUF name, e.g. "blk.3.attn_v.weight"
    shape: tuple[int, ...]  # numpy order (rows, cols); 1-D for norms/biases; (experts, rows, cols) for MoE


@dataclass(frozen=True)
class ModelParams:
    arch: str  # "llama" | "qwen2" | "qwen3"
    n_layer: int
    n_head: int
    n_head_kv: int
    n_expert: int = 0


@dataclass(frozen=True)
class RecipeInfo:
    name: str
    ftype: int  # llama_ftype, written as general.file_type
    default_type: GGMLQuantizationType  # llama_ftype_get_default_type
    description: str


@dataclass
class Plan:
    types: dict[str, GGMLQuantizationType]  # every tensor's GGML type, by GGUF name
    file_type: int  # general.file_type
    n_bytes: int  # size of the GGUF tensor-data section (each tensor padded to ALIGNMENT)
    bits_per_weight: float  # unpadded tensor bytes * 8 / number of weights, as llama-quantize reports it
    recipe: str = ""
    n_fallback: int = 0  # tensors whose rows did not fit the chosen type's block (llama.cpp's n_fallback)
    quantization_version: int = QUANTIZATION_VERSION
    fallbacks: list[str] = field(default_factory=list)  # their names


def _r(name: str, ftype: int, default: GGMLQuantizationType, description: str) -> tuple[str, RecipeInfo]:
    return name, RecipeInfo(name, ftype, default, description)


RECIPES: dict[str, RecipeInfo] = dict([
    _r("F32", 0, T.F32, "32-bit float, lossless, 4x the size of F16 (reference only)"),
    _r("F16", 1, T.F16, "16-bit float, practically lossless; the usual reference model"),
    _r("BF16", 32, T.BF16, "bfloat16, lossless for bf16 checkpoints; same size as F16"),
    _r("Q8_0", 7, T.Q8_0, "8-bit, about 8.5 bits/weight; indistinguishable from F16 in practice"),
    _r("Q4_0", 2, T.Q4_0, "legacy 4-bit, 4.5 bits/weight; prefer Q4_K_M"),
    _r("Q4_1", 3, T.Q4_1, "legacy 4-bit with offset, 5 bits/weight; prefer Q4_K_M"),
    _r("Q5_0", 8, T.Q5_0, "legacy 5-bit, 5.5 bits/weight; prefer Q5_K_M"),
    _r("Q5_1", 9, T.Q5_1, "legacy 5-bit with offset, 6 bits/weight; prefer Q5_K_M"),
    _r("Q2_K", 10, T.Q2_K, "2-bit k-quant mix (Q3_K/Q4_K for sensitive tensors); smallest, large quality loss"),
    _r("Q3_K_S", 11, T.Q3_K, "3-bit k-quant, small: Q3_K everywhere; high quality loss"),
    _r("Q3_K_M", 12, T.Q3_K, "3-bit k-quant, medium: Q4_K/Q5_K for attn_v, attn_output, ffn_down"),
    _r("Q3_K_L", 13, T.Q3_K, "3-bit k-quant, large: Q5_K for attn_v, attn_output, ffn_down"),
    _r("Q4_K_S", 14, T.Q4_K, "4-bit k-quant, small: Q4_K, Q5_K for the first attn_v/ffn_down layers"),
    _r("Q4_K_M", 15, T.Q4_K, "4-bit k-quant, medium: Q6_K for half of attn_v/ffn_down; recommended balance"),
    _r("Q5_K_S", 16, T.Q5_K, "5-bit k-quant, small: Q5_K everywhere; low quality loss"),
    _r("Q5_K_M", 17, T.Q5_K, "5-bit k-quant, medium: Q6_K for half of attn_v/ffn_down; very low loss"),
    _r("Q6_K", 18, T.Q6_K, "6-bit k-quant, about 6.6 bits/weight; near-lossless"),
])

FLOAT_RECIPES = frozenset({"F32", "F16", "BF16"})
_FLOAT_TYPES = frozenset({T.F32, T.F16, T.BF16})


def recipe_info(recipe: str) -> RecipeInfo:
    """The :class:`RecipeInfo` of ``recipe`` (case-insensitive); raises UnknownRecipeError naming the choices."""
    info = RECIPES.get(str(recipe).upper())
    if info is None:
        raise UnknownRecipeError(
            f"unknown quantization recipe {recipe!r}; choose one of: {', '.join(RECIPES)}")
    return info


# ---- tensor categories (tensor_get_category) ---------------------------------------------------------------
# Checked in this order, first match wins; OUTPUT and TOKEN_EMBD are exact names, the others substrings.
_CATEGORY_SUBSTRINGS = (
    ("attn_qkv.weight", "attn_qkv"), ("attn_kv_b.weight", "attn_kv_b"), ("attn_v.weight", "attn_v"),
    ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
    ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down"),
)
_TOKEN_EMBD_NAMES = ("token_embd.weight", "per_layer_token_embd.weight")
_ATTN_V_LIKE = frozenset({"attn_v", "attn_qkv", "attn_kv_b"})  # category_is_attn_v


def _category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name in _TOKEN_EMBD_NAMES:
        return "token_embd"
    for needle, cat in _CATEGORY_SUBSTRINGS:
        if needle in name:
            return cat
    return "other"


# ---- which tensors are quantized at all (tensor_allows_quantization) ---------------------------------------
# Substrings that keep a tensor in its source type (the ones that can occur in llama-like text models; llama.cpp's
# list also names RWKV/Mamba/vision tensors, which never reach this converter).
_NEVER_QUANTIZED = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel", "per_layer_model_proj",
    "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight", "indexer.q_proj.weight",
    "time_mix_", "attn_rel_b.weight", ".position_embd", ".rel_pos", ".patch_embd", ".patch_merger",
)
_NEVER_QUANTIZED_EXACT = ("position_embd.weight", "token_types.weight")


def _ggml_n_dims(shape: tuple[int, ...]) -> int:
    """ggml_n_dims: trailing ggml dimensions of size 1 (leading numpy ones) do not count."""
    ne = tuple(reversed(shape))
    for i in range(len(ne) - 1, 0, -1):
        if ne[i] > 1:
            return i + 1
    return 1


def allows_quantization(t: TensorInfo) -> bool:
    """llama.cpp's ``tensor_allows_quantization`` for the tensors of llama/qwen2/qwen3 models."""
    if _ggml_n_dims(t.shape) < 2 or not t.name.endswith("weight"):
        return False
    if t.name in _NEVER_QUANTIZED_EXACT:
        return False
    return not any(s in t.name for s in _NEVER_QUANTIZED)


def float_type(t: TensorInfo, out_type: GGMLQuantizationType) -> GGMLQuantizationType:
    """convert_hf_to_gguf.py's choice for a float output type: 1-D, norms, biases, routers stay F32."""
    if len(t.shape) <= 1 or t.name.endswith("_norm.weight") or not t.name.endswith(".weight"):
        return T.F32
    if "ffn_gate_inp" in t.name or t.name in _NEVER_QUANTIZED_EXACT:
        return T.F32
    return out_type


# ---- per-category rules (llama_tensor_get_type_impl) -------------------------------------------------------
def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """The layers llama.cpp gives more bits: the first and last eighth, and every third one in between."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


@dataclass
class _State:
    """quantize_state_impl: model facts and the per-category counters, advanced in llama.cpp's tensor order."""
    params: ModelParams
    has_imatrix: bool
    tied_embeddings: bool
    n_attention_wv: int
    i_attention_wv: int = 0
    i_ffn_down: int = 0
    n_fallback: int = 0

    @property
    def gqa(self) -> int:  # hparams.n_gqa(): integer division, 0 without KV heads
        return self.params.n_head // self.params.n_head_kv if self.params.n_head_kv else 0

    @property
    def is_70b(self) -> bool:  # LLM_TYPE_70B as models/llama.cpp and models/qwen2.cpp infer it
        p = self.params
        if p.n_layer != 80:
            return False
        if p.arch == "llama":
            return p.n_expert != 8 and p.n_head != p.n_head_kv
        return p.arch == "qwen2"


Rule = Callable[[_State, int, int], "GGMLQuantizationType | None"]  # (state, i, n) -> new type or keep

# attn_v (and attn_qkv / attn_kv_b): i = i_attention_wv, n = n_attention_wv
_ATTN_V_RULES: dict[str, Rule] = {
    "Q2_K": lambda s, i, n: T.Q4_K if s.gqa >= 4 else T.Q3_K,
    "Q3_K_M": lambda s, i, n: T.Q5_K if i < 2 else T.Q4_K,
    "Q3_K_L": lambda s, i, n: T.Q5_K,
    "Q4_K_M": lambda s, i, n: T.Q6_K if use_more_bits(i, n) else None,
    "Q5_K_M": lambda s, i, n: T.Q6_K if use_more_bits(i, n) else None,
    "Q4_K_S": lambda s, i, n: T.Q5_K if i < 4 else None,
}

# ffn_down: i = layer index, n = n_layer
_FFN_DOWN_RULES: dict[str, Rule] = {
    "Q2_K": lambda s, i, n: T.Q3_K,
    "Q3_K_M": lambda s, i, n: T.Q5_K if i < n // 16 else T.Q4_K,  # (Falcon alone would keep Q3_K)
    "Q3_K_L": lambda s, i, n: T.Q5_K,
    "Q4_K_M": lambda s, i, n: T.Q6_K if use_more_bits(i, n) else None,
    "Q5_K_M": lambda s, i, n: T.Q6_K if use_more_bits(i, n) else None,
    "Q4_K_S": lambda s, i, n: T.Q5_K if i < n // 8 else None,
    # with an imatrix, guard the first ffn_down layers of Q4_0/Q5_0 with the offset variant
    "Q4_0": lambda s, i, n: T.Q4_1 if s.has_imatrix and i < n // 8 else None,
    "Q5_0": lambda s, i, n: T.Q5_1 if s.has_imatrix and i < n // 8 else None,
}

# attn_output of dense models; 8-expert models use _ATTN_OUTPUT_MOE8 instead
_ATTN_OUTPUT_RULES: dict[str, GGMLQuantizationType] = {"Q2_K": T.Q3_K, "Q3_K_M": T.Q4_K, "Q3_K_L": T.Q5_K}
_ATTN_OUTPUT_MOE8 = frozenset({"Q2_K", "Q3_K_S", "Q3_K_M", "Q4_K_S", "Q4_K_M"})

_LAYER_RE = re.compile(r"^blk\.(\d+)\.")


def _layer_of(name: str) -> int:
    m = _LAYER_RE.match(name)
    return int(m.group(1)) if m else -1


def _ffn_layer(s: _State, counter: int, name: str) -> int:
    """layer_info: the counter for dense models; MoE experts are not in layer order, so parse the name."""
    if max(1, s.params.n_expert) > 1:
        layer = _layer_of(name)
        if not 0 <= layer < s.params.n_layer:
            raise ValueError(f"cannot determine the layer of tensor {name!r}")
        return layer
    return counter


def _apply(rule: Rule | None, s: _State, i: int, n: int, new: GGMLQuantizationType) -> GGMLQuantizationType:
    out = rule(s, i, n) if rule is not None else None
    return new if out is None else out


def _output_type(s: _State, t: TensorInfo, default: GGMLQuantizationType) -> GGMLQuantizationType:
    """output.weight, or token_embd.weight when it doubles as the output (tied embeddings)."""
    if t.shape[-1] % GGML_QUANT_SIZES[default][0] != 0:
        return T.Q8_0
    return default if default == T.Q8_0 else T.Q6_K


def _attn_v_type(s: _State, recipe: str, new: GGMLQuantizationType) -> GGMLQuantizationType:
    new = _apply(_ATTN_V_RULES.get(recipe), s, s.i_attention_wv, s.n_attention_wv, new)
    if s.is_70b and new in (T.Q3_K, T.Q4_K):  # 70B: 8 heads share attn_v, so it is small; give it bits
        new = T.Q5_K
    if s.params.n_expert == 8:
        new = T.Q8_0
    s.i_attention_wv += 1
    return new


def _ffn_down_type(s: _State, recipe: str, new: GGMLQuantizationType, name: str) -> GGMLQuantizationType:
    i_layer = _ffn_layer(s, s.i_ffn_down, name)
    new = _apply(_FFN_DOWN_RULES.get(recipe), s, i_layer, s.params.n_layer, new)
    s.i_ffn_down += 1
    return new


def _attn_output_type(s: _State, recipe: str, new: GGMLQuantizationType) -> GGMLQuantizationType:
    if s.params.n_expert == 8:
        return T.Q5_K if recipe in _ATTN_OUTPUT_MOE8 else new
    return _ATTN_OUTPUT_RULES.get(recipe, new)


def _rule_type(s: _State, recipe: str, t: TensorInfo, default: GGMLQuantizationType) -> GGMLQuantizationType:
    """llama_tensor_get_type_impl restricted to our recipes (no IQ/TQ/MXFP4 types, no Falcon)."""
    cat = _category(t.name)
    if cat == "output" or (cat == "token_embd" and s.tied_embeddings):
        return _output_type(s, t, default)
    if cat == "token_embd":
        return default
    if cat in _ATTN_V_LIKE:
        return _attn_v_type(s, recipe, default)
    if cat == "attn_k":
        return T.Q8_0 if s.params.n_expert == 8 else default
    if cat == "ffn_down":
        return _ffn_down_type(s, recipe, default, t.name)
    if cat == "attn_output":
        return _attn_output_type(s, recipe, default)
    return default  # attn_q, ffn_gate, ffn_up, other: only IQ types (not offered) change them


# tensor_type_fallback: a 256-block type whose rows do not fit falls back to a 32-block one
_FALLBACK = {T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}


def _fallback(s: _State, t: TensorInfo, new: GGMLQuantizationType) -> GGMLQuantizationType:
    ncols = t.shape[-1]
    if ncols % GGML_QUANT_SIZES[new][0] == 0:
        return new
    s.n_fallback += 1
    out = _FALLBACK.get(new, new)
    if ncols % GGML_QUANT_SIZES[out][0] != 0:  # not even a multiple of 32: llama.cpp writes F16
        out = T.F16
    return out


def _llama_order(tensors: Sequence[TensorInfo]) -> list[TensorInfo]:
    """llama_model_loader's weights_map order (layer number, then name): the order the counters advance in."""
    return sorted(tensors, key=lambda t: (_layer_of(t.name), t.name))


def _quantized_types(info: RecipeInfo, tensors: Sequence[TensorInfo], params: ModelParams,
                     has_imatrix: bool) -> tuple[dict[str, GGMLQuantizationType], list[str]]:
    names = [t.name for t in tensors]
    s = _State(params, has_imatrix, tied_embeddings="output.weight" not in names,
               n_attention_wv=sum(_category(n) in _ATTN_V_LIKE for n in names))
    types: dict[str, GGMLQuantizationType] = {}
    fallbacks: list[str] = []
    for t in _llama_order(tensors):
        if not allows_quantization(t):
            types[t.name] = float_type(t, T.F16)  # kept as it is in the F16 GGUF llama-quantize reads
            continue
        before = s.n_fallback
        types[t.name] = _fallback(s, t, _rule_type(s, info.name, t, info.default_type))
        if s.n_fallback != before:
            fallbacks.append(t.name)
    return types, fallbacks


def tensor_bytes(t: TensorInfo, qtype: GGMLQuantizationType) -> int:
    """Bytes of ``t`` stored as ``qtype`` (unpadded)."""
    block, size = GGML_QUANT_SIZES[qtype]
    return prod(t.shape[:-1]) * (t.shape[-1] // block) * size if t.shape else size


def _sizes(tensors: Sequence[TensorInfo], types: dict[str, GGMLQuantizationType]) -> tuple[int, float]:
    raw = padded = n_weights = 0
    for t in tensors:
        nb = tensor_bytes(t, types[t.name])
        raw += nb
        padded += -(-nb // ALIGNMENT) * ALIGNMENT
        n_weights += prod(t.shape)
    return padded, (raw * 8 / n_weights if n_weights else 0.0)


def _check_unique(tensors: Sequence[TensorInfo]) -> None:
    seen: set[str] = set()
    for t in tensors:
        if t.name in seen:
            raise ValueError(f"tensor {t.name!r} is listed twice")
        seen.add(t.name)


def plan(recipe: str, tensors: Sequence[TensorInfo], params: ModelParams, *, has_imatrix: bool = False) -> Plan:
    """Decide every tensor's GGML type for ``recipe`` and the resulting size, before any work is done."""
    info = recipe_info(recipe)
    _check_unique(tensors)
    if info.name in FLOAT_RECIPES:
        types = {t.name: float_type(t, info.default_type) for t in tensors}
        fallbacks: list[str] = []
    else:
        types, fallbacks = _quantized_types(info, tensors, params, has_imatrix)
    n_bytes, bpw = _sizes(tensors, types)
    return Plan(types={t.name: types[t.name] for t in tensors}, file_type=info.ftype, n_bytes=n_bytes,
                bits_per_weight=bpw, recipe=info.name, n_fallback=len(fallbacks), fallbacks=fallbacks)


def with_types(p: Plan, tensors: Sequence[TensorInfo], types: dict[str, GGMLQuantizationType | str]) -> Plan:
    """``p`` with some tensors' types replaced (a placed recipe such as :mod:`quantizer.sensitivity` chose them),
    size and bits per weight recomputed.  Only tensors the recipe quantizes may change, to a type whose block
    fits their rows; anything else is a ValueError."""
    by_name = {t.name: t for t in tensors}
    new = dict(p.types)
    for name, qtype in types.items():
        qtype = qtype if isinstance(qtype, GGMLQuantizationType) else T[str(qtype).upper()]
        t = by_name.get(name)
        if t is None:
            raise ValueError(f"no tensor {name!r} in this model")
        if not allows_quantization(t) or p.types[name] in _FLOAT_TYPES:
            raise ValueError(f"tensor {name!r} is not quantized by {p.recipe}; its type cannot be chosen")
        if t.shape[-1] % GGML_QUANT_SIZES[qtype][0] != 0:
            raise ValueError(f"tensor {name!r} has rows of {t.shape[-1]}, not a multiple of {qtype.name}'s block")
        new[name] = qtype
    n_bytes, bpw = _sizes(tensors, new)
    return Plan(types=new, file_type=p.file_type, n_bytes=n_bytes, bits_per_weight=bpw, recipe=p.recipe,
                n_fallback=p.n_fallback, fallbacks=list(p.fallbacks))


def estimate(recipe: str, tensors: Sequence[TensorInfo], params: ModelParams) -> tuple[int, float]:
    """Predicted tensor-data bytes and bits per weight of ``recipe`` (what the GUI shows before any work)."""
    p = plan(recipe, tensors, params)
    return p.n_bytes, p.bits_per_weight
