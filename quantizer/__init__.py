"""Hugging Face checkpoint -> llama.cpp GGUF: reading safetensors, architecture tables, tokenizer export,
recipes and a streaming writer.  Imports kernels/, numpy, safetensors, gguf and tokenizers; never Qt or llama_cpp.

Public API::

    convert(src, out, recipe, *, threads=None, imatrix=None, progress=None, cancel=None, pre_tokenizer=None)
        -> ConvertResult
"""
from __future__ import annotations

from .convert import ConvertProgress, ConvertResult, convert
from .errors import QuantizerError

__all__ = ["ConvertProgress", "ConvertResult", "QuantizerError", "convert"]
