"""Measured sensitivity: the KL divergence that quantizing a group of tensors causes, by simulated quantization.

:mod:`quantizer.sensitivity` prices every block matrix at every type with a cheap proxy (the imatrix-weighted
relative output error) and places types to minimise a sum of those errors.  A unit of relative error does not cost
the same everywhere, though: an attn_k's error moves the model's output distribution far less than an attn_v's,
and the first and last layers are more fragile than the middle.  This module measures the real price:

* the reference GGUF (F16/BF16/Q8_0) is run over calibration text once, clean, keeping every position's logits;
* then once per tensor *group* (a category such as ``ffn_down`` in a band of layers), with that group quantized
  by simulation: through llama.cpp's eval callback (``cb_eval``, the machinery of :mod:`app.core.imatrix`), every
  ``MUL_MAT`` whose weight is in the group gets ``dW x`` added to its output after it is computed, where
  ``dW = dequant(quant(W, type, imatrix)) - W`` is made by our own kernels exactly as the quantizer makes the
  file (``GET_ROWS`` of the token embedding gets ``dW[ids]``);
* the mean KL divergence from the clean logits over the scored positions (the second half of each chunk, as
  ``llama-perplexity`` scores) is the group's measured cost; divided by the group's summed proxy error at the
  same type it is a *scale*: KL per unit of proxy error.

The placement then minimises ``sum_t scale_g(t) * error_t(type_t)``, a predicted KL (KL is close to additive over
small independent perturbations and close to linear in noise power).  :func:`simulated_kl` measures a whole plan
the same way, which is how the prediction is checked before any file is written.

How faithful the simulation is (1.5B model, Q3_K_M+imatrix's types on every quantized tensor, our KL on the same
positions as llama-perplexity, which agrees with it to 0.05813 vs 0.05815): simulated 0.0501 vs the real file's
0.0521 on a calibration chunk (0.96x), 0.0541 vs 0.0581 on the eval text (0.93x); the gap is llama.cpp rounding
the activations to 8 bits for quantized weights, which the simulation leaves out.  Predicted vs simulated KL of
whole plans (2 calibration chunks): Q3_K_M 0.0494 vs 0.0439, the placed Q3_K_D 0.0200 vs 0.0260.

The run needs host memory for the activations, so it is CPU only: a GPU offload is refused.  Results are cached
by model file, imatrix, text and settings; a cancelled run leaves nothing.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import ggml_tensor as gt
from .errors import CalibrationTextError, ImatrixError, SensitivityCancelled
from .imatrix import weight_name
from .load_options import LoadOptions

log = logging.getLogger(__name__)

CACHE_VERSION = 1
PROBE_TYPE = "Q3_K"  # the type each group is measured at (FALLBACK_PROBE where rows are not a multiple of 256)
FALLBACK_PROBE = "Q4_0"
OUTPUT_TYPES = ("Q4_K", "Q5_K", "Q6_K")  # the output matrix: Q6_K in llama.cpp's k-quant recipes
EMBD_TYPES = ("Q2_K", "Q3_K", "Q4_K")  # an untied token embedding
FALLBACK_TYPES = ("Q4_0", "Q5_0", "Q8_0")
N_BANDS = 4  # layer bands per category
CHUNK_SIZE = 512
N_CHUNKS = 2  # spread over the text (see KLProbe)
_BLK = re.compile(r"^blk\.(\d+)\.(\w+)\.weight$")


@dataclass(frozen=True)
class MeasureProgress:
    step: int  # passes done (the clean one included)
    n_steps: int
    label: str  # the group just measured
    seconds: float
    eta: float | None


@dataclass
class MeasuredScales:
    """KL per unit of proxy error, per tensor group, measured on the model; and the measured KL of the tensors
    outside the blocks at each of their candidate types."""
    scales: dict[str, float]  # group -> scale
    kl: dict[str, float]  # group -> measured mean KL with the group at its probe type
    members: dict[str, list[str]]  # group -> tensor names
    probe: dict[str, str]  # tensor -> the type it was measured at
    seconds: float
    n_tokens: int  # scored positions
    cached: bool = False
    direct: dict[str, dict[str, float]] = field(default_factory=dict)  # outside tensor -> type -> measured KL
    shapes: dict[str, list[int]] = field(default_factory=dict)  # numpy shapes of the outside tensors

    def weights(self) -> dict[str, float]:
        """Tensor -> scale of its group (what :func:`quantizer.sensitivity.place` takes); 1 for the tensors
        whose costs are measured KL already."""
        w = {n: self.scales[g] for g, names in self.members.items() for n in names}
        return w | {n: 1.0 for n in self.direct}

    def calibrated(self, costs: dict) -> tuple[dict, dict[str, float]]:
        """``costs`` plus the outside tensors (their measured KL as their cost), and the weights to place with."""
        from quantizer.sensitivity import TensorCost

        out = dict(costs) | {n: TensorCost(n, tuple(self.shapes[n]), dict(e)) for n, e in self.direct.items()}
        return out, self.weights()

    def to_json(self) -> dict:
        return {"scales": self.scales, "kl": self.kl, "members": self.members, "probe": self.probe,
                "seconds": self.seconds, "n_tokens": self.n_tokens, "direct": self.direct, "shapes": self.shapes}

    @classmethod
    def from_json(cls, d: dict, cached: bool = True) -> MeasuredScales:
        return cls(d["scales"], d["kl"], d["members"], d["probe"], d["seconds"], d["n_tokens"], cached,
                   d.get("direct", {}), d.get("shapes", {}))


# ---- the simulation (eval callback) --------------------------------------------------------------------------
class Simulator:
    """Eval callback that adds ``dW x`` to the output of every MUL_MAT (``dW[ids]`` to every GET_ROWS) whose
    weight is a key of :attr:`deltas` (numpy ``(rows, cols)`` = ggml ``(ne1, ne0)``)."""

    def __init__(self) -> None:
        from .imatrix import gt_callback_type

        self.deltas: dict[str, np.ndarray] = {}
        self.error: BaseException | None = None
        self.hits: dict[str, int] = {}
        self.callback = gt_callback_type()(self._on_eval)  # kept alive: C holds the pointer

    def _on_eval(self, t_ptr: int, ask: bool, _user: int) -> bool:
        try:
            t = gt.tensor_at(t_ptr)
            if t.op not in (gt.GGML_OP_MUL_MAT, gt.GGML_OP_GET_ROWS) or not self.deltas:
                return not ask
            name = weight_name(gt.tensor_at(t.src[0]).name)
            if name not in self.deltas:
                return not ask
            if ask:
                return True
            if self.error is None:
                self._apply(t_ptr, t, name)
        except BaseException as e:  # noqa: BLE001 - an exception must never cross back into C
            self.error = self.error or e
        return True

    def _apply(self, t_ptr: int, t: gt.GgmlTensor, name: str) -> None:
        d = self.deltas[name].astype(np.float32, copy=False)  # whole-model plans keep them as float16
        out = gt.read_f32(t_ptr)
        n_out = out.shape[-1]
        if t.op == gt.GGML_OP_MUL_MAT:
            x = gt.read_f32(t.src[1])
            add = np.ascontiguousarray(x.reshape(-1, x.shape[-1])) @ d.T
        else:
            add = d[gt.read_i32(t.src[1]).reshape(-1)]
        if add.shape != (out.size // n_out, n_out):
            raise ImatrixError(f"{name}: simulated error of shape {add.shape} for an output of {out.shape}")
        gt.write_f32(t_ptr, out.reshape(-1, n_out) + add)
        self.hits[name] = self.hits.get(name, 0) + 1


class Deltas:
    """``dequant(quant(W)) - W`` of the reference GGUF's tensors, made by our kernels with the importance matrix
    as the quantizer uses it."""

    def __init__(self, reference: str | os.PathLike[str], imatrix: str | os.PathLike[str] | None,
                 threads: int | None = None) -> None:
        import gguf

        from quantizer.imatrix import load_imatrix

        self.reader = gguf.GGUFReader(str(reference))
        self.tensors = {t.name: t for t in self.reader.tensors}
        self.im = load_imatrix(imatrix) if imatrix is not None else None
        self.threads = threads

    def weight(self, name: str) -> np.ndarray:
        from gguf import GGMLQuantizationType as T
        from gguf.quants import dequantize

        t = self.tensors[name]
        shape = tuple(int(s) for s in reversed(t.shape))
        data = np.asarray(t.data)
        if t.tensor_type in (T.F32, T.F16):
            return data.astype(np.float32).reshape(shape)
        return dequantize(data, t.tensor_type).astype(np.float32).reshape(shape)

    def delta(self, name: str, qtype: str) -> np.ndarray:
        import kernels
        from quantizer.imatrix import imatrix_for

        w = self.weight(name)
        a = imatrix_for(self.im, name, w.shape) if self.im is not None else None
        q = kernels.quantize(w, qtype, imatrix=a, threads=self.threads)
        return kernels.dequantize(q, qtype, w.shape).astype(np.float32) - w


# ---- the runs ------------------------------------------------------------------------------------------------
def _log_softmax(logits: np.ndarray) -> np.ndarray:
    m = logits.max(axis=1, keepdims=True)
    z = logits - m
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def mean_kl(ref: list[np.ndarray], other: list[np.ndarray]) -> float:
    """Mean KL(ref || other) over every position of log-probabilities given chunk by chunk."""
    total = sum(float(np.sum(np.exp(r) * (r - q), dtype=np.float64)) for r, q in zip(ref, other, strict=True))
    return total / sum(len(r) for r in ref)


class KLProbe:
    """A model loaded with a :class:`Simulator`, the calibration chunks and their clean log-probabilities."""

    def __init__(self, model: str | os.PathLike[str], text: str, *, chunk_size: int = CHUNK_SIZE,
                 n_chunks: int = N_CHUNKS, options: LoadOptions | None = None,
                 cancel: threading.Event | None = None, spread: bool = True) -> None:
        from .imatrix import _Model

        options = options or LoadOptions()
        if options.n_gpu_layers:
            raise ImatrixError("the measured sensitivity adds simulated quantization error to activations in host "
                               "memory, so it runs on the CPU only: set GPU layers to 0 for this step")
        gt.self_check()
        self.cancel = cancel
        self.sim = Simulator()
        self.m = _Model(Path(model), chunk_size, options, self.sim, cancel)
        try:
            tokens = self.m.tokenize(text)
            available = len(tokens) // chunk_size
            if available < 1:
                raise CalibrationTextError(f"the calibration text has {len(tokens)} tokens but one chunk needs "
                                           f"{chunk_size}: give a longer text")
            bos = self.m.add_bos()
            self.chunks = []
            n = min(n_chunks, available)
            picks = {int((k + 0.5) * available / n) for k in range(n)} if spread else range(n)
            for i in sorted(picks):  # spread over the text: its kinds differ (conversation, code, languages)
                c = tokens[i * chunk_size:(i + 1) * chunk_size].copy()
                if bos is not None:
                    c[0] = bos
                self.chunks.append(c)
            self.first = chunk_size // 2  # scored positions: the second half, as llama-perplexity scores
            self.ref = [self._logprobs(c) for c in self.chunks]
        except BaseException:
            self.close()
            raise

    @property
    def n_tokens(self) -> int:
        return sum(len(c) - self.first for c in self.chunks)

    def _logprobs(self, chunk: np.ndarray) -> np.ndarray:
        import llama_cpp

        self._check_cancel()
        rc = self.m.eval_chunk(chunk)
        if self.sim.error is not None:
            err, self.sim.error = self.sim.error, None
            raise err
        self._check_cancel()
        if rc != 0:
            raise ImatrixError(f"llama.cpp failed to evaluate a calibration chunk (code {rc}); free memory")
        n_vocab = llama_cpp.llama_vocab_n_tokens(self.m.vocab)
        ptr = llama_cpp.llama_get_logits(self.m.ctx)
        logits = np.ctypeslib.as_array(ptr, shape=(len(chunk), n_vocab))[self.first:].astype(np.float32)
        return _log_softmax(logits)

    def _check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise SensitivityCancelled("sensitivity measurement cancelled")

    def logprobs(self, deltas: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The log-probabilities of the scored positions of every chunk with ``deltas`` applied."""
        self.sim.deltas = deltas
        try:
            return [self._logprobs(c) for c in self.chunks]
        finally:
            self.sim.deltas = {}

    def kl(self, deltas: dict[str, np.ndarray]) -> float:
        """Mean KL divergence (reference || simulated) over the scored positions with ``deltas`` applied."""
        return mean_kl(self.ref, self.logprobs(deltas))

    def close(self) -> None:
        if getattr(self, "m", None) is not None:
            self.m.close()
            self.m = None


