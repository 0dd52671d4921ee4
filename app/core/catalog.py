"""The catalog of distilled reasoning models (``resources/catalog.json``) and what each recipe makes of them.

For every model the catalog keeps the key dimensions of its published ``config.json``.  From those the tensor
table is rebuilt with the quantizer's own architecture tables (:func:`tensors_from_config`: the same shapes and
GGUF names :func:`quantizer.convert` would see), and :func:`quantizer.recipes.plan` decides each tensor's type
for each recipe.  So the predicted GGUF size is the quantizer's, not a rule of thumb:

    size = tensor data (plan.n_bytes, exact) + header (vocabulary, merges, tensor table: estimated)
    RAM  = size + KV cache (F16, n_ctx tokens) + llama.cpp's compute buffers for one batch

The same functions work for any config.json (a checkpoint found by Hub search, or one already downloaded).
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from math import prod
from pathlib import Path
from typing import Any

from quantizer.recipes import RECIPES, ModelParams, TensorInfo, plan

from .paths import resources_dir

DEFAULT_N_CTX = 4096  # the context RAM figures assume (the Engine's default)
N_BATCH = 512  # llama.cpp's default batch: sizes the compute buffers
# GGUF header: bytes per vocabulary entry (token string + type, or merge string).  Fitted on two real headers:
# SmolLM2 (49152 tokens + 48900 merges: 1.79 MB) and DeepSeek-R1-Distill-Qwen (152064 + 151387: 5.93 MB).
HEADER_BYTES_PER_VOCAB_ENTRY = 18.7
HEADER_FIXED_BYTES = 16 * 1024  # hyper-parameters, chat template, general.* keys
_ALIGN = 32


@dataclass(frozen=True)
class RecipeEstimate:
    recipe: str
    description: str
    size_bytes: int  # predicted GGUF file size
    tensor_bytes: int  # of which tensor data (exact, from the recipe plan)
    bits_per_weight: float
    ram_bytes: int  # predicted memory to chat with it at n_ctx


@dataclass(frozen=True)
class CatalogModel:
    key: str
    name: str
    repo_id: str
    base_model: str
    n_params: int
    params_label: str
    license: str
    license_note: str
    summary: str
    n_merges: int
    config: Mapping[str, Any] = field(repr=False)

    @property
    def architecture(self) -> str:
        return self.config["architectures"][0]

    def estimates(self, n_ctx: int = DEFAULT_N_CTX) -> list[RecipeEstimate]:
        """Every recipe's predicted size, bits per weight and RAM, smallest recipe last (RECIPES order)."""
        return estimate_all(self.config, n_merges=self.n_merges, n_ctx=n_ctx)

    def estimate(self, recipe: str, n_ctx: int = DEFAULT_N_CTX) -> RecipeEstimate:
        return next(e for e in self.estimates(n_ctx) if e.recipe == recipe.upper())


# ---- tensor table from config.json ----------------------------------------------------------------------------
def hf_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The safetensors tensor names and shapes a checkpoint with this config.json holds."""
    from quantizer.arch import dims, get_arch, resolve_config

    arch = get_arch(config)
    cfg = resolve_config(arch, config)
    d = dims(cfg)
    shapes: dict[str, tuple[int, ...]] = {}
    for rule in arch.tensors:
        if not rule.required and not _optional_present(rule.hf, cfg):
            continue
        shape = tuple(d[s] for s in rule.shape)
        if "{bid}" in rule.hf:
            for bid in range(cfg["num_hidden_layers"]):
                shapes[rule.hf.format(bid=bid)] = shape
        else:
            shapes[rule.hf] = shape
    return shapes


def _optional_present(hf_name: str, cfg: Mapping[str, Any]) -> bool:
    if hf_name == "lm_head.weight":
        return not cfg.get("tie_word_embeddings", False)
    if hf_name.endswith(".bias") and "self_attn" in hf_name:  # Llama: attention_bias
        return bool(cfg.get("attention_bias", False))
    return False


def tensors_from_config(config: Mapping[str, Any]) -> tuple[list[TensorInfo], ModelParams]:
    """The GGUF tensor table (names, shapes; generated rope_freqs included) and model facts, as convert sees
    them.  Raises the quantizer's UnsupportedArchitectureError / ConfigError for a config it cannot convert."""
    from quantizer.arch import get_arch, model_params, plan_tensors, resolve_config

    arch = get_arch(config)
    cfg = resolve_config(arch, config)
    planned = plan_tensors(arch, cfg, hf_shapes(config))
    return [TensorInfo(p.name, tuple(p.shape)) for p in planned], model_params(arch, cfg)


