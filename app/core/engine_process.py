"""An :class:`~app.core.engine.Engine` in a child process, for models that run on RPC workers.

ggml's RPC client cannot survive a broken connection: when a worker dies mid-generation it calls ``GGML_ABORT``,
which ends the whole process.  The app must survive that with its history intact, so a load that uses workers runs
in a child process ("spawn": forking a process with Qt and llama.cpp threads is not safe).  The child reports the
lost endpoints (app.core.backends' abort hook) just before it dies; the parent turns that, or any death of the
child, into :class:`~app.core.errors.WorkerLostError` naming the worker, and the app carries on (the model must be
loaded again).

:class:`ProcessEngine` offers the part of Engine's API the GUI's model worker uses: ``info``, ``backend``,
``chat(messages, settings=, on_text=, cancel=)``, ``close()``, ``closed``.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import EngineError, WorkerLostError

log = logging.getLogger(__name__)
_POLL_S = 0.05


def _child(conn: Any, path: str, kwargs: dict) -> None:
    """The child's main: load, then serve chat requests until "close" (or the parent goes away)."""
    from . import backends
    from .engine import Engine

    send_lock = threading.Lock()

    def send(*msg: Any) -> None:
        with send_lock:
            conn.send(msg)

    backends.set_worker_loss_hook(lambda lost, text: send("lost", lost, text))
    try:
        engine = Engine(Path(path), **kwargs)
    except Exception as e:  # noqa: BLE001 - travels to the parent, re-raised there with its type
        send("error", e)
        return
    send("loaded", engine.info, engine.backend)
    cancel = threading.Event()
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        if msg[0] == "close":
            break
        if msg[0] != "chat":
            continue
        cancel.clear()
        done = threading.Event()

        def watch_cancel(done: threading.Event = done) -> None:   # "cancel" may arrive while generating
            while not done.is_set():
                if conn.poll(_POLL_S):
                    try:
                        if conn.recv()[0] == "cancel":
                            cancel.set()
                    except (EOFError, OSError):
                        cancel.set()
                        return

        watcher = threading.Thread(target=watch_cancel, daemon=True)
        watcher.start()
        try:
            reply = engine.chat(msg[1], settings=msg[2], cancel=cancel,
                                on_text=lambda seg: send("segment", seg.kind, seg.text))
            result: tuple = ("reply", reply)
        except Exception as e:  # noqa: BLE001
            result = ("error", e)
        done.set()
        watcher.join()
        send(*result)
    engine.close()


class ProcessEngine:
    """An Engine loaded in a child process (see the module docstring).  Same constructor as Engine."""

    def __init__(self, model_path: str | Path, **kwargs: Any) -> None:
        options = kwargs.get("options")
        self._workers: tuple[str, ...] = tuple(getattr(options, "rpc_workers", ()) or ())
        ctx = mp.get_context("spawn")
        self._conn, child_conn = ctx.Pipe()
        self._proc = ctx.Process(target=_child, args=(child_conn, str(model_path), kwargs), daemon=True,
                                 name="distilldesk-model")
        self._proc.start()
        child_conn.close()
        self._lock = threading.Lock()
        self._closed = False
        try:
            msg = self._recv()
        except BaseException:
            self._kill()
            raise
        if msg[0] == "error":
            self._kill()
            raise msg[1]
        self._info, self._backend = msg[1], msg[2]

    @property
    def info(self) -> Any:
        return self._info

    @property
    def backend(self) -> str:
        return self._backend

    @property
    def closed(self) -> bool:
        return self._closed

    def chat(self, messages: Sequence[Any], *, settings: Any = None, on_text: Any = None,
             cancel: threading.Event | None = None) -> Any:
        from .thinking import Segment

        if self._closed:
            raise EngineError("the model was closed: load it again")
        with self._lock:
            self._conn.send(("chat", list(messages), settings))
            sent_cancel = False

            def forward_cancel() -> None:       # Stop works while the child generates
                nonlocal sent_cancel
                if cancel is not None and cancel.is_set() and not sent_cancel:
                    self._conn.send(("cancel",))
                    sent_cancel = True

            while True:
                msg = self._recv(forward_cancel)
                if msg[0] == "segment":
                    if on_text is not None:
                        on_text(Segment(msg[1], msg[2]))
                elif msg[0] == "reply":
                    return msg[1]
                elif msg[0] == "error":
                    raise msg[1]

    def _recv(self, idle: Any = None) -> tuple:
        """The child's next message (``idle()`` runs while waiting); WorkerLostError when it reports a lost worker
        or dies."""
        while True:
            if idle is not None:
                idle()
            try:
                if self._conn.poll(_POLL_S):
                    msg = self._conn.recv()
                    if msg[0] == "lost":
                        self._lost(msg[1], msg[2])
                    return msg
            except (EOFError, OSError):
                self._lost([], "")
            if not self._proc.is_alive() and not self._conn.poll():
                self._lost([], "")

    def _lost(self, lost: list[str], detail: str) -> None:
        self._kill()
        self._closed = True
        err = lost_worker_error(self._workers, lost)
        if err is not None:
            raise err
        raise EngineError(f"the model's process ended unexpectedly (exit code {self._proc.exitcode}); the "
                          f"conversation is kept: load the model again" + (f" ({detail})" if detail else ""))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._conn.send(("close",))
        except OSError:
            pass
        self._proc.join(30)
        self._kill()

    def _kill(self) -> None:
        if self._proc.is_alive():
            self._proc.kill()
        self._proc.join(10)
        self._conn.close()

    def __enter__(self) -> ProcessEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _reachable(endpoint: str) -> bool:
    from .backends import parse_endpoint

    try:
        socket.create_connection(parse_endpoint(endpoint), timeout=2.0).close()
        return True
    except OSError:
        return False


def lost_worker_error(workers: Sequence[str], lost: Sequence[str] = ()) -> WorkerLostError | None:
    """The error naming the ``lost`` workers (or, if not known, those of ``workers`` that no longer accept
    connections); None when every worker still answers."""
    lost = list(lost) or [w for w in workers if not _reachable(w)]
    if not lost:
        return None
    return WorkerLostError(f"the RPC worker {', '.join(lost)} was lost while the model ran on it; the "
                           f"conversation and results so far are kept: start the worker again (or remove it in "
                           f"Settings) and load the model again")
