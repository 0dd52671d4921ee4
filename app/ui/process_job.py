"""Run a long, CPU-bound, Python-heavy service call (quantizing) in a child process, from a worker thread.

Why: a worker *thread* running our numpy kernels shares the GIL with the GUI thread; C calls that hold it (parsing
an 11 MB tokenizer.json, some numpy loops) stall the event loop for 50-100+ ms.  A child process has its own GIL,
so the GUI stays smooth, and a crash in a kernel cannot take the window down.

:func:`run_in_process` has the service signature -- ``fn(*args, progress=..., cancel=..., **kwargs)`` -- so a
:class:`~app.ui.workers.Job` runs it like any other call.  The target is named ``"module:function"`` (the child
imports it); progress objects and the result travel back pickled; the target's own exception is re-raised in the
parent with its type; the thread's ``threading.Event`` is mirrored into a ``multiprocessing.Event`` (the services
only call ``cancel.is_set()``).  The "spawn" start method is used everywhere: forking a process that runs Qt and
llama.cpp threads is not safe.  As with any spawn-based multiprocessing, a script that opens the GUI must keep
its top level import-safe (``if __name__ == "__main__":``): the child imports it as ``__mp_main__``.
"""
from __future__ import annotations

import importlib
import logging
import multiprocessing as mp
import queue as queue_mod
import sys
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_POLL_S = 0.05
# Set to True by a frozen app's entry point once it has called multiprocessing.freeze_support().
_FREEZE_SUPPORT_OK = False


class ChildProcessError_(RuntimeError):  # noqa: N801 - not the builtin ChildProcessError (an OSError)
    """The child process died without reporting (killed, out of memory, a crash in native code)."""


def _resolve(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _child(target: str, args: tuple, kwargs: dict, q: Any, cancel: Any) -> None:
    def progress(*payload: Any) -> None:
        q.put(("progress", payload[0] if len(payload) == 1 else payload))

    try:
        result = _resolve(target)(*args, progress=progress, cancel=cancel, **kwargs)
    except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
        try:
            q.put(("error", e))
        except Exception:  # an exception that does not pickle: send its text
            q.put(("error", RuntimeError(f"{type(e).__name__}: {e}")))
    else:
        q.put(("done", result))


def run_in_process(target: str, *args: Any, progress: Callable[..., None] | None = None,
                   cancel: threading.Event | None = None, **kwargs: Any) -> Any:
    """Call ``target`` (``"module:function"``) in a child process; see the module docstring."""
    if getattr(sys, "frozen", False) and not _FREEZE_SUPPORT_OK:
        # A PyInstaller bundle can only spawn children when its entry point calls
        # multiprocessing.freeze_support(); without that the child would start the whole app again.
        log.info("frozen app: running %s in this process", target)
        return _resolve(target)(*args, progress=progress, cancel=cancel, **kwargs)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    child_cancel = ctx.Event()
    proc = ctx.Process(target=_child, args=(target, args, kwargs, q, child_cancel), daemon=True,
                       name=f"distilldesk-{target.rsplit(':', 1)[-1]}")
    proc.start()
    try:
        while True:
            if cancel is not None and cancel.is_set():
                child_cancel.set()
            try:
                kind, value = q.get(timeout=_POLL_S)
            except queue_mod.Empty:
                if not proc.is_alive():
                    try:  # the last message may have arrived just as it exited
                        kind, value = q.get(timeout=_POLL_S)
                    except queue_mod.Empty:
                        raise ChildProcessError_(
                            f"the {target.rsplit(':', 1)[-1]} process ended unexpectedly (exit code "
                            f"{proc.exitcode}); it may have run out of memory: close other programs and try "
                            f"again") from None
                else:
                    continue
            if kind == "progress":
                if progress is not None:
                    progress(value)
            elif kind == "done":
                return value
            else:
                raise value
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            log.warning("child process %s did not exit; terminating it", proc.name)
            proc.terminate()
            proc.join(timeout=5)
        q.close()
