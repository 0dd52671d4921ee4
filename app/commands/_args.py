"""Argument types shared by the subcommands: nonsense values are refused by the parser with one line that says
what is allowed (``distilldesk chat: error: argument --max-tokens: 0 is not a positive whole number ...``).

Use them as ``type=`` in ``add_argument``.  ``threads`` also takes ``"auto"`` (use it as the default: argparse
converts string defaults with the type), which is :func:`quantizer.cpus.default_threads`; a count above the
usable cores is capped, with a note on stderr.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from quantizer.cpus import cap_threads, default_threads, usable_cores

# the smallest context worth loading (llama.cpp rounds any context up to a multiple of 256 anyway)
MIN_CTX = 64


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_int(text: str) -> int:
    """A whole number >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed: give a whole number of at least 1")
    return value


def threads(text: str) -> int:
    """``auto`` (the physical cores) or a count >= 1, capped at the usable cores with a note."""
    if text == "auto":
        return default_threads()
    value = positive_int(text)
    capped = cap_threads(value)
    if capped < value:
        print(f"distilldesk: note: --threads {value} is more than the {usable_cores()} usable cores: using "
              f"{capped}", file=sys.stderr)
    return capped


def context_size(text: str) -> int:
    """0 (the model's trained length) or at least :data:`MIN_CTX` tokens."""
    value = _int(text)
    if value != 0 and value < MIN_CTX:
        raise argparse.ArgumentTypeError(f"{value} tokens is too small: give at least {MIN_CTX}, or 0 for the "
                                         f"model's trained length")
    return value


def temperature(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value:g} is not allowed: give 0 (always the most likely token) or more")
    return value


def probability(text: str) -> float:
    """A number from 0 to 1 (top-p)."""
    value = _float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{value:g} is not allowed: give a number from 0 to 1")
    return value


def prompt(text: str) -> str:
    """A message with something in it."""
    if not text.strip():
        raise argparse.ArgumentTypeError("the prompt is empty: give the text to send")
    return text


def text_file(text: str) -> str:
    """An existing file (not a folder)."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder: give a UTF-8 text file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{path} does not exist: give a UTF-8 text file")
    return str(path)
