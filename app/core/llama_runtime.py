"""llama.cpp process-wide plumbing: its log routed to ``logging``, the context sizes it really makes, which GPU
backend the build has, free and total memory.

llama.cpp logs through one global callback.  Importing ``llama_cpp`` installs llama-cpp-python's, which prints to
stderr; :func:`install_llama_log_handler` replaces it with one that sends whole lines to the ``logging`` logger
``"app.core.llama_cpp"`` (and remembers the last warnings/errors, quoted when a model fails to load).
"""
from __future__ import annotations

import ctypes
import logging
import re
import threading
from collections import deque
from typing import Any

from .errors import EngineSettingError

llama_log = logging.getLogger("app.core.llama_cpp")


# ---- llama.cpp's log -> logging ----------------------------------------------------------------------------------
# ggml.h's ggml_log_level: 0 none, 1 debug, 2 info, 3 warn, 4 error, 5 "continue the previous message"
# (llama-cpp-python's _logger.py comment has an older order).
_GGML_LEVELS = {0: logging.INFO, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_log_state: dict[str, Any] = {"level": logging.INFO, "partial": "", "callback": None}
_log_lock = threading.Lock()
_recent_problems: deque[str] = deque(maxlen=8)   # last warning/error lines, quoted in load-failure messages


def _on_llama_log(level: int, text: bytes | None, _user: Any) -> None:
    """Called by llama.cpp (any thread) for every log fragment; whole lines go to ``llama_log``."""
    try:
        msg = (text or b"").decode("utf-8", errors="replace")
        with _log_lock:
            if level != 5:
                _log_state["level"] = _GGML_LEVELS.get(level, logging.INFO)
            buf = _log_state["partial"] + msg
            *lines, _log_state["partial"] = buf.split("\n")
            lvl = _log_state["level"]
        for line in lines:
            if line.strip():
                if lvl >= logging.WARNING:
                    _recent_problems.append(line.strip())
                llama_log.log(lvl, "%s", line)
    except Exception:  # noqa: BLE001 - an exception must never cross back into C
        pass


def install_llama_log_handler() -> None:
    """Route llama.cpp/ggml logging to the ``app.core.llama_cpp`` logger (idempotent; the Engine calls it).
    Importing llama_cpp installs its own printer to stderr, so this runs after that import."""
    import llama_cpp

    if _log_state["callback"] is None:
        _log_state["callback"] = llama_cpp.llama_log_callback(_on_llama_log)   # kept alive: C holds the pointer
    llama_cpp.llama_log_set(_log_state["callback"], ctypes.c_void_p(0))


# ---- context size ------------------------------------------------------------------------------------------------
CTX_GRANULARITY = 256      # llama.cpp pads n_ctx up to a multiple of this (llama-context.cpp: GGML_PAD(n_ctx, 256))
MAX_N_CTX = 1 << 24        # 16M tokens: beyond any model's context; larger is a typo, not a setting


def context_size(n_ctx: int, trained: int = 0) -> int:
    """The context llama.cpp will really have for ``n_ctx`` (0 = the model's ``trained`` length): rounded up to a
    multiple of :data:`CTX_GRANULARITY`.  Raises EngineSettingError for a size that is not a whole number from 0
    to :data:`MAX_N_CTX`."""
    if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or not 0 <= n_ctx <= MAX_N_CTX:
        raise EngineSettingError(f"context size {n_ctx!r} is not valid: use a whole number of tokens from 1 to "
                                 f"{MAX_N_CTX:,} (e.g. 4096), or 0 for the model's trained length")
    n = n_ctx or trained
    return -(-n // CTX_GRANULARITY) * CTX_GRANULARITY if n else 0


# GPU backends as llama.cpp's system info names them, and how we call them.
_GPU_NAMES = {"CUDA": "CUDA", "Metal": "Metal", "MTL": "Metal", "Vulkan": "Vulkan", "HIP": "ROCm", "ROCm": "ROCm",
              "SYCL": "SYCL", "MUSA": "MUSA", "CANN": "CANN", "OpenCL": "OpenCL", "Kompute": "Kompute"}


def gpu_backend() -> str | None:
    """The GPU backend of this machine's first GPU device (``"CUDA"``, ``"Metal"``, ``"Vulkan"``, ...: linked into
    the build or an installed GPU module, see :mod:`app.core.backends`), or ``None`` when there is none.  RPC
    workers do not count here (``llama_supports_gpu_offload()`` is true for any build with RPC)."""
    from . import backends

    for dev in backends.list_devices():
        if not dev.remote and dev.kind in ("GPU", "iGPU"):
            return _GPU_NAMES.get(dev.backend, dev.backend)
    return None


def _memory(field: str) -> int | None:
    """``psutil.virtual_memory().<field>`` in bytes (Linux: /proc/meminfo; Windows, macOS: the OS's own counters),
    or None where it cannot be read."""
    try:
        import psutil

        return int(getattr(psutil.virtual_memory(), field))
    except (ImportError, OSError, AttributeError, RuntimeError):
        return None


def available_memory() -> int | None:
    """Bytes of RAM available to a new allocation without swapping (Linux MemAvailable; the same on every OS)."""
    return _memory("available")


def total_memory() -> int | None:
    """Bytes of physical RAM in this machine, or None if unknown."""
    return _memory("total")


def recent_problems() -> list[str]:
    """The last warning/error lines llama.cpp logged."""
    return list(_recent_problems)


def load_failure_reason(fallback: str) -> str:
    """Why llama.cpp failed to load a model, in its own words without its function-name prefixes and generic
    "failed to load model" lines (``llama_model_load: error loading model: unknown model architecture: 'x'`` ->
    ``unknown model architecture: 'x'``); ``fallback`` when it said nothing more specific."""
    reasons: list[str] = []
    for line in _recent_problems:
        text = re.sub(r"^(\w+: )+", "", line).removeprefix("error loading model: ").strip()
        if text and "failed to load model" not in text.lower() and text not in reasons:
            reasons.append(text)
    return "; ".join(reasons) or fallback


def clear_recent_problems() -> None:
    _recent_problems.clear()
