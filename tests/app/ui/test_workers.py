"""The thread plumbing: jobs report through signals on the GUI thread, cancel through the Event, the registry joins
everything, the GUI model refuses changes from other threads, and the leak fixture catches a live QThread."""
from __future__ import annotations

import threading
import time

import pytest
from PySide6.QtCore import QThread

from app.ui.chat_model import ChatMessage, MessageListModel
from app.ui.workers import Job, ThreadRegistry

from .conftest import live_qthreads


def _count(n: int, *, progress, cancel) -> int:
    for i in range(1, n + 1):
        if cancel.is_set():
            raise InterruptedError("cancelled")
        time.sleep(0.002)
        progress(i, n)
    return n


def test_job_reports_progress_and_result_on_the_gui_thread(qtbot):
    threads, values = [], []
    job = Job(_count, 50, registry=ThreadRegistry(), name="count")
    job.progress.connect(lambda p: (values.append(p), threads.append(QThread.currentThread())))
    with qtbot.waitSignal(job.finished, timeout=10000):
        with qtbot.waitSignal(job.done, timeout=10000) as done:
            job.start()
    assert done.args == [50]
    assert values == [(i, 50) for i in range(1, 51)]  # every report, in order (none lost before a pause)
    assert all(t is QThread.currentThread() for t in threads)
    assert not job.is_running()


def test_job_failure_and_cancel(qtbot):
    def boom(*, progress, cancel):
        raise ValueError("bad input: do X")

    job = Job(boom, registry=ThreadRegistry())
    with qtbot.waitSignal(job.failed, timeout=5000) as failed:
        job.start()
    assert isinstance(failed.args[0], ValueError)
    job.wait()

    started = threading.Event()

    def slow(*, progress, cancel):
        started.set()
        while not cancel.wait(0.01):
            pass
        raise InterruptedError("cancelled")

    job = Job(slow, registry=ThreadRegistry())
    job.start()
    assert started.wait(5)
    with qtbot.waitSignal(job.cancelled, timeout=5000):
        job.cancel()
    assert job.wait(5000)


def test_registry_shutdown_cancels_and_joins(qtbot):
    reg = ThreadRegistry()
    gate = threading.Event()

    def wait_for_cancel(*, progress, cancel):
        gate.set()
        cancel.wait(30)

    jobs = [Job(wait_for_cancel, registry=reg).start() for _ in range(3)]
    assert gate.wait(5)
    assert len(reg.live()) >= 1
    assert reg.shutdown(timeout_ms=10000)
    assert reg.live() == []
    assert all(j.cancel_event.is_set() for j in jobs)


def test_message_model_refuses_changes_from_a_worker_thread(qtbot):
    model = MessageListModel()
    errors: list[BaseException] = []

    def worker():
        try:
            model.append(ChatMessage("user", "hi"))
        except RuntimeError as e:
            errors.append(e)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert errors and "GUI thread" in str(errors[0])
    assert model.rowCount() == 0
    model.append(ChatMessage("user", "hi"))  # fine on the GUI thread
    assert model.rowCount() == 1


def test_leak_check_catches_a_running_qthread(qtbot):
    gate = threading.Event()

    class Busy(QThread):
        def run(self):
            gate.wait(30)

    t = Busy()
    t.setObjectName("leaky")
    t.start()
    try:
        alive = live_qthreads([(t, "here")])
        assert [x.objectName() for x, _ in alive] == ["leaky"]
        from .conftest import fail_on_live_qthreads

        with pytest.raises(pytest.fail.Exception, match="leaky"):
            fail_on_live_qthreads([(t, "here")])
    finally:
        gate.set()
        assert t.wait(5000)
    assert live_qthreads([(t, "here")]) == []
