"""Quantizing runs in a child process (its own GIL: the GUI stays smooth): progress, result, typed errors, cancel
and a dying child all come back to the worker thread."""
from __future__ import annotations

import os
import threading

import pytest

from app.ui.process_job import ChildProcessError_, run_in_process
from quantizer.errors import ConversionCancelled, PickleCheckpointError

T = "tests.app.ui.process_targets:"


def test_progress_and_result_come_back():
    seen = []
    pid = run_in_process(T + "count", 5, progress=seen.append)
    assert seen == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]
    assert pid != os.getpid()


def test_typed_error_keeps_its_type():
    with pytest.raises(PickleCheckpointError, match="safetensors"):
        run_in_process(T + "refuse")


def test_cancel_reaches_the_child():
    cancel = threading.Event()

    def progress(_p):
        cancel.set()  # as the GUI would, from the other thread

    with pytest.raises(ConversionCancelled):
        run_in_process(T + "wait_for_cancel", progress=progress, cancel=cancel)


def test_a_dying_child_is_an_error_that_says_what_to_do():
    with pytest.raises(ChildProcessError_, match="exit code 3.*memory"):
        run_in_process(T + "die")
