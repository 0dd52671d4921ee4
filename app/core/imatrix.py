"""Importance matrix: run a GGUF over calibration text and collect what ``llama-imatrix`` collects.

The collection is llama.cpp's own (``tools/imatrix/imatrix.cpp``, ``IMatrixCollector::collect_imatrix``) done
from Python through the context's eval callback (``cb_eval``): for every ``MUL_MAT`` whose weight (src0) is a
``blk.*`` tensor and whose input (src1) is F32 with at least 16 rows, the sum of squares of every input column and
the number of rows; for every ``MUL_MAT_ID`` (MoE experts) the same per expert, following the routing ids.  All
logits are requested, else llama.cpp prunes the last layer's FFN to the last token and it is never seen.

The text is cut into chunks of ``chunk_size`` tokens (the first replaced by BOS where the model adds one), each
evaluated from an empty KV cache in one batch, as ``llama-imatrix -c CHUNK -b CHUNK`` does.  The result is
written in llama.cpp's imatrix GGUF format (``general.type = "imatrix"``, ``imatrix.datasets``,
``imatrix.chunk_count``, ``imatrix.chunk_size``, ``<name>.in_sum2`` and ``<name>.counts``) that
``llama-quantize --imatrix`` and :mod:`quantizer.imatrix` read.  The file appears only when complete (temporary
file + rename); results are cached by model file, text and settings.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import backends
from . import ggml_tensor as gt
from .errors import CalibrationTextError, ImatrixCancelled, ImatrixError, ModelLoadError
from .load_options import LoadOptions
from .sysinfo import default_threads

log = logging.getLogger(__name__)

CACHE_VERSION = 1
DEFAULT_CHUNK_SIZE = 512  # llama-imatrix's default context
MIN_ROWS = 16  # llama-imatrix ignores smaller batches
BUILTIN_DATASET = "distilldesk-calibration-v1"


@dataclass(frozen=True)
class ImatrixProgress:
    chunk: int  # chunks done
    n_chunks: int
    seconds: float  # since the first chunk started
    eta: float | None  # seconds left (None before the first chunk is done)


@dataclass(frozen=True)
class ImatrixResult:
    path: Path
    n_chunks: int
    chunk_size: int
    n_entries: int
    seconds: float
    cached: bool


# ---- calibration text ----------------------------------------------------------------------------------------
def calibration_dir() -> Path:
    from .paths import resources_dir

    return resources_dir() / "calibration"


def builtin_calibration_text() -> str:
    """The built-in calibration set (``resources/calibration/*.txt`` in name order; see its README)."""
    files = sorted(calibration_dir().glob("*.txt"))
    if not files:
        raise CalibrationTextError(f"the built-in calibration text is missing from {calibration_dir()}; "
                                   f"reinstall DistillDesk or pass your own text (--text FILE)")
    return "\n\n".join(f.read_text(encoding="utf-8") for f in files)


def read_text_file(path: str | os.PathLike[str]) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CalibrationTextError(f"calibration text {path} does not exist; check the path") from None
    except UnicodeDecodeError:
        raise CalibrationTextError(f"calibration text {path} is not UTF-8 text; pass a plain text file") from None
    except OSError as e:
        raise CalibrationTextError(f"cannot read calibration text {path}: {e.strerror or e}") from None
    if not text.strip():
        raise CalibrationTextError(f"calibration text {path} is empty; pass a file with text in it")
    return text


# ---- the collector (IMatrixCollector::collect_imatrix) -------------------------------------------------------
def weight_name(raw: bytes) -> str:
    """filter_tensor_name: ``CUDA0#blk.0.attn_k.weight#0`` -> ``blk.0.attn_k.weight``."""
    name = raw.decode("utf-8", "replace")
    if "#" in name:
        name = name.split("#", 2)[1]
    return name


class Collector:
    """Sums of squared activations and row counts per weight, fed by llama.cpp's eval callback."""

    def __init__(self) -> None:
        self.values: dict[str, np.ndarray] = {}  # name -> (n_mat, ne0) float32
        self.counts: dict[str, np.ndarray] = {}  # name -> (n_mat,) int64
        self.error: BaseException | None = None
        self._last: tuple | None = None  # (key, squares summed over rows) of the last dense input: q/k/v share it
        self.callback = gt_callback_type()(self._on_eval)  # kept alive: C holds the pointer

    def _on_eval(self, t_ptr: int, ask: bool, _user: int) -> bool:
        try:
            t = gt.tensor_at(t_ptr)
            if ask:
                return self._wanted(t)
            if self.error is None:
                if t.op == gt.GGML_OP_MUL_MAT_ID:
                    self._mul_mat_id(t)
                else:
                    self._mul_mat(t)
        except BaseException as e:  # noqa: BLE001 - an exception must never cross back into C
            self.error = self.error or e
        return True

    @staticmethod
    def _wanted(t: gt.GgmlTensor) -> bool:
        if t.op == gt.GGML_OP_MUL_MAT_ID:
            return True
        if t.op != gt.GGML_OP_MUL_MAT:
            return False
        src0, src1 = gt.tensor_at(t.src[0]), gt.tensor_at(t.src[1])
        if src1.ne[1] < MIN_ROWS or src1.type != gt.GGML_TYPE_F32:
            return False
        return weight_name(src0.name).startswith("blk.")

    def _entry(self, name: str, n_mat: int, ne0: int) -> tuple[np.ndarray, np.ndarray]:
        if name not in self.values:
            self.values[name] = np.zeros((n_mat, ne0), np.float32)
            self.counts[name] = np.zeros(n_mat, np.int64)
        v = self.values[name]
        if v.shape != (n_mat, ne0):
            raise ImatrixError(f"inconsistent size for {name}: {v.shape} vs {(n_mat, ne0)}")
        return v, self.counts[name]

    def _mul_mat(self, t: gt.GgmlTensor) -> None:
        src0 = gt.tensor_at(t.src[0])
        src1_ptr = t.src[1]
        src1 = gt.tensor_at(src1_ptr)
        name = weight_name(src0.name)
        ne02, ne03 = int(src0.ne[2]), int(src0.ne[3])
        n_mat = ne02 * ne03
        v, c = self._entry(name, n_mat, int(src1.ne[0]))
        key = (src1_ptr, src1.data, bytes(src1.name), tuple(src1.ne), tuple(src1.nb))
        if self._last is not None and self._last[0] == key:
            sq = self._last[1]
        else:
            x = gt.read_f32(src1_ptr)  # (ne3, ne2, ne1, ne0)
            sq = np.square(x, dtype=np.float32)
            self._last = (key, sq)
        for i3 in range(sq.shape[0]):
            for i2 in range(sq.shape[1]):
                mat = (i3 % ne03) * ne02 + (i2 % ne02)
                v[mat] = _accumulate(v[mat], sq[i3, i2])
        if not np.all(np.isfinite(v)):
            raise ImatrixError(f"non-finite activations in {name}: the model or its file is broken")
        rows = int(src1.ne[1] * src1.ne[2] * src1.ne[3])
        c += rows // n_mat

    def _mul_mat_id(self, t: gt.GgmlTensor) -> None:
        src0 = gt.tensor_at(t.src[0])
        src1 = gt.tensor_at(t.src[1])
        name = weight_name(src0.name)
        n_as, ne0, ne11 = int(src0.ne[2]), int(src1.ne[0]), int(src1.ne[1])
        if src1.ne[3] != 1:
            raise ImatrixError(f"{name}: expert input with more than 3 dimensions")
        ids = gt.read_i32(t.src[2])[0, 0]  # (n_tokens, n_ids)
        x = gt.read_f32(t.src[1])[0]  # (n_tokens, ne11, ne0)
        v, c = self._entry(name, n_as, ne0)
        for idx in range(ids.shape[1]):
            rows = x[:, idx % ne11, :]
            ex = ids[:, idx]
            if ex.min(initial=0) < 0 or ex.max(initial=0) >= n_as:
                raise ImatrixError(f"{name}: expert id out of range")
            for e in np.unique(ex):
                sel = rows[ex == e]
                v[e] = _accumulate(v[e], np.square(sel, dtype=np.float32))
                c[e] += sel.shape[0]
        if not np.all(np.isfinite(v)):
            raise ImatrixError(f"non-finite activations in {name}: the model or its file is broken")


def _accumulate(acc: np.ndarray, squares: np.ndarray) -> np.ndarray:
    """``acc + squares[0] + squares[1] + ...`` in float32, row after row as imatrix.cpp adds them (numpy reduces
    the outer axis of a C-contiguous array sequentially), so the sums are llama-imatrix's to the last bit."""
    return np.add.reduce(np.concatenate([acc[None], squares]), axis=0, dtype=np.float32)


def gt_callback_type():
    import llama_cpp

    return llama_cpp.ggml_backend_sched_eval_callback


# ---- running the model ---------------------------------------------------------------------------------------
class _Model:
    """A llama.cpp model + context made through the C API (llama-cpp-python's Llama cannot take cb_eval)."""

    def __init__(self, path: Path, chunk_size: int, options: LoadOptions, collector: Collector,
                 cancel: threading.Event | None) -> None:
        import llama_cpp

        from .engine import resolve_attention
        from .llama_runtime import clear_recent_problems, install_llama_log_handler, load_failure_reason

        install_llama_log_handler()
        clear_recent_problems()
        llama_cpp.llama_backend_init()
        # The devices this load may use, as every Engine load: without an explicit list llama.cpp would take
        # every registered device, and run large batches on a GPU module's device through its op offload even
        # with no layer offloaded (the sums then differ from a CPU run's).  The list is set through the wrapped
        # llama_cpp.llama_cpp.llama_model_default_params (see backends.model_devices).
        self._plan = backends.plan(options)
        with backends.model_devices(self._plan):
            mp = llama_cpp.llama_cpp.llama_model_default_params()
            mp.n_gpu_layers = options.n_gpu_layers
            mp.use_mmap = options.use_mmap
            self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), mp)
        if not self.model:
            backends.release(self._plan)
            raise ModelLoadError(f"llama.cpp could not load {path.name}: "
                                 f"{load_failure_reason('not a model it can read')}; pass an F16, BF16 or Q8_0 "
                                 f"GGUF of the model")
        fa, _ = resolve_attention(options, offloaded=options.n_gpu_layers != 0)
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx = cp.n_batch = chunk_size
        cp.n_ubatch = min(chunk_size, DEFAULT_CHUNK_SIZE)
        cp.n_seq_max = 1
        threads = options.n_threads or default_threads()
        cp.n_threads = cp.n_threads_batch = threads
        cp.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if fa == "on" else \
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cp.cb_eval = collector.callback
        cp.cb_eval_user_data = None
        self.ctx = llama_cpp.llama_init_from_model(self.model, cp)
        if not self.ctx:
            llama_cpp.llama_model_free(self.model)
            backends.release(self._plan)
            raise ModelLoadError(f"llama.cpp could not make a context for {path.name}: "
                                 f"{load_failure_reason('out of memory?')}; lower the chunk size")
        self._abort = llama_cpp.ggml_abort_callback(lambda _: bool(cancel is not None and cancel.is_set()))
        llama_cpp.llama_set_abort_callback(self.ctx, self._abort, None)
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.batch = llama_cpp.llama_batch_init(chunk_size, 0, 1)

    def tokenize(self, text: str) -> np.ndarray:
        """common_tokenize(ctx, text, add_special=true, parse_special=false)."""
        import llama_cpp

        raw = text.encode("utf-8")
        n = len(raw) + 16
        buf = (llama_cpp.llama_token * n)()
        got = llama_cpp.llama_tokenize(self.vocab, raw, len(raw), buf, n, True, False)
        if got < 0:
            buf = (llama_cpp.llama_token * -got)()
            got = llama_cpp.llama_tokenize(self.vocab, raw, len(raw), buf, -got, True, False)
        return np.ctypeslib.as_array(buf)[:got].copy()

    def add_bos(self) -> int | None:
        import llama_cpp

        return llama_cpp.llama_vocab_bos(self.vocab) if llama_cpp.llama_vocab_get_add_bos(self.vocab) else None

    def eval_chunk(self, tokens: np.ndarray) -> int:
        """Evaluate one chunk from an empty KV cache, every position's logits requested."""
        import llama_cpp

        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        b = self.batch
        n = len(tokens)
        b.n_tokens = n
        for k in range(n):
            b.token[k] = int(tokens[k])
            b.pos[k] = k
            b.n_seq_id[k] = 1
            b.seq_id[k][0] = 0
            b.logits[k] = 1
        return llama_cpp.llama_decode(self.ctx, b)

    def close(self) -> None:
        import llama_cpp

        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)
        llama_cpp.llama_model_free(self.model)
        backends.release(self._plan)


def collect(model: str | os.PathLike[str], text: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
            n_chunks: int | None = None, options: LoadOptions | None = None,
            progress: Callable[[ImatrixProgress], None] | None = None,
            cancel: threading.Event | None = None) -> tuple[Collector, int]:
    """Run ``model`` over ``text`` and return the filled :class:`Collector` and the number of chunks run.

    Raises CalibrationTextError when the text is shorter than one chunk, ImatrixCancelled when ``cancel`` is set.
    """
    gt.self_check()
    if chunk_size < MIN_ROWS:
        raise CalibrationTextError(f"chunk size {chunk_size} is below {MIN_ROWS} tokens, which llama.cpp's "
                                   f"collector ignores; use 512")
    if n_chunks is not None and n_chunks < 1:
        raise CalibrationTextError(f"--chunks must be at least 1 (got {n_chunks})")
    collector = Collector()
    m = _Model(Path(model), chunk_size, options or LoadOptions(), collector, cancel)
    try:
        tokens = m.tokenize(text)
        available = len(tokens) // chunk_size
        if available < 1:
            raise CalibrationTextError(
                f"the calibration text has {len(tokens)} tokens but one chunk needs {chunk_size}: give a longer "
                f"text (a few thousand words), or a smaller chunk size")
        todo = available if n_chunks is None else min(n_chunks, available)
        if n_chunks is not None and n_chunks > available:
            log.warning("the text holds only %d chunks of %d tokens; using %d", available, chunk_size, available)
        bos = m.add_bos()
        t0 = time.perf_counter()
        for i in range(todo):
            if cancel is not None and cancel.is_set():
                raise ImatrixCancelled("importance matrix cancelled")
            chunk = tokens[i * chunk_size:(i + 1) * chunk_size].copy()
            if bos is not None:
                chunk[0] = bos
            collector._last = None
            rc = m.eval_chunk(chunk)
            if collector.error is not None:
                raise collector.error
            if rc == 2 or (cancel is not None and cancel.is_set()):
                raise ImatrixCancelled("importance matrix cancelled")
            if rc != 0:
                raise ImatrixError(f"llama.cpp failed to evaluate chunk {i + 1} (code {rc}); lower the chunk size "
                                   f"or free memory")
            if progress is not None:
                dt = time.perf_counter() - t0
                progress(ImatrixProgress(i + 1, todo, dt, dt / (i + 1) * (todo - i - 1)))
        return collector, todo
    finally:
        m.close()


# ---- the file ------------------------------------------------------------------------------------------------
def write_imatrix(path: str | os.PathLike[str], collector: Collector, *, n_chunks: int, chunk_size: int,
                  datasets: list[str]) -> Path:
    """Write llama.cpp's imatrix GGUF (save_imatrix) atomically: temporary file in the folder, then rename."""
    import gguf

    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        w = gguf.GGUFWriter(tmp, "")
        w.kv_data[0].pop("general.architecture", None)  # llama-imatrix writes no architecture
        w.add_type("imatrix")
        w.add_array("imatrix.datasets", list(datasets))
        w.add_uint32("imatrix.chunk_count", n_chunks)
        w.add_uint32("imatrix.chunk_size", chunk_size)
        for name in sorted(collector.values):
            v, c = collector.values[name], collector.counts[name]
            # ggml_new_tensor_2d(ne0, n_mat) and (1, n_mat); gguf drops trailing dimensions of 1 (ggml_n_dims)
            one = v.shape[0] == 1
            w.add_tensor(f"{name}.in_sum2", np.ascontiguousarray(v.reshape(-1) if one else v, np.float32))
            w.add_tensor(f"{name}.counts", c.astype(np.float32).reshape(-1 if one else (-1, 1)))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def cache_key(model: str | os.PathLike[str], text: str, *, chunk_size: int, n_chunks: int | None,
              options: LoadOptions | None = None) -> str:
    """Key of a cached imatrix: the model file (path, size, mtime), the text, and the settings that change it."""
    p = Path(model).resolve()
    st = p.stat()
    fa = (options or LoadOptions()).flash_attn
    ident = json.dumps({"v": CACHE_VERSION, "model": str(p), "size": st.st_size, "mtime": st.st_mtime_ns,
                        "text": hashlib.sha256(text.encode("utf-8")).hexdigest(), "chunk_size": chunk_size,
                        "n_chunks": n_chunks, "flash_attn": fa}, sort_keys=True)
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


def cached_path(key: str) -> Path:
    from .paths import cache_dir

    return cache_dir() / "imatrix" / f"{key}.imatrix.gguf"


def compute_imatrix(model: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, *,
                    text: str | None = None, dataset: str | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                    n_chunks: int | None = None, options: LoadOptions | None = None,
                    progress: Callable[[ImatrixProgress], None] | None = None,
                    cancel: threading.Event | None = None, use_cache: bool = True) -> ImatrixResult:
    """Compute the importance matrix of GGUF ``model`` over ``text`` (default: the built-in calibration set) and
    write it to ``out`` (default: the cache).  A cached result for the same model, text and settings is reused."""
    t0 = time.perf_counter()
    if text is None:
        text, dataset = builtin_calibration_text(), dataset or BUILTIN_DATASET
    model = Path(model)
    if not model.is_file():
        raise ModelLoadError(f"model file {model} does not exist; check the path")
    key = cache_key(model, text, chunk_size=chunk_size, n_chunks=n_chunks, options=options)
    cached = cached_path(key)
    out = Path(out) if out is not None else cached
    if out != cached and out.parent and not out.parent.is_dir():
        raise ImatrixError(f"the output folder {out.parent} does not exist; create it or choose another")
    if use_cache and cached.is_file():
        from quantizer.imatrix import load_imatrix

        im = load_imatrix(cached)
        if out != cached:
            _copy_atomic(cached, out)
        log.info("importance matrix for %s reused from the cache (%s)", model.name, cached)
        return ImatrixResult(out, im.chunk_count, im.chunk_size, len(im), time.perf_counter() - t0, True)
    collector, done = collect(model, text, chunk_size=chunk_size, n_chunks=n_chunks, options=options,
                              progress=progress, cancel=cancel)
    datasets = [dataset or "calibration.txt"]
    if use_cache:
        cached.parent.mkdir(parents=True, exist_ok=True)
        write_imatrix(cached, collector, n_chunks=done, chunk_size=chunk_size, datasets=datasets)
        if out != cached:
            _copy_atomic(cached, out)
    else:
        write_imatrix(out, collector, n_chunks=done, chunk_size=chunk_size, datasets=datasets)
    return ImatrixResult(out, done, chunk_size, len(collector.values), time.perf_counter() - t0, False)


def _copy_atomic(src: Path, dst: Path) -> None:
    import shutil

    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".partial", dir=dst.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def estimate_minutes(n_params: int, n_chunks: int, chunk_size: int = DEFAULT_CHUNK_SIZE,
                     flops_per_s: float = 1.5e11) -> float:
    """A rough duration for the dialog: 2 FLOP per weight per token at ``flops_per_s`` (a few CPU cores)."""
    return 2.0 * n_params * n_chunks * chunk_size / flops_per_s / 60.0


__all__ = ["Collector", "ImatrixProgress", "ImatrixResult", "builtin_calibration_text", "cache_key",
           "cached_path", "collect", "compute_imatrix", "estimate_minutes", "read_text_file",
           "write_imatrix"]
