"""Decode several independent prompts at once in one llama.cpp context, one sequence id each.

:class:`BatchDecoder` makes its own context on an :class:`~app.core.engine.Engine`'s model (``n_seq_max`` =
``n_parallel``, a KV stream per sequence: ``kv_unified=False``), and runs continuous batching: every step, one
``llama_decode`` carries the next token of each running sequence (plus the prompt of a sequence just started);
when a sequence ends its KV cells are removed and the next prompt takes its slot, at position 0.  A probe thus
starts from an empty state: nothing of an earlier probe is visible to it (its own stream, its cells removed).

Tokens are chosen here, in numpy, from each sequence's logits: greedy (argmax), or temperature / top-k / top-p /
min-p sampling with a ``numpy.random.Generator`` seeded by the probe's own seed, so the pick depends only on
the probe and its logits, never on which probes share the batch.  The logits themselves are what llama.cpp
computes for that sequence; see :data:`GROUPING_NOTE` for how far they depend on the batch.
"""
from __future__ import annotations

import codecs
import ctypes
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..chat_types import SamplingSettings
from ..errors import ProbeRunError
from ..thinking import ThinkingParser, ThinkingResult
from .penalty import HesitationPenalty

GROUPING_NOTE = (
    "A sequence's logits are computed from its own tokens only (its own KV stream, attention masked to it); what "
    "can change with the grouping is the rounding of the matrix products.  With F16, BF16 and Q8_0 weights "
    "llama.cpp's CPU path multiplies each row the same way whatever the batch, and greedy tokens are identical "
    "alone and in any group (measured, and tested).  Weights that ggml-cpu repacks for AVX2/NEON (Q4_0, Q4_K, "
    "Q2_K, IQ4_NL; most of a Q4_K_M file) are multiplied in groups of 4 rows by a GEMM kernel and the remaining "
    "n_rows % 4 rows by a GEMV kernel (ggml/src/ggml-cpu/repack.cpp, forward_mul_mat), which sum in a different "
    "order: the same probe's logits alone (1 row) and in a group differ in the last bits, and a greedy pick can "
    "flip where the best two logits are that close; from such a flip its continuation differs.")

# Sampling looks only at tokens whose logit is within this many nats (after temperature) of the best: the rest
# have probability below e^-20 relative to it (~2e-9) and never survive top-p; it keeps sorting cheap.
_SAMPLING_WINDOW = 20.0


@dataclass
class DecodeJob:
    """One prompt to run.  ``key`` is anything the caller uses to recognise the result."""

    key: Any
    tokens: list[int]
    seed: int
    starts_in_reasoning: bool = False


@dataclass
class Decoded:
    key: Any
    tokens: list[int]
    text: str
    thinking: ThinkingResult
    finish: str              # "stop" | "length"
    prompt_tokens: int
    wall_s: float            # from the probe's first decode to its last token (shared with the other sequences)
    seed: int
    margins: list[float] = field(default_factory=list)   # best minus second-best logit per pick (record_margins)


def pick_token(logits: np.ndarray, s: SamplingSettings, rng: np.random.Generator) -> int:
    """Greedy or sampled choice from one row of (already biased) logits."""
    if s.greedy or s.temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / s.temperature
    cand = np.flatnonzero(z >= z.max() - _SAMPLING_WINDOW)
    zc = z[cand]
    order = np.argsort(-zc, kind="stable")
    cand, zc = cand[order], zc[order]
    if s.top_k > 0:
        cand, zc = cand[: s.top_k], zc[: s.top_k]
    p = np.exp(zc - zc[0])
    p /= p.sum()
    if s.min_p > 0:
        keep = p >= s.min_p * p[0]
        cand, p = cand[keep], p[keep] / p[keep].sum()
    if 0 < s.top_p < 1:
        n = int(np.searchsorted(np.cumsum(p), s.top_p) + 1)
        cand, p = cand[:n], p[:n] / p[:n].sum()
    return int(cand[min(int(np.searchsorted(np.cumsum(p), rng.random())), len(cand) - 1)])


