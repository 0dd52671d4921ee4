"""A small pool of worker processes forked from this one, for the CPU-bound part of a conversion.

Why processes: the kernels are numpy code whose many short calls take and drop the GIL all the time, so worker
*threads* of one process mostly wait for each other (measured: 1.0-1.4x on two cores for Q6_K).  Forked workers
share nothing but what they inherit -- the memory-mapped checkpoint, the plan, the output file descriptor -- so
they scale with the cores, and no tensor data travels between processes: a worker reads its block from the map
and writes the result at its place in the output itself; only small task and result tuples go through pipes.

Only where ``fork`` is safe and cheap (Linux); elsewhere :func:`fork_available` says no and the caller uses
threads.  Each worker has its own duplex pipe: the parent keeps a couple of tasks queued per worker (so the
fastest worker gets the next one) and reads the results as they come.

A task runs in two steps, ``finish(compute(*args), start)``: ``compute`` may run before the parent knows
``start`` (the parent's :meth:`ForkPool.start` sends it), and its payload waits in the worker until then.  That
lets the workers quantize the first blocks while the parent is still building the file's header (which decides
where the data goes); the parent bounds how much waits by how many tasks it hands out early.

Workers ignore SIGINT (Ctrl-C is the parent's to handle); :meth:`ForkPool.kill` ends them at once,
:meth:`ForkPool.close` lets them finish.  Before forking, the parent's objects are moved out of the garbage
collector's sight (``gc.freeze``) so that a collection in a worker does not copy the parent's whole heap.  A
worker allocates the same large temporaries over and over; with glibc's default (dynamic) thresholds a freed
block is often handed back to the system and the next one faults in every page again (measured: 7x the page
faults, a third of the worker's time in the kernel), so workers keep freed memory for reuse (``mallopt``).
"""
from __future__ import annotations

import gc
import logging
import os
import signal
import sys
from collections import deque
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
    """``n`` forked workers computing ``finish(compute(*args), start)`` for each task; :meth:`submit` tasks,
    :meth:`start` them, :meth:`results` collects them."""

    def __init__(self, n: int, compute: Callable[..., Any], finish: Callable[[Any, Any], Any]) -> None:
        self._workers: list[_Worker] = []
        pipes = [connection.Pipe(duplex=True) for _ in range(n)]
        gc.freeze()
        try:
            for k, (parent_end, child_end) in enumerate(pipes):
                pid = os.fork()
                if pid == 0:  # the worker: never returns
                    _worker_main(k, pipes, compute, finish)
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

    def submit(self, task_id: Any, args: tuple, among: int | None = None) -> None:
        """Send a task to the worker with the fewest unanswered tasks (among the first ``among`` workers)."""
        w = min(self._workers[:among], key=lambda w: w.tasks)
        self._send(w, (_TASK, task_id, args))
        w.tasks += 1

    def start(self, arg: Any) -> None:
        """Let every worker finish its computed tasks (and the later ones) with ``arg``."""
        for w in self._workers:
            self._send(w, (_START, arg))

    @staticmethod
    def _send(w: _Worker, msg: tuple) -> None:
        try:
            w.conn.send(msg)
        except OSError:  # the worker is gone (broken pipe)
            raise WorkerDiedError(_died(w.pid)) from None

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


def _worker_main(k: int, pipes: list, compute: Callable[..., Any], finish: Callable[[Any, Any], Any]) -> None:
    """Body of worker ``k``: answer tasks until the parent closes the pipe, then leave without any cleanup
    of the parent's state (``os._exit``: no atexit handlers, no flushing of inherited buffers)."""
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # (the parent's objects stay frozen: see the module doc)
        _keep_freed_memory()
        conn = pipes[k][1]
        for j, (parent_end, child_end) in enumerate(pipes):  # only our own end stays open: EOF must reach us
            parent_end.close()
            if j != k:
                child_end.close()
        _serve(conn, compute, finish)
    except BaseException:  # noqa: BLE001 - a worker must never return into the parent's code
        code = 1
    finally:
        os._exit(code)


def _keep_freed_memory() -> None:
    """glibc: serve large blocks from the heap and never trim it (no effect, and no error, elsewhere)."""
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # the largest value every glibc accepts; a block needs less
    mallopt(_M_TRIM_THRESHOLD, 1 << 30)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
_TASK, _START = 0, 1
_NOT_STARTED = object()


def _serve(conn: connection.Connection, compute: Callable[..., Any], finish: Callable[[Any, Any], Any]) -> None:
    """Take messages as they come (waiting only when there is nothing to compute), compute tasks in order,
    hold their payloads until the start message, answer each task once finished."""
    tasks: deque[tuple[Any, tuple]] = deque()
    held: list[tuple[Any, Any]] = []
    start: Any = _NOT_STARTED
    while True:
        if not tasks or conn.poll():
            try:
                msg = conn.recv()
            except EOFError:
                return
            if msg[0] == _TASK:
                tasks.append(msg[1:])
            else:
                start = msg[1]
                for task_id, payload in held:
                    _answer(conn, task_id, finish, payload, start)
                held.clear()
            continue
        task_id, args = tasks.popleft()
        try:
            payload = compute(*args)
        except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
            _reply(conn, (False, task_id, e))
            continue
        if start is _NOT_STARTED:
            held.append((task_id, payload))
        else:
            _answer(conn, task_id, finish, payload, start)


def _answer(conn: connection.Connection, task_id: Any, finish: Callable[[Any, Any], Any], payload: Any,
            start: Any) -> None:
    try:
        reply = (True, task_id, finish(payload, start))
    except BaseException as e:  # noqa: BLE001
        reply = (False, task_id, e)
    _reply(conn, reply)


def _reply(conn: connection.Connection, reply: tuple) -> None:
    try:
        conn.send(reply)
    except Exception:  # an exception that does not pickle: send its text
        err = reply[2]
        conn.send((False, reply[1], RuntimeError(f"{type(err).__name__}: {err}")))


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
