"""QThread plumbing: every long job runs in a worker QObject living in its own QThread.

Rules (gpt4all / napari lessons):
* a worker never touches a GUI object or a GUI model; it only emits signals, which Qt queues to the GUI thread;
* the GUI stops a worker through a ``threading.Event`` handed to the service as ``cancel`` (a queued "stop"
  signal would wait behind the running call, so the flag is set directly from the GUI thread);
* every thread is registered in one :class:`ThreadRegistry`, so closing the window cancels and joins them all.

:class:`Job` runs one callable ``fn(*args, progress=..., cancel=..., **kwargs)`` (quantize, download, compare,
eval).  The long-lived per-model worker is in :mod:`app.ui.model_worker`.
"""
from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Qt, QThread, Signal, Slot

log = logging.getLogger(__name__)

class ThreadRegistry(QObject):
    """All live worker threads of the app (one instance per main window, or the module default)."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._threads: list[QThread] = []
        self._cancels: dict[int, Callable[[], None]] = {}

    def add(self, thread: QThread, cancel: Callable[[], None]) -> None:
        self._threads.append(thread)
        self._cancels[id(thread)] = cancel
        thread.finished.connect(lambda t=thread: self._forget(t))

    def _forget(self, thread: QThread) -> None:
        if thread in self._threads:
            self._threads.remove(thread)
        self._cancels.pop(id(thread), None)

    def live(self) -> list[QThread]:
        return [t for t in self._threads if t.isRunning()]

    def shutdown(self, timeout_ms: int = 30000) -> bool:
        """Cancel every job and join every thread.  True when all stopped within the timeout."""
        for cancel in list(self._cancels.values()):
            try:
                cancel()
            except Exception:  # a cancel must never stop the others from being cancelled
                log.exception("cancel failed")
        ok = True
        deadline = time.monotonic() + timeout_ms / 1000
        for t in list(self._threads):
            left = max(1, int((deadline - time.monotonic()) * 1000))
            if not t.wait(left):
                log.warning("a worker thread did not stop within %d ms", timeout_ms)
                ok = False
        self._threads = [t for t in self._threads if t.isRunning()]
        return ok


class _JobWorker(QObject):
    progress = Signal(object)
    stream = Signal(str, object)
    done = Signal(object)
    failed = Signal(object)
    cancelled = Signal()
    finished = Signal()

    def __init__(self, fn: Callable[..., Any], args: tuple, kwargs: dict, cancel: threading.Event,
                 with_progress: bool, streams: tuple[str, ...], with_cancel: bool = True) -> None:
        super().__init__()
        self._with_cancel = with_cancel
        self._fn, self._args, self._kwargs = fn, args, kwargs
        self._streams = streams
        self._cancel = cancel
        self._with_progress = with_progress

    def _progress(self, *payload: Any) -> None:
        # Every report is forwarded: the services already report at a sane rate (per tensor, per chunk, every
        # megabyte), and dropping one here could hide the last state before a long pause (a stalled download).
        self.progress.emit(payload[0] if len(payload) == 1 else payload)

    @Slot()
    def run(self) -> None:
        kwargs = dict(self._kwargs)
        if self._with_cancel:
            kwargs["cancel"] = self._cancel
        if self._with_progress:
            kwargs["progress"] = self._progress
        for name in self._streams:  # streamed text is never dropped, unlike progress
            kwargs[name] = lambda value, _n=name: self.stream.emit(_n, value)
        try:
            result = self._fn(*self._args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - every failure goes back to the GUI as a signal
            if self._cancel.is_set():  # the user stopped it: whatever the way out, it is not an error to show
                log.debug("job %s ended by cancel: %r", self.objectName(), e)
                self.cancelled.emit()
            else:
                log.debug("job failed:\n%s", traceback.format_exc())
                self.failed.emit(e)
        else:
            if self._cancel.is_set():
                self.cancelled.emit()
            else:
                self.done.emit(result)
        finally:
            self.finished.emit()


class Job(QObject):
    """One long call in its own QThread.  Connect to the signals, then :meth:`start`.

    ``progress(payload)``, ``done(result)``, ``failed(exception)``, ``cancelled()`` arrive on the GUI thread;
    ``finished()`` comes last in every case, once the thread has stopped.  ``streams`` names keyword arguments of
    ``fn`` that take streamed values (e.g. ``on_reference_text``); each call arrives as ``stream(name, value)``.
    """

    progress = Signal(object)
    stream = Signal(str, object)
    done = Signal(object)
    failed = Signal(object)
    cancelled = Signal()
    finished = Signal()

    def __init__(self, fn: Callable[..., Any], *args: Any, registry: ThreadRegistry | None = None,
                 with_progress: bool = True, with_cancel: bool = True, name: str = "job",
                 streams: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__()
        self.name = name
        self.cancel_event = threading.Event()
        self._thread = QThread()
        self._thread.setObjectName(f"distilldesk-{name}")
        self._worker = _JobWorker(fn, args, kwargs, self.cancel_event, with_progress, tuple(streams), with_cancel)
        self._worker.moveToThread(self._thread)
        self._thread.started.connect(self._worker.run)
        self._worker.progress.connect(self.progress)
        self._worker.stream.connect(self.stream)
        self._worker.done.connect(self.done)
        self._worker.failed.connect(self.failed)
        self._worker.cancelled.connect(self.cancelled)
        # Direct: quit from the worker thread itself, so a GUI thread blocked in wait() (window closing) is not
        # waiting for its own event loop to deliver the quit.
        self._worker.finished.connect(self._thread.quit, Qt.ConnectionType.DirectConnection)
        self._thread.finished.connect(self._on_thread_finished)
        self._registry = registry if registry is not None else default_registry()
        self._running = False

    def start(self) -> Job:
        self._registry.add(self._thread, self.cancel)
        self._running = True
        self._thread.start()
        return self

    def cancel(self) -> None:
        self.cancel_event.set()

    def is_running(self) -> bool:
        return self._running

    def wait(self, timeout_ms: int = 30000) -> bool:
        return self._thread.wait(timeout_ms)

    def _on_thread_finished(self) -> None:
        self._running = False
        self.finished.emit()


_DEFAULT: ThreadRegistry | None = None


def default_registry() -> ThreadRegistry:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = ThreadRegistry()
    return _DEFAULT