@dataclass
class _Slot:
    seq: int
    job: DecodeJob | None = None
    fed: int = 0                      # prompt tokens already in the batch
    pos: int = 0
    next_token: int = -1
    out_index: int = -1               # row of this slot's logits in the last batch (-1: none)
    tokens: list[int] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    parser: ThinkingParser | None = None
    decoder: Any = None
    rng: Any = None
    t0: float = 0.0
    margins: list[float] = field(default_factory=list)


class BatchDecoder:
    """``BatchDecoder(engine, n_parallel=4, n_ctx_seq=2048, settings=...)``; :meth:`run` many jobs; :meth:`close`.

    ``n_ctx_seq``: KV cells per sequence (prompt + reply must fit: the reply stops at ``length`` there).
    ``n_threads``: CPU threads (None = the engine's default).  The overthinking bias is
    ``settings.overthinking_penalty`` (0 = off).  ``record_margins``: keep each pick's top-2 logit margin.
    """

    def __init__(self, engine: Any, *, n_parallel: int, n_ctx_seq: int, settings: SamplingSettings,
                 n_threads: int | None = None, record_margins: bool = False) -> None:
        import llama_cpp

        if n_parallel < 1 or n_parallel > 64:
            raise ProbeRunError(f"parallel sequences must be 1 to 64, not {n_parallel}")
        self._ll = llama_cpp
        self.record_margins = record_margins
        self.engine, self.settings, self.n_parallel = engine, settings, n_parallel
        self.n_ctx_seq = (max(256, n_ctx_seq) + 255) // 256 * 256
        self.n_batch = max(512, n_parallel)
        # The engine's own context settings (flash attention, KV cache type, ...: the load options), so that a
        # probe alone computes exactly what Engine.chat computes; then the batching fields.
        p = llama_cpp.llama_context_params.from_buffer_copy(engine.llama.context_params)
        p.n_ctx = self.n_ctx_seq * n_parallel
        p.n_batch = p.n_ubatch = self.n_batch
        p.n_seq_max = n_parallel
        p.kv_unified = False
        threads = n_threads or engine.llama.context_params.n_threads
        p.n_threads = p.n_threads_batch = int(threads)
        model = engine.llama._model.model
        self._ctx = llama_cpp.llama_init_from_model(model, p)
        if not self._ctx:
            raise ProbeRunError(f"llama.cpp could not make a context of {p.n_ctx} tokens for {n_parallel} "
                                f"sequences: lower the parallel sequences or the maximum reply length")
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._vocab = engine.llama._model.vocab
        self._n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        self._piece_buf = ctypes.create_string_buffer(256)
        self._penalty = (HesitationPenalty.for_vocab(lambda t: engine.tokenize(t, special=False),
                                                     settings.overthinking_penalty)
                         if settings.overthinking_penalty else None)

    # ---- public -------------------------------------------------------------------------------------------------
    def run(self, jobs: Iterable[DecodeJob], on_done: Callable[[Decoded], None],
            cancel: threading.Event | None = None) -> bool:
        """Decode every job, calling ``on_done`` as each finishes (in finishing order).  Returns False when
        ``cancel`` stopped it (unfinished jobs are dropped, nothing partial is reported)."""
        queue = deque(jobs)
        for j in queue:
            if len(j.tokens) + 1 > self.n_ctx_seq:
                raise ProbeRunError(f"a prompt takes {len(j.tokens)} tokens but each sequence holds "
                                    f"{self.n_ctx_seq}: shorten it or raise the context")
        slots = [_Slot(seq=i) for i in range(self.n_parallel)]
        self._ll.llama_memory_clear(self._mem, True)
        for s in slots:
            self._start(s, queue)
        while any(s.job is not None for s in slots):
            if cancel is not None and cancel.is_set():
                self._ll.llama_memory_clear(self._mem, True)
                return False
            self._step(slots)
            for s in slots:
                if s.job is not None and s.out_index >= 0:
                    done = self._advance(s)
                    if done is not None:
                        self._ll.llama_memory_seq_rm(self._mem, s.seq, -1, -1)
                        self._start(s, queue)
                        on_done(done)
        return True

    def close(self) -> None:
        if getattr(self, "_ctx", None):
            self._ll.llama_batch_free(self._batch)
            self._ll.llama_free(self._ctx)
            self._ctx = None

    def __enter__(self) -> BatchDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- internals ----------------------------------------------------------------------------------------------
    def _start(self, s: _Slot, queue: deque) -> None:
        s.job = queue.popleft() if queue else None
        s.fed, s.pos, s.out_index, s.next_token = 0, 0, -1, -1
        s.tokens, s.parts, s.margins = [], [], []
        if s.job is not None:
            s.parser = ThinkingParser(starts_in_reasoning=s.job.starts_in_reasoning)
            s.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            s.rng = np.random.default_rng(s.job.seed)
            s.t0 = time.perf_counter()

    def _step(self, slots: list[_Slot]) -> None:
        """One llama_decode: the next token of each running slot, and prompt chunks of starting ones."""
        b, n = self._batch, 0
        for s in slots:
            s.out_index = -1
        for s in slots:
            if s.job is None:
                continue
            if s.fed < len(s.job.tokens):
                room = self.n_batch - n
                chunk = s.job.tokens[s.fed: s.fed + room]
                for t in chunk:
                    b.token[n], b.pos[n], b.n_seq_id[n], b.seq_id[n][0], b.logits[n] = t, s.pos, 1, s.seq, 0
                    n += 1
                    s.pos += 1
                s.fed += len(chunk)
                if s.fed == len(s.job.tokens):
                    b.logits[n - 1] = 1
                    s.out_index = n - 1
            elif n < self.n_batch:
                b.token[n], b.pos[n], b.n_seq_id[n], b.seq_id[n][0], b.logits[n] = s.next_token, s.pos, 1, s.seq, 1
                s.out_index = n
                s.pos += 1
                n += 1
            if n >= self.n_batch:
                break
        b.n_tokens = n
        rc = self._ll.llama_decode(self._ctx, b)
        if rc != 0:
            raise ProbeRunError(f"llama.cpp could not decode the batch (code {rc}): lower the parallel sequences")

    def _advance(self, s: _Slot) -> Decoded | None:
        """Choose the slot's next token from its logits; a finished probe is returned."""
        ptr = self._ll.llama_get_logits_ith(self._ctx, s.out_index)
        logits = np.ctypeslib.as_array(ptr, shape=(self._n_vocab,))
        if self._penalty is not None:
            logits = self._penalty.apply(logits.copy())
        tok = pick_token(logits, self.settings, s.rng)
        if self.record_margins:
            top2 = np.partition(logits, -2)[-2:]
            s.margins.append(float(abs(top2[1] - top2[0])))
        job = s.job
        assert job is not None and s.parser is not None
        if self._ll.llama_vocab_is_eog(self._vocab, tok):
            return self._finish(s, "stop")
        s.tokens.append(tok)
        piece = s.decoder.decode(self._piece(tok))
        if piece:
            s.parts.append(piece)
            s.parser.feed(piece, tokens=1)
        elif s.parser is not None:
            s.parser.feed("", tokens=1)
        if len(s.tokens) >= self.settings.max_tokens or s.pos + 1 >= self.n_ctx_seq:
            return self._finish(s, "length")
        s.next_token = tok
        return None

    def _finish(self, s: _Slot, finish: str) -> Decoded:
        job, parser = s.job, s.parser
        assert job is not None and parser is not None
        tail = s.decoder.decode(b"", final=True)
        if tail:
            s.parts.append(tail)
            parser.feed(tail, tokens=0)
        return Decoded(key=job.key, tokens=list(s.tokens), text="".join(s.parts), thinking=parser.finish(),
                       finish=finish, prompt_tokens=len(job.tokens), wall_s=time.perf_counter() - s.t0,
                       seed=job.seed, margins=list(s.margins))

    def _piece(self, token: int) -> bytes:
        n = self._ll.llama_token_to_piece(self._vocab, token, self._piece_buf, len(self._piece_buf), 0, False)
        if n < 0:
            self._piece_buf = ctypes.create_string_buffer(-n)
            n = self._ll.llama_token_to_piece(self._vocab, token, self._piece_buf, -n, 0, False)
        return self._piece_buf.raw[:n]
