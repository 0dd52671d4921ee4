"""Teacher-forced logits over llama.cpp, and the per-token metrics of two distributions.

Three pieces used by :mod:`app.core.compare` and :mod:`app.core.evaluate` (which read GGUF headers -- size, bits
per weight, vocabulary fingerprint -- with :func:`app.core.gguf_header.read_header`):

* :class:`LogitSource` -- feeds a fixed token sequence through a loaded ``llama_cpp.Llama`` with llama.cpp's
  low-level batch API and yields the logits *one batch at a time* (a view of llama.cpp's own output buffer), so
  memory stays at ``n_batch x n_vocab`` floats per model whatever the sequence length.
* :func:`token_metrics` -- KL divergence, top-1/top-5 agreement and the target token's probability and NLL under
  both models for a block of rows, computed in float64 (see its docstring for the exact definitions), against
  the reference's raw logits or its stored llama-perplexity rows: the one scoring path of compare and eval.
* :func:`summarize` -- the summary figures over the scored tokens, the one arithmetic of compare and eval.
"""
from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import EngineError, GenerationCancelled

log = logging.getLogger(__name__)

# ---- teacher-forced logits ----------------------------------------------------------------------------------
# Rows of logits held at once per model: n_batch, but at most this many floats (so a 152k vocabulary gets
# 128-row batches: 78 MB in llama.cpp's output buffer and as much in its graph, instead of 512: 311 MB each).
MAX_BATCH_FLOATS = 1 << 25


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

    def rows(self, tokens: Sequence[int], first: int = 0, *, cancel: threading.Event | None = None,
             decode_last: bool = False) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(i0, logits)`` per batch: ``logits[k]`` (float32, ``n_vocab`` wide) is the model's output at
        position ``i0 + k``, i.e. its prediction of ``tokens[i0 + k + 1]``.  Positions ``first .. len(tokens)-2``
        are covered in order.  The last token is not decoded (nothing after it is scored) unless
        ``decode_last``: llama-perplexity decodes whole chunks, and llama.cpp's numbers depend on a batch's
        shape, so eval decodes as it does to write byte-identical base files."""
        n = len(tokens)
        n_dec = n if decode_last else n - 1
        if n > self.n_ctx:
            from .errors import ContextOverflowError

            raise ContextOverflowError(f"{n} tokens do not fit in a context of {self.n_ctx}: use a larger "
                                       "context or a shorter text")
        b = self._batch
        self._clear()
        try:
            for b0 in range(0, n_dec, self.n_batch):
                if cancel is not None and cancel.is_set():
                    raise GenerationCancelled("cancelled")
                b1 = min(n_dec, b0 + self.n_batch)
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
                    if b1 == n:           # decode_last: the last token's row predicts nothing
                        arr = arr[:-1]
                    if len(arr):
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


def _log_softmax(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 log-softmax of float32 logit rows (row max subtracted first) and the shifted logits."""
    zd = z.astype(np.float64)
    zd -= zd.max(axis=1, keepdims=True)
    return zd - np.log(np.exp(zd).sum(axis=1, keepdims=True)), zd


