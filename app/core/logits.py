"""Teacher-forced logits over llama.cpp, and the per-token metrics of two distributions.

Two pieces used by :mod:`app.core.compare` and :mod:`app.core.evaluate` (which read GGUF headers -- size, bits
per weight, vocabulary fingerprint -- with :func:`app.core.gguf_header.read_header`):

* :class:`LogitSource` -- feeds a fixed token sequence through a loaded ``llama_cpp.Llama`` with llama.cpp's
  low-level batch API and yields the logits *one batch at a time* (a view of llama.cpp's own output buffer), so
  memory stays at ``n_batch x n_vocab`` floats per model whatever the sequence length.
* :func:`token_metrics` -- KL divergence, top-1/top-5 agreement and the target token's probability and NLL under
  both models for a block of rows, computed in float64 (see its docstring for the exact definitions).
"""
from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import EngineError, GenerationCancelled

log = logging.getLogger(__name__)

# ---- teacher-forced logits ----------------------------------------------------------------------------------
# Rows of logits held at once per model: n_batch, but at most this many floats (so a 152k vocabulary gets
# 256-row batches: 150 MB, instead of 512: 300 MB).
MAX_BATCH_FLOATS = 1 << 26


class LogitSource:
    """Teacher-forced logits of one loaded model (a ``llama_cpp.Llama``, e.g. ``Engine.llama``).

    :meth:`rows` decodes a token sequence in batches and yields, per batch, a view of llama.cpp's logits buffer.
    The view is valid only until the next batch is decoded (copy it to keep it).  The model's KV cache is
    cleared before and after (and ``Llama.reset()`` is called), so an Engine sharing the ``Llama`` stays
    consistent.  Not thread-safe: one sequence at a time.
    """

    def __init__(self, llm: Any, *, n_batch: int | None = None) -> None:
        import llama_cpp

        self._lc = llama_cpp
        self.llm = llm
        self.n_vocab = int(llm.n_vocab())
        cap = max(16, MAX_BATCH_FLOATS // self.n_vocab)
        cap = 1 << (cap.bit_length() - 1)              # a power of two
        self.n_batch = max(1, min(n_batch or llm.n_batch, llm.n_batch, cap))
        self.n_ctx = int(llm.n_ctx())
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)

    def close(self) -> None:
        if self._batch is not None:
            self._lc.llama_batch_free(self._batch)
            self._batch = None

    def __enter__(self) -> LogitSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _clear(self) -> None:
        self._lc.llama_memory_clear(self._lc.llama_get_memory(self.llm.ctx), True)
        self.llm.reset()

    def rows(self, tokens: Sequence[int], first: int = 0, *,
             cancel: threading.Event | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(i0, logits)`` per batch: ``logits[k]`` (float32, ``n_vocab`` wide) is the model's output at
        position ``i0 + k``, i.e. its prediction of ``tokens[i0 + k + 1]``.  Positions ``first .. len(tokens)-2``
        are covered in order (the last token is never decoded: nothing after it is scored)."""
        n = len(tokens)
        if n > self.n_ctx:
            from .errors import ContextOverflowError

            raise ContextOverflowError(f"{n} tokens do not fit in a context of {self.n_ctx}: use a larger "
                                       "context or a shorter text")
        b = self._batch
        self._clear()
        try:
            for b0 in range(0, n - 1, self.n_batch):
                if cancel is not None and cancel.is_set():
                    raise GenerationCancelled("cancelled")
                b1 = min(n - 1, b0 + self.n_batch)
                n_out = 0
                for k, i in enumerate(range(b0, b1)):
                    b.token[k] = tokens[i]
                    b.pos[k] = i
                    b.n_seq_id[k] = 1
                    b.seq_id[k][0] = 0
                    want = i >= first
                    b.logits[k] = want
                    n_out += want
                b.n_tokens = b1 - b0
                rc = self._lc.llama_decode(self.llm.ctx, b)
                if rc != 0:
                    raise EngineError(f"llama.cpp failed to evaluate tokens {b0}..{b1} (code {rc}): the model or "
                                      "context may be too large for the available memory")
                if n_out:
                    ptr = self._lc.llama_get_logits(self.llm.ctx)
                    arr = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)),
                                                shape=(n_out, self.n_vocab))
                    yield max(b0, first), arr
        finally:
            self._clear()

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for (special tokens as their text)."""
        lc = self._lc
        vocab = lc.llama_model_get_vocab(self.llm.model)
        buf = ctypes.create_string_buffer(64)
        n = lc.llama_token_to_piece(vocab, token, buf, len(buf), 0, True)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = lc.llama_token_to_piece(vocab, token, buf, len(buf), 0, True)
        return buf.raw[:n]


# ---- metrics ------------------------------------------------------------------------------------------------
_BLOCK_ROWS = 32        # float64 work arrays are _BLOCK_ROWS x n_vocab


@dataclass
class TokenMetrics:
    """Per-row arrays for a block of positions (see :func:`token_metrics`)."""

    kl: np.ndarray           # float64
    top1: np.ndarray         # bool
    top5: np.ndarray         # float64, |top5_ref & top5_cand| / 5
    p_ref: np.ndarray        # float64, probability of the target token under the reference
    p_cand: np.ndarray       # float64, ... under the candidate
    nll_ref: np.ndarray      # float64, -log p_ref
    nll_cand: np.ndarray     # float64, -log p_cand


def _log_norm(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 copy of ``x`` shifted by its row max, the row max, and log(sum(exp(shifted)))."""
    xd = x.astype(np.float64)
    m = xd.max(axis=1, keepdims=True)
    xd -= m
    e = np.exp(xd)
    s = e.sum(axis=1, keepdims=True)
    return xd, e / s, np.log(s)


def token_metrics(ref: np.ndarray, cand: np.ndarray, targets: Sequence[int] | np.ndarray) -> TokenMetrics:
    """Metrics of candidate vs reference for rows of raw logits (float32, ``(n, n_vocab)``) and the token each
    row predicts (``targets``, length ``n``).

    Definitions (those of llama.cpp's ``llama-perplexity --kl-divergence``, computed exactly in float64 from the
    float32 logits: log-softmax with the row max subtracted, over the whole vocabulary)::

        log p(v)  = z(v) - max(z) - log sum_w exp(z(w) - max(z))        (for each model's logits z)
        KL        = sum_v p_ref(v) * (log p_ref(v) - log p_cand(v))      (nats; >= 0, 0 for identical logits)
        top1      = argmax z_ref == argmax z_cand                        (first index on ties)
        top5      = |top5(z_ref) & top5(z_cand)| / 5
        p_ref     = p_ref(target),  nll_ref = -log p_ref(target)        (same for the candidate)

    llama.cpp stores the base model's log-probs as 16-bit integers and skips terms with log p_ref < -16; this
    computes the same sums without those two approximations.
    """
    targets = np.asarray(targets, dtype=np.int64)
    out: dict[str, list[np.ndarray]] = {k: [] for k in TokenMetrics.__dataclass_fields__}
    for a in range(0, len(targets), _BLOCK_ROWS):
        r, c, t = ref[a:a + _BLOCK_ROWS], cand[a:a + _BLOCK_ROWS], targets[a:a + _BLOCK_ROWS]
        rows = np.arange(len(t))
        zr, pr, lser = _log_norm(r)
        zc, _, lsec = _log_norm(c)
        # log p_ref - log p_cand = (zr - lser) - (zc - lsec); sum p_ref * that, with sum p_ref = 1
        kl = (pr * (zr - zc)).sum(axis=1) - lser[:, 0] + lsec[:, 0]
        out["kl"].append(kl)
        out["top1"].append(r.argmax(axis=1) == c.argmax(axis=1))
        t5r = np.argpartition(r, -5, axis=1)[:, -5:]
        t5c = np.argpartition(c, -5, axis=1)[:, -5:]
        out["top5"].append((t5r[:, :, None] == t5c[:, None, :]).any(axis=2).sum(axis=1) / 5.0)
        lpr = zr[rows, t] - lser[:, 0]
        lpc = zc[rows, t] - lsec[:, 0]
        out["p_ref"].append(np.exp(lpr))
        out["p_cand"].append(np.exp(lpc))
        out["nll_ref"].append(-lpr)
        out["nll_cand"].append(-lpc)
    return TokenMetrics(**{k: (np.concatenate(v) if v else np.zeros(0)) for k, v in out.items()})