def count_params(config: Mapping[str, Any]) -> int:
    """Parameters stored in the checkpoint's safetensors (what the Hub shows as model size)."""
    return sum(prod(s) for s in hf_shapes(config).values())


# ---- size and RAM ---------------------------------------------------------------------------------------------
def header_bytes(tensors: Sequence[TensorInfo], n_vocab: int, n_merges: int) -> int:
    """Estimated GGUF header: fixed keys, the vocabulary and merges, the tensor table, padded to alignment."""
    table = sum(8 + len(t.name) + 4 + 8 * len(t.shape) + 4 + 8 for t in tensors)
    n = 24 + HEADER_FIXED_BYTES + HEADER_BYTES_PER_VOCAB_ENTRY * (n_vocab + n_merges) + table
    return -(-int(n) // _ALIGN) * _ALIGN


def ram_needed(weights_bytes: int, config: Mapping[str, Any], n_ctx: int = DEFAULT_N_CTX) -> int:
    """Memory to chat: weights + F16 KV cache for ``n_ctx`` tokens + compute buffers of one ``N_BATCH`` batch
    (activations of the widest layer and the batch's logits, float32)."""
    from quantizer.arch import dims, get_arch, resolve_config

    cfg = resolve_config(get_arch(config), config)
    d = dims(cfg)
    kv = 2 * cfg["num_hidden_layers"] * n_ctx * d["n_kv"] * 2
    compute = N_BATCH * (d["n_vocab"] + 2 * d["n_ff"] + 4 * d["n_embd"]) * 4
    return weights_bytes + kv + compute


def estimate_all(config: Mapping[str, Any], *, n_merges: int, n_ctx: int = DEFAULT_N_CTX) -> list[RecipeEstimate]:
    return list(_estimate_all(json.dumps(config, sort_keys=True), n_merges, n_ctx))


@lru_cache(maxsize=64)
def _estimate_all(config_json: str, n_merges: int, n_ctx: int) -> tuple[RecipeEstimate, ...]:
    config = json.loads(config_json)
    tensors, params = tensors_from_config(config)
    head = header_bytes(tensors, config["vocab_size"], n_merges)
    out = []
    for name, info in RECIPES.items():
        p = plan(name, tensors, params)
        size = head + p.n_bytes
        out.append(RecipeEstimate(name, info.description, size, p.n_bytes, p.bits_per_weight,
                                  ram_needed(size, config, n_ctx)))
    return tuple(out)


# ---- the catalog ----------------------------------------------------------------------------------------------
def catalog_path() -> Path:
    return resources_dir() / "catalog.json"


@lru_cache(maxsize=4)
def _load(path: str) -> tuple[CatalogModel, ...]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    names = {f.name for f in CatalogModel.__dataclass_fields__.values()}  # type: ignore[attr-defined]
    return tuple(CatalogModel(**{k: v for k, v in m.items() if k in names}) for m in data["models"])


def load_catalog(path: Path | None = None) -> list[CatalogModel]:
    """The catalog's models, smallest first as listed."""
    return list(_load(str(path or catalog_path())))


def find(name: str) -> CatalogModel | None:
    """A catalog model by key, repo id or name (case-insensitive)."""
    n = name.lower()
    for m in load_catalog():
        if n in (m.key.lower(), m.repo_id.lower(), m.name.lower()):
            return m
    return None
