"""Tensor data, streamed: read, permute, widen, quantize and write, in blocks of rows, on parallel workers.

Every tensor is cut into blocks of whole rows of about ``_BLOCK_VALUES`` values (ggml quantizes each row on its
own, so any cut along rows gives the same bytes).  A block is read from the memory map, permuted (Llama's Q/K,
blocks cut on head boundaries), widened to float32 with the rounding llama.cpp's pipeline applies, quantized by
:mod:`kernels` and written at its place in the output (the writer knows every tensor's offset): all of it by one
worker, so blocks finish in any order.  Workers are forked processes where fork is available (see
:mod:`quantizer.forkpool` for why not threads), threads elsewhere, and the calling thread itself when
``threads == 1``.  Memory: a block or two per worker plus a constant, whatever the model (the source pages of a
finished block are dropped from the memory map too).  Forked workers are started before the header is written
and quantize the first blocks meanwhile (:class:`TensorStream`).

The calling thread hands out blocks, counts what was written, reports progress after each tensor (in file order)
and watches ``cancel``; on any error, cancel or Ctrl-C it stops the workers before re-raising.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType as QT

from . import arch as archmod
from .checkpoint import Checkpoint, to_float32
from .cpus import cap_threads, default_threads, usable_cores
from .errors import ConversionCancelled, NonFiniteWeightsError
from .forkpool import ForkPool, fork_available
from .writer import StreamingGGUFWriter

log = logging.getLogger(__name__)

_FLOAT_TYPES = (QT.F32, QT.F16, QT.BF16)
_BLOCK_VALUES = 1 << 20  # values per block: 4 MiB of float32, long enough for numpy, small enough to stay near cache
_DEPTH = 2  # tasks queued per worker: the next block is there when one finishes
_POLL_S = 0.2  # how often cancel is looked at while no block finishes
_AHEAD_BYTES = 32 << 20  # quantized output forked workers may hold while the header is being written
_AHEAD_BLOCKS = 256


@dataclass(frozen=True)
class ConvertProgress:
    """Passed to ``progress`` after each tensor is written."""
    tensor: str  # GGUF name of the tensor just written
    index: int  # 1-based
    count: int
    bytes_done: int  # source bytes read so far
    bytes_total: int


@dataclass(frozen=True)
class _Job:
    """One tensor to write: index in the file, source, type, and how it is cut."""
    index: int
    t: archmod.PlannedTensor
    qtype: QT
    weights: np.ndarray | None  # imatrix columns
    rows: int
    n: int  # values per row
    step: int  # rows per block
    row_bytes: int  # quantized bytes per row
    src_bytes: int  # bytes read from the checkpoint (progress)
    computed: np.ndarray | None  # generated tensors (rope_freqs) as float32 (rows, n)


@dataclass(frozen=True)
class _Ctx:
    """What a worker needs (a forked worker inherits it)."""
    w: StreamingGGUFWriter
    ckpt: Checkpoint
    jobs: list[_Job]


def stream(w: StreamingGGUFWriter, ckpt: Checkpoint, arch: archmod.Arch, cfg: dict, tensors, types, im,
           threads: int | None, progress: Callable[[ConvertProgress], None] | None,
           cancel: threading.Event | None) -> None:
    """Write every tensor of ``tensors`` (in order, with ``types``) through ``w`` (already begun) on ``threads``
    workers (default: all cores)."""
    with TensorStream(w, ckpt, arch, cfg, tensors, types, im, threads, progress, cancel) as s:
        s.run()


class TensorStream:
    """The data phase in two steps: creating it starts the workers (``w`` must be created, not yet begun) and,
    where they are forked processes, hands them the first blocks, up to ``_AHEAD_BYTES`` of output, which they
    quantize while the caller builds and writes the header; :meth:`run` (after ``w.begin()``) does the rest.
    Use as a context manager: leaving it early stops the workers."""

    def __init__(self, w: StreamingGGUFWriter, ckpt: Checkpoint, arch: archmod.Arch, cfg: dict, tensors, types,
                 im, threads: int | None, progress: Callable[[ConvertProgress], None] | None,
                 cancel: threading.Event | None) -> None:
        _check_cancel(cancel)
        n = _threads(threads)
        self.w, self.cancel = w, cancel
        self.jobs = [_job(i, t, types[t.name], ckpt, arch, cfg, im) for i, t in enumerate(tensors)]
        blocks = [(j.index, r0, min(j.rows, r0 + j.step)) for j in self.jobs for r0 in range(0, j.rows, j.step)]
        self.tracker = _Tracker(self.jobs, progress, cancel)
        ctx = _Ctx(w, ckpt, self.jobs)
        self.todo = iter(blocks)
        self.pending = 0
        if n == 1 or len(blocks) <= 1:
            self.pool: Any = _InlinePool(partial(_do_block, ctx))
        elif fork_available():
            n = min(n, len(blocks))
            self.pool = ForkPool(n, partial(_encode_block, ctx), partial(_write_block, ctx))
            try:
                self._hand_out_ahead(n)
            except BaseException:
                self.pool.kill()
                raise
        else:
            self.pool = _ThreadPool(min(n, len(blocks)), partial(_do_block, ctx))

    def _hand_out_ahead(self, workers: int) -> None:
        """The first blocks, to all workers but one: the caller, busy with the header meanwhile, keeps a core."""
        ahead = 0
        while ahead < _AHEAD_BYTES and self.pending < _AHEAD_BLOCKS:  # (a few KiB of task messages at most)
            block = next(self.todo, None)
            if block is None:
                return
            self.pool.submit(block, block, among=max(1, workers - 1))
            self.pending += 1
            index, r0, r1 = block
            ahead += (r1 - r0) * self.jobs[index].row_bytes

    def run(self) -> None:
        """Write every block (the header must be written: ``w.begin()``)."""
        self.pool.start(self.w.data_start)
        while True:
            for _ in range(self.pool.idle_slots(_DEPTH)):
                block = next(self.todo, None)
                if block is None:
                    break
                self.pool.submit(block, block)
                self.pending += 1
            if not self.pending:
                break
            for (index, _, _), nbytes in self.pool.results(_POLL_S):
                self.pending -= 1
                self.w.mark_written(index, nbytes)
                self.tracker.block_done(index)
            _check_cancel(self.cancel)
        self.pool.close()
        self.tracker.block_done(None)  # tensors without any rows, if the last ones are such

    def __enter__(self) -> TensorStream:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.pool.kill()


class _Tracker:
    """Progress after each tensor, in file order, whatever order its blocks finish in."""

    def __init__(self, jobs: list[_Job], progress: Callable[[ConvertProgress], None] | None,
                 cancel: threading.Event | None) -> None:
        self.jobs, self.progress, self.cancel = jobs, progress, cancel
        self.left = [-(-j.rows // j.step) for j in jobs]  # blocks not yet written, per tensor
        self.next = 0  # first tensor not yet reported
        self.done = 0
        self.total = sum(j.src_bytes for j in jobs)

    def block_done(self, index: int | None) -> None:
        if index is not None:
            self.left[index] -= 1
        while self.next < len(self.jobs) and self.left[self.next] == 0:
            j = self.jobs[self.next]
            self.next += 1
            self.done += j.src_bytes
            if self.progress is not None:
                self.progress(ConvertProgress(j.t.name, j.index + 1, len(self.jobs), self.done, self.total))
            _check_cancel(self.cancel)  # a cancel set by the progress callback stops before the next report


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise ConversionCancelled("the conversion was cancelled; nothing was written")


class _InlinePool:
    """The pool interface, run on the calling thread (one worker: no handing over at all)."""

    def __init__(self, fn: Callable[..., int]) -> None:
        self.fn = fn
        self.ready: list[tuple[Any, int]] = []

    def idle_slots(self, depth: int) -> int:
        return 0 if self.ready else 1

    def submit(self, task_id: Any, args: tuple) -> None:
        self.ready.append((task_id, self.fn(*args)))

    def results(self, timeout: float | None) -> list[tuple[Any, int]]:
        out, self.ready = self.ready, []
        return out

    def start(self, data_start: int) -> None:
        pass

    def close(self) -> None:
        pass

    kill = close


class _ThreadPool:
    """The pool interface on threads, where processes cannot be forked."""

    def __init__(self, n: int, fn: Callable[..., int]) -> None:
        self.n, self.fn = n, fn
        self.ex = ThreadPoolExecutor(max_workers=n, thread_name_prefix="quantize")
        self.done: queue.SimpleQueue[tuple[Any, Future[int]]] = queue.SimpleQueue()
        self.stop = threading.Event()
        self.busy = 0

    def idle_slots(self, depth: int) -> int:
        return max(0, self.n * depth - self.busy)

    def submit(self, task_id: Any, args: tuple) -> None:
        def run() -> int:
            return 0 if self.stop.is_set() else self.fn(*args)

        fut = self.ex.submit(run)
        fut.add_done_callback(lambda f: self.done.put((task_id, f)))
        self.busy += 1

    def results(self, timeout: float | None) -> list[tuple[Any, int]]:
        try:
            items = [self.done.get(timeout=timeout)]
        except queue.Empty:
            return []
        while not self.done.empty():
            items.append(self.done.get())
        self.busy -= len(items)
        return [(task_id, f.result()) for task_id, f in items]

    def start(self, data_start: int) -> None:
        pass

    def close(self) -> None:
        self.ex.shutdown(wait=True)

    def kill(self) -> None:
        self.stop.set()  # blocks not yet started do nothing; running ones finish
        self.ex.shutdown(wait=True, cancel_futures=True)


def _threads(threads: int | None) -> int:
    """Workers: :func:`~quantizer.cpus.default_threads` unless given; never more than the usable cores."""
    if threads is None:
        return default_threads()
    if threads < 1:
        raise ValueError(f"threads must be >= 1 (got {threads})")
    if threads > cap_threads(threads):
        log.info("%d workers asked for, %d cores usable: using %d", threads, usable_cores(), cap_threads(threads))
    return cap_threads(threads)


def _job(index: int, t: archmod.PlannedTensor, qtype: QT, ckpt: Checkpoint, arch: archmod.Arch, cfg: dict,
         im) -> _Job:
    import kernels

    from .imatrix import imatrix_for

    n = t.shape[-1]
    rows = int(np.prod(t.shape[:-1], dtype=np.int64)) if len(t.shape) > 1 else 1
    step = max(1, _BLOCK_VALUES // max(n, 1))
    if t.permute_heads:  # blocks of whole heads: the permutation moves rows only within a head
        head_rows = rows // t.permute_heads
        step = -(-step // head_rows) * head_rows if len(t.shape) == 2 else rows
    computed = None
    if t.hf_name is None:
        freqs = archmod.rope_freqs(arch, cfg)
        if freqs is None:
            raise RuntimeError(f"{t.name} has no source tensor and the architecture computes none")
        computed = np.ascontiguousarray(freqs, dtype=np.float32).reshape(rows, n)
        src_bytes = 4 * rows * n
    else:
        src_bytes = ckpt.tensors[t.hf_name].nbytes
    weights = imatrix_for(im, t.name, t.shape) if im is not None and qtype not in _FLOAT_TYPES else None
    return _Job(index, t, qtype, weights, rows, n, step, kernels.row_bytes(qtype, n), src_bytes, computed)


def _rows_f32(ckpt: Checkpoint, j: _Job, r0: int, r1: int) -> np.ndarray:
    """Rows ``r0:r1`` of the tensor as float32, permuted, with the value rounding llama.cpp's pipeline applies
    (F32 weights go through F16 for the quantized types: the auto outtype of an F32 checkpoint is F16)."""
    if j.computed is not None:
        return j.computed[r0:r1]
    t = j.t
    entry = ckpt.tensors[t.hf_name]
    raw = ckpt.raw(t.hf_name)
    if t.permute_heads and raw.ndim != 2:
        raw = archmod.permute_qk(raw, t.permute_heads).reshape(j.rows, j.n)
    else:
        raw = raw.reshape(j.rows, j.n)[r0:r1]
        if t.permute_heads:
            raw = archmod.permute_qk(raw, (r1 - r0) // (j.rows // t.permute_heads))
    if entry.dtype == "F32" and j.qtype not in _FLOAT_TYPES:
        return raw.astype(np.float16).astype(np.float32)
    return to_float32(raw, entry.dtype)


def _do_block(ctx: _Ctx, index: int, r0: int, r1: int) -> int:
    """Read, widen, quantize and write rows ``r0:r1`` of tensor ``index``; returns the bytes written."""
    return ctx.w.pwrite_rows(*_encode_block(ctx, index, r0, r1))


def _encode_block(ctx: _Ctx, index: int, r0: int, r1: int) -> tuple[int, int, np.ndarray]:
    """Read, widen and quantize rows ``r0:r1`` of tensor ``index``: (index, byte offset in the tensor, data)."""
    import kernels

    j = ctx.jobs[index]
    x = _rows_f32(ctx.ckpt, j, r0, r1)
    if j.t.hf_name is not None:  # the source pages are not needed again: keep them out of our memory
        per_row = ctx.ckpt.tensors[j.t.hf_name].nbytes // j.rows
        ctx.ckpt.release(j.t.hf_name, r0 * per_row, r1 * per_row)
    try:
        data = kernels.quantize(x, j.qtype, imatrix=j.weights, threads=1)
    except kernels.NonFiniteError:
        raise _non_finite(ctx.ckpt, j) from None
    return index, r0 * j.row_bytes, data


def _write_block(ctx: _Ctx, block: tuple[int, int, np.ndarray], data_start: int) -> int:
    """In a forked worker: write an encoded block, the data section starting at ``data_start``."""
    ctx.w.set_data_start(data_start)
    return ctx.w.pwrite_rows(*block)


def _non_finite(ckpt: Checkpoint, j: _Job) -> NonFiniteWeightsError:
    bad = sum(int(np.count_nonzero(~np.isfinite(_rows_f32(ckpt, j, r0, min(j.rows, r0 + j.step)))))
              for r0 in range(0, j.rows, j.step))
    return NonFiniteWeightsError(
        f"tensor {j.t.hf_name} ({j.t.name}) holds {bad} NaN/Inf value(s); the checkpoint is damaged or was "
        f"saved after a diverged training step: download it again or use another checkpoint")
