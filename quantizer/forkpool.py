"""A small pool of worker processes forked from this one, for the CPU-bound part of a conversion.

Why processes: the kernels are numpy code whose many short calls take and drop the GIL all the time, so worker
*threads* of one process mostly wait for each other (measured: 1.0-1.4x on two cores for Q6_K).  Forked workers
share nothing but what they inherit -- the memory-mapped checkpoint, the plan, the output file descriptor -- so
they scale with the cores, and no tensor data travels between processes: a worker reads its block from the map
and writes the result at its place in the output itself; only small task and result tuples go through pipes.

Only where ``fork`` is safe and cheap (Linux); elsewhere :func:`fork_available` says no and the caller uses
threads.  Each worker has its own duplex pipe: the parent keeps at most a couple of tasks queued per worker
(so the fastest worker gets the next one) and reads the results as they come.  Workers ignore SIGINT (Ctrl-C is
the parent's to handle); :meth:`ForkPool.kill` ends them at once, :meth:`ForkPool.close` lets them finish.
Before forking, the parent's objects are moved out of the garbage collector's sight (``gc.freeze``) so that a
collection in a worker does not copy the parent's whole heap.
"""
from __future__ import annotations

import gc
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import connection
from typing import Any

log = logging.getLogger(__name__)


def fork_available() -> bool:
    """True where the pool can run: Linux (fork is unsafe on macOS with system frameworks, absent on Windows)."""
    return sys.platform.startswith("linux") and hasattr(os, "fork")


class WorkerDiedError(RuntimeError):
    """A worker process ended without answering (killed, e.g. by the out-of-memory killer)."""


@dataclass
class _Worker:
    pid: int
    conn: connection.Connection
    tasks: int = 0  # tasks sent and not yet answered


class ForkPool:
    """``n`` forked workers calling ``fn(*args)``; :meth:`submit` tasks, :meth:`results` collects them."""

    def __init__(self, n: int, fn: Callable[..., Any]) -> None:
        self._workers: list[_Worker] = []
        pipes = [connection.Pipe(duplex=True) for _ in range(n)]
        gc.freeze()
        try:
            for k, (parent_end, child_end) in enumerate(pipes):
                pid = os.fork()
                if pid == 0:  # the worker: never returns
                    _worker_main(k, pipes, fn)
                child_end.close()
                self._workers.append(_Worker(pid, parent_end))
        except BaseException:
            for parent_end, child_end in pipes[len(self._workers):]:
                parent_end.close()
                child_end.close()
            self.kill()
            raise
        finally:
            gc.unfreeze()

    def idle_slots(self, depth: int) -> int:
        """How many more tasks fit if every worker may hold ``depth``."""
        return sum(max(0, depth - w.tasks) for w in self._workers)

    def submit(self, task_id: Any, args: tuple) -> None:
        """Send a task to the worker with the fewest unanswered tasks."""
        w = min(self._workers, key=lambda w: w.tasks)
        try:
            w.conn.send((task_id, args))
        except OSError:  # the worker is gone (broken pipe)
            raise WorkerDiedError(_died(w.pid)) from None
        w.tasks += 1

    def results(self, timeout: float | None) -> list[tuple[Any, Any]]:
        """``(task_id, result)`` of the tasks answered within ``timeout`` seconds; a task's exception is re-raised
        here (with its type); a worker that died raises :class:`WorkerDiedError`."""
        busy = {w.conn: w for w in self._workers if w.tasks}
        out: list[tuple[Any, Any]] = []
        for conn in connection.wait(list(busy), timeout):
            w = busy[conn]  # type: ignore[index]
            try:
                ok, task_id, value = conn.recv()  # type: ignore[union-attr]
            except (EOFError, OSError):
                raise WorkerDiedError(_died(w.pid)) from None
            w.tasks -= 1
            if not ok:
                raise value
            out.append((task_id, value))
        return out

    def close(self) -> None:
        """Let the workers finish their tasks and exit (they see the end of their pipe), then reap them."""
        for w in self._workers:
            w.conn.close()
        for w in self._workers:
            _reap(w.pid)
        self._workers.clear()

    def kill(self) -> None:
        """End every worker now and reap it."""
        for w in self._workers:
            try:
                os.kill(w.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            w.conn.close()
        for w in self._workers:
            _reap(w.pid)
        self._workers.clear()


def _worker_main(k: int, pipes: list, fn: Callable[..., Any]) -> None:
    """Body of worker ``k``: answer tasks until the parent closes the pipe, then leave without any cleanup
    of the parent's state (``os._exit``: no atexit handlers, no flushing of inherited buffers)."""
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # (the parent's objects stay frozen: see the module doc)
        conn = pipes[k][1]
        for j, (parent_end, child_end) in enumerate(pipes):  # only our own end stays open: EOF must reach us
            parent_end.close()
            if j != k:
                child_end.close()
        _serve(conn, fn)
    except BaseException:  # noqa: BLE001 - a worker must never return into the parent's code
        code = 1
    finally:
        os._exit(code)


def _serve(conn: connection.Connection, fn: Callable[..., Any]) -> None:
    while True:
        try:
            task_id, args = conn.recv()
        except EOFError:
            return
        try:
            reply = (True, task_id, fn(*args))
        except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
            reply = (False, task_id, e)
        try:
            conn.send(reply)
        except Exception:  # an exception that does not pickle: send its text
            err = reply[2]
            conn.send((False, task_id, RuntimeError(f"{type(err).__name__}: {err}")))


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _died(pid: int) -> str:
    try:
        _, status = os.waitpid(pid, os.WNOHANG)
        how = f"exit status {status}" if status else "still running"
    except ChildProcessError:
        how = "already reaped"
    return (f"a quantizing worker process (pid {pid}, {how}) ended unexpectedly; it may have run out of memory: "
            f"close other programs or use fewer threads, and try again")
