"""This machine and this process, the same way on Linux, Windows and macOS (psutil): the memory the app shows and
the threads it uses by default (:mod:`quantizer.cpus`, re-exported here for the app layers)."""
from __future__ import annotations

from quantizer.cpus import cap_threads, default_threads, physical_cores, usable_cores

__all__ = ["cap_threads", "default_threads", "physical_cores", "rss_bytes", "usable_cores"]


def rss_bytes() -> int:
    """Resident memory of this process now (not the peak: ``ru_maxrss`` is the peak, and in kibibytes or bytes
    depending on the OS)."""
    import psutil

    return int(psutil.Process().memory_info().rss)
