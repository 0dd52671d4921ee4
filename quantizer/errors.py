"""Typed errors of the quantizer package: each subclasses the built-in it behaves like and says what to do.

The CLI maps every ``QuantizerError`` to exit code 2 and one line; the GUI maps them to one dialog.
"""
from __future__ import annotations


class QuantizerError(Exception):
    """Base of every error raised by :mod:`quantizer`."""


# ---- the checkpoint --------------------------------------------------------------------------------------
class CheckpointError(QuantizerError, ValueError):
    """The checkpoint folder cannot be converted (base of the bad-input errors below)."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The source path is neither a folder nor a Hub repo id in the local Hugging Face cache."""


class MissingFileError(CheckpointError, FileNotFoundError):
    """A required file (config.json, weights, tokenizer) is missing from the checkpoint folder."""


class PickleCheckpointError(CheckpointError):
    """The weights are pickle files (``*.bin``/``*.pt``); only safetensors are loaded."""


class CorruptCheckpointError(CheckpointError):
    """A safetensors file is truncated or corrupt (header past the end, bad JSON, offsets out of range)."""


class ConfigError(CheckpointError):
    """config.json is unreadable or lacks a key the architecture needs."""


class ShapeMismatchError(CheckpointError):
    """A tensor's shape contradicts config.json."""


class UnsupportedArchitectureError(CheckpointError):
    """config.json names an architecture DistillDesk cannot convert."""


class NonFiniteWeightsError(CheckpointError):
    """A tensor holds NaN or Inf values (the message names it)."""


class TokenizerError(CheckpointError):
    """tokenizer.json / tokenizer_config.json cannot be exported."""


class UnknownPreTokenizerError(TokenizerError):
    """The tokenizer's pre-tokenizer hash is not one llama.cpp knows; pass ``pre_tokenizer=`` to override."""


# ---- recipes / imatrix -----------------------------------------------------------------------------------
class UnknownRecipeError(QuantizerError, ValueError):
    """The recipe name is not one of the supported quantization types."""


class ImatrixFileError(QuantizerError, ValueError):
    """The importance-matrix file is missing, unreadable or does not fit the model."""


# ---- the output ------------------------------------------------------------------------------------------
class OutputError(QuantizerError, OSError):
    """The output GGUF cannot be written."""


class OutputIsInputError(OutputError, ValueError):
    """The output path is one of the checkpoint's input files."""


class OutputNotWritableError(OutputError, PermissionError):
    """The output folder does not exist or is not writable."""


class NotEnoughDiskError(OutputError):
    """The output folder's disk has less free space than the GGUF needs."""


class ConversionCancelled(QuantizerError):
    """The conversion was cancelled; no output was left behind."""
