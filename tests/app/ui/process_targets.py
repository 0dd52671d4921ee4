"""Targets run by tests of app.ui.process_job in a child process (importable there by name)."""
from __future__ import annotations

import os
import time


def count(n: int, *, progress, cancel) -> int:
    for i in range(1, n + 1):
        progress(i, n)
    return os.getpid()


def refuse(*, progress, cancel) -> None:
    from quantizer.errors import PickleCheckpointError

    raise PickleCheckpointError("pickle weights: download the safetensors version")


def wait_for_cancel(*, progress, cancel) -> None:
    progress("waiting")
    while not cancel.is_set():
        time.sleep(0.01)
    from quantizer.errors import ConversionCancelled

    raise ConversionCancelled("cancelled; nothing was written")


def die(*, progress, cancel) -> None:
    os._exit(3)
