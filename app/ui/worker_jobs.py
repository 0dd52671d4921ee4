"""Jobs whose model loads use RPC workers run in a child process (compare, the eval ladder).

ggml's RPC client aborts the process holding a model when a worker connection breaks, so such a job must not run
in the app's own process.  :func:`job_call` returns the callable and arguments for a :class:`~app.ui.workers.Job`:
the service itself when no worker is configured, else :func:`run_on_workers`, which runs it through
:func:`~app.ui.process_job.run_in_process` and turns the child's death into
:class:`~app.core.errors.WorkerLostError` naming the worker that no longer answers.  (Streamed text does not cross
the process boundary: with workers, compare's answers appear when each phase ends.)
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .process_job import ChildProcessError_, run_in_process


def run_on_workers(target: str, *args: Any, workers: Sequence[str], progress: Any = None, cancel: Any = None,
                   **kwargs: Any) -> Any:
    from app.core.engine_process import lost_worker_error

    try:
        return run_in_process(target, *args, progress=progress, cancel=cancel, **kwargs)
    except ChildProcessError_:
        err = lost_worker_error(workers)
        if err is not None:
            raise err from None
        raise


def job_call(fn: Callable[..., Any], target: str, options: Any, streams: tuple[str, ...] = ()
             ) -> tuple[Callable[..., Any], tuple, dict]:
    """(callable, leading args, extra Job keywords) for running service ``fn`` (importable as ``target``,
    "module:function") with load ``options``."""
    if not options.rpc_workers:
        return fn, (), {"streams": streams} if streams else {}
    return run_on_workers, (target,), {"workers": tuple(options.rpc_workers)}