def _reference(ref: np.ndarray, n_vocab: int | None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(log p_ref in float64, mask of the KL terms counted or None for all, the values ranked for top-k)."""
    if ref.dtype == np.uint16:          # llama-perplexity's stored rows (app.core.refstore)
        from .refstore import decode_rows

        lp, mask = decode_rows(ref, n_vocab or ref.shape[1] - 4)
        return lp.astype(np.float64), mask, lp
    lr, _ = _log_softmax(ref)
    return lr, None, ref


def token_metrics(ref: np.ndarray, cand: np.ndarray, targets: Sequence[int] | np.ndarray, *,
                  n_vocab: int | None = None) -> TokenMetrics:
    """Metrics of candidate vs reference for rows of the candidate's raw logits (float32, ``(n, n_vocab)``), the
    reference's rows, and the token each row predicts (``targets``, length ``n``).  The one scoring code path of
    compare and eval.

    The reference's rows are either its raw float32 logits (compare keeps full precision) or llama-perplexity's
    uint16 rows (eval's base file, :mod:`app.core.refstore`; then ``n_vocab`` says how many of the row's levels
    are tokens).  Definitions (those of ``llama-perplexity --kl-divergence``, computed in float64)::

        log p(v)  = z(v) - max(z) - log sum_w exp(z(w) - max(z))        (for each model's logits z)
        KL        = sum_v p_ref(v) * (log p_ref(v) - log p_cand(v))      (nats; >= 0, 0 for identical logits)
        top1      = argmax p_ref == argmax z_cand                        (first index on ties)
        top5      = |top5(p_ref) & top5(z_cand)| / 5
        p_ref     = p_ref(target),  nll_ref = -log p_ref(target)        (same for the candidate)

    With stored uint16 rows, log p_ref is llama.cpp's ``scale * q + min_log_prob`` and, as llama.cpp does, the KL
    sum skips the terms with log p_ref <= -16; from raw logits nothing is approximated.
    """
    targets = np.asarray(targets, dtype=np.int64)
    out: dict[str, list[np.ndarray]] = {k: [] for k in TokenMetrics.__dataclass_fields__}
    for a in range(0, len(targets), _BLOCK_ROWS):
        c, t = cand[a:a + _BLOCK_ROWS], targets[a:a + _BLOCK_ROWS]
        rows = np.arange(len(t))
        lr, mask, ranked = _reference(ref[a:a + _BLOCK_ROWS], n_vocab)
        lc, _ = _log_softmax(c)
        terms = np.exp(lr) * (lr - lc)
        if mask is not None:
            terms[~mask] = 0.0
        out["kl"].append(terms.sum(axis=1))
        out["top1"].append(ranked.argmax(axis=1) == c.argmax(axis=1))
        t5r = np.argpartition(ranked, -5, axis=1)[:, -5:]
        t5c = np.argpartition(c, -5, axis=1)[:, -5:]
        out["top5"].append((t5r[:, :, None] == t5c[:, None, :]).any(axis=2).sum(axis=1) / 5.0)
        lpr, lpc = lr[rows, t], lc[rows, t]
        out["p_ref"].append(np.exp(lpr))
        out["p_cand"].append(np.exp(lpc))
        out["nll_ref"].append(-lpr)
        out["nll_cand"].append(-lpc)
    return TokenMetrics(**{k: (np.concatenate(v) if v else np.zeros(0)) for k, v in out.items()})


def merge(parts: Sequence[TokenMetrics]) -> TokenMetrics:
    """One TokenMetrics of several blocks, in order."""
    return TokenMetrics(**{k: np.concatenate([getattr(p, k) for p in parts]) if parts else np.zeros(0)
                           for k in TokenMetrics.__dataclass_fields__})


def summarize(m: TokenMetrics) -> dict[str, float | int | None]:
    """The summary figures over scored tokens, the one arithmetic of compare and eval: mean/median/p99 (linear
    interpolation, fraction ``0.99 * (n - 1)``)/max KL, top-1 agreement, top-5 overlap, and each model's
    perplexity ``exp(mean NLL)``.  ``None`` figures when nothing was scored."""
    n = len(m.kl)
    if n == 0:
        return dict(n_tokens=0, mean_kld=None, median_kld=None, p99_kld=None, max_kld=None, top1_agreement=None,
                    top5_overlap=None, ppl_reference=None, ppl_candidate=None)
    return dict(n_tokens=n, mean_kld=float(m.kl.mean()), median_kld=float(np.median(m.kl)),
                p99_kld=float(np.percentile(m.kl, 99)), max_kld=float(m.kl.max()),
                top1_agreement=float(np.mean(m.top1)), top5_overlap=float(np.mean(m.top5)),
                ppl_reference=float(np.exp(np.mean(m.nll_ref))), ppl_candidate=float(np.exp(np.mean(m.nll_cand))))


def score_rows(ref_rows: Callable[[int, int], np.ndarray], cand: LogitSource, tokens: Sequence[int], first: int,
               *, n_vocab: int | None = None, cancel: threading.Event | None = None,
               on_rows: Callable[[int], None] | None = None, decode_last: bool = False) -> TokenMetrics:
    """Teacher-force ``tokens`` through the candidate and score its rows ``first .. len(tokens)-2`` against the
    reference's stored rows: ``ref_rows(k, n)`` returns the reference's rows ``first + k .. first + k + n - 1``
    (raw logits or llama-perplexity rows, see :func:`token_metrics`).  One batch of the candidate's logits and
    the matching block of reference rows are in memory at a time.  ``on_rows(done)`` after each batch."""
    parts = []
    for i0, c in cand.rows(tokens, first, cancel=cancel, decode_last=decode_last):
        k0 = i0 - first
        parts.append(token_metrics(ref_rows(k0, len(c)), c, tokens[i0 + 1:i0 + 1 + len(c)], n_vocab=n_vocab))
        if on_rows is not None:
            on_rows(k0 + len(c))
    return merge(parts)
