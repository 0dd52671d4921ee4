"""The data phase of a conversion: blocks of rows on forked workers, threads or the calling thread all write the
same bytes; a worker's error, a cancel and a dead worker each stop the conversion with nothing left behind and no
worker process left running."""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest

import quantizer
import quantizer.stream as stream
from quantizer import errors as E
from quantizer.forkpool import WorkerDiedError, fork_available

from . import tiny_models as tm

needs_fork = pytest.mark.skipif(not fork_available(), reason="forked workers exist on Linux only")


@pytest.fixture(scope="module")
def weights():
    cfg = tm.make_config("llama", 49152)
    return cfg, tm.make_weights(cfg, seed=7)


_BEFORE: set[int] = set()


@pytest.fixture(autouse=True)
def _preexisting_children():
    """Children that other tests started and that live on by design (e.g. multiprocessing's resource tracker,
    started by the GUI's spawned quantize jobs) are not this test's workers."""
    global _BEFORE
    _BEFORE = _all_children()
    yield


def _children() -> set[int]:
    """Child processes this test started that are still there (running or not yet reaped)."""
    return _all_children() - _BEFORE


def _all_children() -> set[int]:
    pids: set[int] = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == os.getpid():
            pids.add(int(stat.parent.name))
    return pids


def _convert(src: Path, out: Path, recipe: str, threads: int, **kw) -> bytes:
    quantizer.convert(src, out, recipe, threads=threads, **kw)
    return out.read_bytes()


@pytest.mark.parametrize(("recipe", "dtype"), [("Q8_0", np.float16), ("Q4_K_M", "bf16"), ("Q5_1", np.float32),
                                               ("F16", np.float32)])
def test_every_kind_of_worker_writes_the_same_bytes(tmp_path, weights, monkeypatch, recipe, dtype):
    cfg, w = weights
    src = tm.write_checkpoint(tmp_path / "ckpt", cfg, w, dtype=dtype, tokenizer=tm.SMOL_TOKENIZER)
    whole = _convert(src, tmp_path / "whole.gguf", recipe, 1)
    # small blocks: every matrix is cut in several, Q/K on head boundaries (16 rows of 64 here), rows 0..n
    monkeypatch.setattr(stream, "_BLOCK_VALUES", 64 * 40)
    monkeypatch.setattr(stream, "cap_threads", lambda n: n)  # 3 workers even on a machine with fewer cores
    assert _convert(src, tmp_path / "inline.gguf", recipe, 1) == whole
    if fork_available():
        assert _convert(src, tmp_path / "forked.gguf", recipe, 3) == whole
    monkeypatch.setattr(stream, "fork_available", lambda: False)
    assert _convert(src, tmp_path / "threads.gguf", recipe, 3) == whole
    assert not _children()


@pytest.mark.parametrize("forked", [pytest.param(True, marks=needs_fork), False])
def test_a_worker_error_arrives_typed_and_nothing_is_left(tmp_path, weights, monkeypatch, forked):
    cfg, w = weights
    bad = dict(w)
    bad["model.layers.1.mlp.down_proj.weight"] = w["model.layers.1.mlp.down_proj.weight"].copy()
    bad["model.layers.1.mlp.down_proj.weight"][40, 3] = np.inf
    src = tm.write_checkpoint(tmp_path / "ckpt", cfg, bad, tokenizer=tm.SMOL_TOKENIZER)
    if not forked:
        monkeypatch.setattr(stream, "fork_available", lambda: False)
    monkeypatch.setattr(stream, "_BLOCK_VALUES", 64 * 40)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(E.NonFiniteWeightsError, match=r"model\.layers\.1\.mlp\.down_proj\.weight .* 1 NaN/Inf"):
        quantizer.convert(src, out / "m.gguf", "Q8_0", threads=2)
    assert list(out.iterdir()) == []
    assert not _children()


@pytest.mark.parametrize("forked", [pytest.param(True, marks=needs_fork), False])
def test_cancel_while_workers_run_leaves_nothing(tmp_path, weights, monkeypatch, forked):
    cfg, w = weights
    src = tm.write_checkpoint(tmp_path / "ckpt", cfg, w, tokenizer=tm.SMOL_TOKENIZER)
    if not forked:
        monkeypatch.setattr(stream, "fork_available", lambda: False)
    monkeypatch.setattr(stream, "_BLOCK_VALUES", 64 * 40)
    cancel = threading.Event()
    seen: list[int] = []

    def progress(p):
        seen.append(p.index)
        if p.index == 4:
            cancel.set()

    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(E.ConversionCancelled):
        quantizer.convert(src, out / "m.gguf", "Q8_0", threads=2, progress=progress, cancel=cancel)
    assert seen == [1, 2, 3, 4]  # in file order, and nothing after the cancel
    assert list(out.iterdir()) == []
    assert not _children()


@needs_fork
def test_a_killed_worker_is_reported_and_nothing_is_left(tmp_path, weights, monkeypatch):
    cfg, w = weights
    src = tm.write_checkpoint(tmp_path / "ckpt", cfg, w, tokenizer=tm.SMOL_TOKENIZER)
    monkeypatch.setattr(stream, "_BLOCK_VALUES", 64 * 40)

    def progress(p):
        if p.index == 2:
            os.kill(sorted(_children())[0], signal.SIGKILL)  # as the out-of-memory killer would

    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(WorkerDiedError, match="ended unexpectedly"):
        quantizer.convert(src, out / "m.gguf", "Q8_0", threads=2, progress=progress)
    assert list(out.iterdir()) == []
    assert not _children()
