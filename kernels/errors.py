"""Typed errors of the kernels package.  Each subclasses the built-in it behaves like and says what to do."""
from __future__ import annotations


class KernelError(Exception):
    """Base of every error raised by :mod:`kernels`."""


class UnsupportedTypeError(KernelError, ValueError):
    """The GGML type is not one that DistillDesk's kernels implement."""


class ShapeError(KernelError, ValueError):
    """The input's shape, dtype or row length does not fit the type's block layout."""


class NonFiniteError(KernelError, ValueError):
    """The data holds NaN or Inf; quantizing it would write garbage blocks silently."""


class ImatrixError(KernelError, ValueError):
    """The importance matrix has the wrong length, dtype, or holds negative / non-finite values."""
