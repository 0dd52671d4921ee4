"""Tensor data, streamed: read, permute, widen, quantize and write, in blocks of rows on a few threads.

Every tensor is cut into blocks of whole rows of about ``_BLOCK_VALUES`` values (ggml quantizes each row on its
own, so any cut along rows gives the same bytes).  A block is read from the memory map, permuted (Llama's Q/K,
blocks cut on head boundaries), widened to float32 with the rounding llama.cpp's pipeline applies, quantized by
:mod:`kernels` and written at its place in the output (the writer knows every tensor's offset), all by one of
``threads`` worker threads; numpy releases the GIL inside its loops, so the blocks really run in parallel, and
the next block's reading overlaps this one's quantizing.  Memory: a few blocks per thread, whatever the model
(the source pages of a finished block are dropped from the memory map too).

The calling thread only hands out blocks, reports progress after each tensor (in file order) and watches
``cancel``; on any error, cancel or Ctrl-C it stops the workers (the running blocks finish) before re-raising.
"""
from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as QT

from . import arch as archmod
from .checkpoint import Checkpoint, to_float32
from .errors import ConversionCancelled, NonFiniteWeightsError
from .writer import StreamingGGUFWriter

_FLOAT_TYPES = (QT.F32, QT.F16, QT.BF16)
_BLOCK_VALUES = 1 << 20  # values per block: 4 MiB of float32, long enough for numpy, small enough to stay near cache
_WINDOW_PER_THREAD = 4  # blocks handed out ahead per worker (queued blocks hold no memory)


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
    w: StreamingGGUFWriter
    ckpt: Checkpoint
    stop: threading.Event


def stream(w: StreamingGGUFWriter, ckpt: Checkpoint, arch: archmod.Arch, cfg: dict, tensors, types, im,
           threads: int | None, progress: Callable[[ConvertProgress], None] | None,
           cancel: threading.Event | None) -> None:
    """Write every tensor of ``tensors`` (in order, with ``types``) through ``w`` (already begun)."""
    if cancel is not None and cancel.is_set():
        raise ConversionCancelled("the conversion was cancelled; nothing was written")
    jobs = [_job(i, t, types[t.name], ckpt, arch, cfg, im) for i, t in enumerate(tensors)]
    total = sum(j.src_bytes for j in jobs)
    ctx = _Ctx(w, ckpt, threading.Event())
    blocks = ((j, r0, min(j.rows, r0 + j.step)) for j in jobs for r0 in range(0, j.rows, j.step))
    done = 0

    def finished(j: _Job, r1: int) -> None:
        nonlocal done
        if r1 == j.rows:
            done += j.src_bytes
            if progress is not None:
                progress(ConvertProgress(j.t.name, j.index + 1, len(jobs), done, total))
        if cancel is not None and cancel.is_set():
            raise ConversionCancelled("the conversion was cancelled; nothing was written")

    n_threads = _threads(threads)
    if n_threads == 1:
        for j, r0, r1 in blocks:
            _run_block(ctx, j, r0, r1)
            finished(j, r1)
        return
    _run_parallel(ctx, blocks, n_threads, finished)


def _run_parallel(ctx: _Ctx, blocks: Iterator[tuple[_Job, int, int]], n_threads: int,
                  finished: Callable[[_Job, int], None]) -> None:
    pool = ThreadPoolExecutor(max_workers=n_threads, thread_name_prefix="quantize")
    pending: deque[tuple[_Job, int, Future[None]]] = deque()
    try:
        for j, r0, r1 in blocks:
            pending.append((j, r1, pool.submit(_run_block, ctx, j, r0, r1)))
            if len(pending) >= _WINDOW_PER_THREAD * n_threads:
                j0, r, fut = pending.popleft()
                fut.result()
                finished(j0, r)
        while pending:
            j0, r, fut = pending.popleft()
            fut.result()
            finished(j0, r)
    finally:
        ctx.stop.set()  # on an error: blocks not yet started do nothing
        pool.shutdown(wait=True, cancel_futures=True)


def _threads(threads: int | None) -> int:
    if threads is None:
        return os.cpu_count() or 1
    if threads < 1:
        raise ValueError(f"threads must be >= 1 (got {threads})")
    return int(threads)


def _job(index: int, t: archmod.PlannedTensor, qtype: QT, ckpt: Checkpoint, arch: archmod.Arch, cfg: dict,
         im) -> _Job:
    import kernels

    from .imatrix import imatrix_for

    n = t.shape[-1]
    rows = int(np.prod(t.shape[:-1], dtype=np.int64)) if len(t.shape) > 1 else 1
    step = max(1, _BLOCK_VALUES // n)
    if t.permute_heads:  # blocks of whole heads: the permutation moves rows only within a head
        head_rows = rows // t.permute_heads
        step = -(-step // head_rows) * head_rows if len(t.shape) == 2 else rows
    computed = None
    if t.hf_name is None:
        freqs = archmod.rope_freqs(arch, cfg)
        assert freqs is not None
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


def _run_block(ctx: _Ctx, j: _Job, r0: int, r1: int) -> None:
    import kernels

    if ctx.stop.is_set():
        return
    x = _rows_f32(ctx.ckpt, j, r0, r1)
    if j.t.hf_name is not None:  # the source pages are not needed again: keep them out of our memory
        per_row = ctx.ckpt.tensors[j.t.hf_name].nbytes // j.rows
        ctx.ckpt.release(j.t.hf_name, r0 * per_row, r1 * per_row)
    try:
        data = kernels.quantize(x, j.qtype, imatrix=j.weights, threads=1)
    except kernels.NonFiniteError:
        raise _non_finite(ctx.ckpt, j) from None
    del x
    ctx.w.write_rows(j.index, r0 * j.row_bytes, data)


def _non_finite(ckpt: Checkpoint, j: _Job) -> NonFiniteWeightsError:
    bad = sum(int(np.count_nonzero(~np.isfinite(_rows_f32(ckpt, j, r0, min(j.rows, r0 + j.step)))))
              for r0 in range(0, j.rows, j.step))
    return NonFiniteWeightsError(
        f"tensor {j.t.hf_name} ({j.t.name}) holds {bad} NaN/Inf value(s); the checkpoint is damaged or was "
        f"saved after a diverged training step: download it again or use another checkpoint")
