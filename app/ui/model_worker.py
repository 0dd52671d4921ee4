"""One loaded model = one :class:`ModelWorker` living in its own QThread, owned by one :class:`ModelHost`.

The host (GUI thread) talks to the worker only through queued signals (load, chat, shutdown); the worker
answers only through signals (loaded, segment, replied, failed).  Stopping a reply sets the request's
``threading.Event``, which the engine checks at every token -- so Stop works while the worker is busy, where a
queued "stop" signal would wait behind the running call.  The worker never touches a GUI model.
"""
from __future__ import annotations

import itertools
import logging
import threading
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QThread, Signal, Slot

from .workers import ThreadRegistry, default_registry

log = logging.getLogger(__name__)

# Request ids are unique in the whole app, not per host: a retired model's late reply can never be taken for the
# reply of the model that replaced it.
_request_ids = itertools.count(1)


class ModelWorker(QObject):
    loaded = Signal(object)  # ModelInfo
    loadFailed = Signal(object)  # exception
    segment = Signal(int, str, str)  # request id, "reasoning" | "answer", text
    replied = Signal(int, object)  # request id, Reply
    failed = Signal(int, object)  # request id, exception
    unloaded = Signal()

    def __init__(self) -> None:
        super().__init__()
        self._engine: Any = None

    @Slot(str, object)
    def load(self, path: str, options: dict) -> None:
        from app.core.engine import Engine

        self._close_engine()
        opts = options.get("options")
        if opts is not None and opts.rpc_workers:
            # ggml aborts the process holding a model when one of its workers is lost: keep it out of the app's.
            from app.core.engine_process import ProcessEngine as Engine  # noqa: N814
        try:
            self._engine = Engine(Path(path), **options)
        except Exception as e:  # noqa: BLE001 - reported to the GUI, which shows one dialog
            self.loadFailed.emit(e)
            return
        self.loaded.emit(self._engine.info)

    @Slot(int, object, object, object)
    def chat(self, request: int, messages: list, settings: Any, cancel: threading.Event) -> None:
        if self._engine is None:
            from app.core.errors import EngineError

            self.failed.emit(request, EngineError("no model is loaded: pick one in the Library first"))
            return

        def on_text(seg: Any) -> None:
            self.segment.emit(request, seg.kind, seg.text)

        try:
            reply = self._engine.chat(messages, settings=settings, on_text=on_text, cancel=cancel)
        except Exception as e:  # noqa: BLE001
            self.failed.emit(request, e)
            return
        self.replied.emit(request, reply)

    @Slot()
    def shutdown(self) -> None:
        """Free the model, then end this worker's thread (runs after any call already queued)."""
        self._close_engine()
        self.unloaded.emit()
        QThread.currentThread().quit()

    def _close_engine(self) -> None:
        if self._engine is not None:
            try:
                self._engine.close()
            except Exception:  # noqa: BLE001 - closing must not fail the caller
                log.exception("closing the engine failed")
            self._engine = None


class ModelHost(QObject):
    """GUI-thread owner of one model worker and its thread.  Signals are re-emitted on the GUI thread."""

    loaded = Signal(object)
    loadFailed = Signal(object)
    segment = Signal(int, str, str)
    replied = Signal(int, object)
    failed = Signal(int, object)
    busyChanged = Signal(bool)

    _requestLoad = Signal(str, object)
    _requestChat = Signal(int, object, object, object)
    _requestShutdown = Signal()

    def __init__(self, registry: ThreadRegistry | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._thread = QThread()
        self._thread.setObjectName("distilldesk-model")
        self._worker = ModelWorker()
        self._worker.moveToThread(self._thread)
        self._requestLoad.connect(self._worker.load)
        self._requestChat.connect(self._worker.chat)
        self._requestShutdown.connect(self._worker.shutdown)
        self._worker.loaded.connect(self._on_loaded)
        self._worker.loadFailed.connect(self._on_load_failed)
        self._worker.segment.connect(self.segment)
        self._worker.replied.connect(self._on_replied)
        self._worker.failed.connect(self._on_failed)
        self._cancels: dict[int, threading.Event] = {}
        self._loading = False
        self.info: Any = None
        self.path: Path | None = None
        (registry or default_registry()).add(self._thread, self.cancel_all)
        self._thread.start()

    # ---- requests ------------------------------------------------------------------------------------------
    def load(self, path: str | Path, **options: Any) -> None:
        self.cancel_all()
        self.info = None
        self.path = Path(path)
        self._loading = True
        self.busyChanged.emit(True)
        self._requestLoad.emit(str(path), options)

    def chat(self, messages: list, settings: Any) -> int:
        """Queue a reply; returns its request id (the id the segment/replied/failed signals carry)."""
        rid = next(_request_ids)
        self._cancels[rid] = threading.Event()
        self.busyChanged.emit(True)
        self._requestChat.emit(rid, list(messages), settings, self._cancels[rid])
        return rid

    def stop(self, request: int | None = None) -> None:
        """Stop one reply (or all): the engine returns the partial reply with finish_reason "cancelled"."""
        if request is None:
            self.cancel_all()
        elif request in self._cancels:
            self._cancels[request].set()

    def cancel_all(self) -> None:
        for ev in self._cancels.values():
            ev.set()

    def is_busy(self) -> bool:
        return self._loading or bool(self._cancels)

    def is_loaded(self) -> bool:
        return self.info is not None

    def close(self, timeout_ms: int = 60000) -> bool:
        """Stop any reply, free the model, end and join the thread.  True when the thread has stopped."""
        if not self._thread.isRunning():
            return True
        self.cancel_all()
        self._requestShutdown.emit()
        ok = self._thread.wait(timeout_ms)
        self.info = None
        return ok

    def retire(self, on_stopped=None) -> None:
        """Like :meth:`close` but without waiting: the worker frees the model in its own thread and the thread
        ends; ``on_stopped()`` runs (GUI thread) once it has."""
        self.cancel_all()
        if on_stopped is not None:
            self._thread.finished.connect(on_stopped)
        if self._thread.isRunning():
            self._requestShutdown.emit()
        elif on_stopped is not None:
            on_stopped()

    # ---- results (GUI thread) ------------------------------------------------------------------------------
    def _on_loaded(self, info: Any) -> None:
        self._loading = False
        self.info = info
        self.loaded.emit(info)
        self._emit_busy()

    def _on_load_failed(self, e: BaseException) -> None:
        self._loading = False
        self.path = None
        self.loadFailed.emit(e)
        self._emit_busy()

    def _on_replied(self, rid: int, reply: Any) -> None:
        self._cancels.pop(rid, None)
        self.replied.emit(rid, reply)
        self._emit_busy()

    def _on_failed(self, rid: int, e: BaseException) -> None:
        self._cancels.pop(rid, None)
        self.failed.emit(rid, e)
        self._emit_busy()

    def _emit_busy(self) -> None:
        self.busyChanged.emit(self.is_busy())
