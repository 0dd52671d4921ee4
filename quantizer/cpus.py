"""How many threads to use, the same answer everywhere (quantizer workers, the engine, the GUI's settings, the CLI).

* :func:`usable_cores`: the logical CPUs this process may run on (its affinity mask where the OS has one: Linux
  ``sched_getaffinity``, Windows/Linux/FreeBSD through psutil), else all of them.
* :func:`default_threads`: the physical cores where known (Apple Silicon and many CPUs have no SMT; on those that
  do, a second thread per core adds little to numpy/ggml work), never more than the usable cores.
* :func:`cap_threads`: a requested count, capped at the usable cores (more only adds switching).
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def usable_cores() -> int:
    """Logical CPUs this process may run on (>= 1)."""
    if hasattr(os, "sched_getaffinity"):
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except OSError:
            pass
    try:
        import psutil

        affinity = psutil.Process().cpu_affinity()  # not on macOS (no affinity masks there)
        if affinity:
            return len(affinity)
    except (ImportError, AttributeError, OSError, NotImplementedError):
        pass
    return max(1, os.cpu_count() or 1)


def physical_cores() -> int | None:
    """Physical cores of the machine, or None where the OS does not say."""
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
    except (ImportError, OSError, NotImplementedError):
        return None
    return int(n) if n else None


def default_threads() -> int:
    """Threads to use when the user did not say: the physical cores, within the affinity mask."""
    usable = usable_cores()
    physical = physical_cores()
    return max(1, min(usable, physical)) if physical else usable


def cap_threads(threads: int) -> int:
    """``threads`` (>= 1), at most :func:`usable_cores`."""
    return max(1, min(int(threads), usable_cores()))