def groups_of(names: Iterable[str], n_bands: int = N_BANDS) -> dict[str, list[str]]:
    """Block matrices grouped by category and band of layers (``ffn_down@0-6``)."""
    parsed = [(n, _BLK.match(n)) for n in names]
    layers = [int(m.group(1)) for _, m in parsed if m]
    n_layers = max(layers) + 1 if layers else 1
    bands = max(1, min(n_bands, n_layers))
    out: dict[str, list[str]] = {}
    for n, m in parsed:
        if not m:
            continue
        b = int(m.group(1)) * bands // n_layers
        lo, hi = -(-b * n_layers // bands), -(-(b + 1) * n_layers // bands) - 1
        out.setdefault(f"{m.group(2)}@{lo}-{hi}", []).append(n)
    return dict(sorted(out.items(), key=lambda kv: (kv[0].split("@")[0], int(kv[0].split("@")[1].split("-")[0]))))


def cache_file(reference: Path, imatrix: Path | None, text: str, settings: dict) -> Path:
    from .paths import cache_dir

    ident = json.dumps({"v": CACHE_VERSION, "files": [f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                                                      for p in (reference, imatrix) if p is not None],
                        "text": hashlib.sha256(text.encode("utf-8")).hexdigest(), **settings}, sort_keys=True)
    d = cache_dir() / "sensitivity"
    d.mkdir(parents=True, exist_ok=True)
    return d / f"kl-{hashlib.sha256(ident.encode()).hexdigest()[:24]}.json"


def outside_candidates(reference_tensors: dict) -> dict[str, tuple[str, ...]]:
    """The tensors outside the blocks that are placed too, with the types each is measured at: the output matrix
    (the token embedding where it is tied) around Q6_K, an untied token embedding (looked up, one row per token)
    around Q3_K.  Rows not a multiple of 256 take the legacy types."""
    out: dict[str, tuple[str, ...]] = {}
    tied = "output.weight" not in reference_tensors
    for name, types in (("output.weight", OUTPUT_TYPES), ("token_embd.weight", OUTPUT_TYPES if tied else EMBD_TYPES)):
        t = reference_tensors.get(name)
        if t is not None and name not in out:
            out[name] = types if int(t.shape[0]) % 256 == 0 else FALLBACK_TYPES
    return out


def measure_scales(reference: str | os.PathLike[str], imatrix: str | os.PathLike[str] | None, costs: dict, *,
                   text: str | None = None, n_bands: int = N_BANDS, n_chunks: int = N_CHUNKS,
                   chunk_size: int = CHUNK_SIZE, options: LoadOptions | None = None, threads: int | None = None,
                   use_cache: bool = True, progress: Callable[[MeasureProgress], None] | None = None,
                   cancel: threading.Event | None = None) -> MeasuredScales:
    """Measure each group's KL at its probe type on the reference GGUF and turn it into a scale per unit of
    ``costs``' proxy error (``costs``: :func:`quantizer.sensitivity.tensor_costs` of the same files); the
    tensors of :func:`outside_candidates` are measured at each of their types (their KL is their cost)."""
    from .imatrix import builtin_calibration_text

    text = text if text is not None else builtin_calibration_text()
    reference = Path(reference)
    im = Path(imatrix) if imatrix is not None else None
    groups = groups_of(costs, n_bands)
    deltas = Deltas(reference, im, threads)
    outside = outside_candidates(deltas.tensors)
    settings = {"bands": n_bands, "chunks": n_chunks, "chunk_size": chunk_size, "probe": PROBE_TYPE,
                "groups": groups, "outside": outside}
    cache = cache_file(reference, im, text, settings) if use_cache else None
    if cache is not None and cache.is_file():
        return MeasuredScales.from_json(json.loads(cache.read_text()))
    t0 = time.perf_counter()
    probe = {n: PROBE_TYPE if PROBE_TYPE in costs[n].errors else FALLBACK_PROBE for n in costs}
    runs = [(g, {n: probe[n] for n in names}) for g, names in groups.items()]
    runs += [(f"{n}={q}", {n: q}) for n, types in outside.items() for q in types]
    done, n_steps = 0, len(runs) + 1

    def step(label: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            dt = time.perf_counter() - t0
            progress(MeasureProgress(done, n_steps, label, dt, dt / done * (n_steps - done)))

    kp = KLProbe(reference, text, chunk_size=chunk_size, n_chunks=n_chunks, options=options, cancel=cancel)
    try:
        step("clean run")
        kl: dict[str, float] = {}
        for label, types in runs:
            kp._check_cancel()
            kl[label] = kp.kl({n: deltas.delta(n, q) for n, q in types.items()})
            step(label)
    finally:
        kp.close()
    scales = {}
    for g, names in groups.items():
        err = sum(costs[n].errors[probe[n]] for n in names)
        scales[g] = max(kl[g], 1e-9) / err if err > 0 else 0.0
    direct = {n: {q: kl[f"{n}={q}"] for q in types} for n, types in outside.items()}
    shapes = {n: [int(s) for s in reversed(deltas.tensors[n].shape)] for n in outside}
    res = MeasuredScales(scales, {g: kl[g] for g in groups}, groups, probe, time.perf_counter() - t0,
                         kp.n_tokens, direct=direct, shapes=shapes)
    if cache is not None:
        tmp = cache.with_suffix(".partial")
        tmp.write_text(json.dumps(res.to_json()))
        os.replace(tmp, cache)
    return res


def simulated_kl(reference: str | os.PathLike[str], imatrix: str | os.PathLike[str] | None,
                 plans: dict[str, dict[str, str]], *, text: str | None = None, n_chunks: int = N_CHUNKS,
                 chunk_size: int = CHUNK_SIZE, options: LoadOptions | None = None, threads: int | None = None,
                 cancel: threading.Event | None = None, spread: bool = True) -> dict[str, float]:
    """The measured mean KL of each plan (label -> {tensor: type}) by simulated quantization, on one load."""
    from .imatrix import builtin_calibration_text

    text = text if text is not None else builtin_calibration_text()
    deltas = Deltas(reference, imatrix, threads)
    kp = KLProbe(reference, text, chunk_size=chunk_size, n_chunks=n_chunks, options=options, cancel=cancel,
                 spread=spread)
    try:
        out = {}
        for label, types in plans.items():
            out[label] = kp.kl({n: deltas.delta(n, q).astype(np.float16) for n, q in types.items()})
        return out
    finally:
        kp.close()


def file_kl(reference: str | os.PathLike[str], candidate: str | os.PathLike[str], *, text: str | None = None,
            n_chunks: int = N_CHUNKS, chunk_size: int = CHUNK_SIZE,
            options: LoadOptions | None = None, spread: bool = True) -> float:
    """The mean KL of a real GGUF ``candidate`` from ``reference`` on the same positions :class:`KLProbe` scores
    (to check that the simulation is faithful)."""
    from .imatrix import builtin_calibration_text

    text = text if text is not None else builtin_calibration_text()
    kp = KLProbe(reference, text, chunk_size=chunk_size, n_chunks=n_chunks, options=options, spread=spread)
    ref = kp.ref
    kp.close()
    kc = KLProbe(candidate, text, chunk_size=chunk_size, n_chunks=n_chunks, options=options, spread=spread)
    try:
        return mean_kl(ref, kc.ref)
    finally:
        kc.close()


def estimate_minutes(n_params: int, n_layers: int | None = None, *, n_chunks: int = N_CHUNKS,
                     n_bands: int = N_BANDS, flops_per_s: float = 2.2e11, quantized_per_s: float = 2e7) -> float:
    """A rough duration of :func:`measure_scales` for the dialog: one pass per group (7 categories x bands), per
    type of the output matrix and embedding, and the clean one, at 2 FLOP per weight per token; and every weight
    quantized about twice by our kernels.  Measured: 11.6 min for the 1.5B model on 2 cores (estimate 12.6)."""
    bands = n_bands if n_layers is None else min(n_bands, n_layers)
    passes = 7 * bands + len(OUTPUT_TYPES) + len(EMBD_TYPES) + 1
    return (2.0 * n_params * n_chunks * CHUNK_SIZE * passes / flops_per_s + 2 * n_params / quantized_per_s) / 60
