"""Compare a reference GGUF (F16/BF16/Q8_0) with a candidate (a quantization of the same model) on one prompt.

1. Both models answer the prompt **greedily** (the reference's chat template renders it, through
   :class:`~app.core.engine.Engine`; the same prompt tokens go to both), side by side, with the index of the first
   answer token where the two differ.
2. The reference's tokens -- prompt + reference answer -- are then fed through both models (teacher forcing) and
   every answer token gets: KL(P_ref || P_cand), top-1 agreement, top-5 overlap, and the probability of the
   reference's token under each model (definitions in :func:`app.core.logits.token_metrics`).

Which tokens are scored: the answer tokens, i.e. the rows at positions ``n_prompt - 1 .. n_prompt + n_answer - 2``
(the distribution over answer token ``k`` given the prompt and answer tokens ``< k``).  The prompt's own tokens
are not scored.  ``n_answer`` counts the end-of-generation token when the reference stopped on one, so whether the
candidate would stop there too is measured as well.  Summary figures over those tokens, as llama.cpp's
``llama-perplexity --kl-divergence`` defines them:

* ``mean_kld``, ``median_kld`` (middle value, mean of the two middle ones for an even count), ``p99_kld``
  (linear interpolation between order statistics, fraction ``0.99 * (n - 1)``), ``max_kld`` -- in nats;
* ``top1_agreement``: fraction (0..1) of scored tokens where both models' most likely token is the same
  (llama.cpp's "Same top p");
* ``ppl_reference`` / ``ppl_candidate``: ``exp(mean(-log p(token)))`` over the scored tokens;
* ``top5_overlap``: mean of ``|top5_ref & top5_cand| / 5``.

Memory stays bounded: logits are consumed a batch at a time, both models stepped in lockstep, never a
``n_tokens x n_vocab`` array per model.  Both models are loaded while the metrics run (weights memory-mapped).
"""
from __future__ import annotations

import codecs
import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ContextOverflowError, GenerationCancelled, VocabMismatchError
from .gguf_header import GGUFHeader, file_type_name, read_header
from .logits import LogitSource, TokenMetrics, token_metrics

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 256
DEFAULT_N_CTX = 2048


@dataclass(frozen=True)
class Progress:
    """A progress report: ``stage`` in words, ``done`` of ``total`` units (tokens or chunks)."""

    stage: str
    done: int
    total: int


ProgressFn = Callable[[Progress], None]


@dataclass(frozen=True)
class TokenRecord:
    """One scored answer token of the reference (for the GUI's token colouring and KL plot).

    ``index``: position in the reference answer (0 = first answer token); ``text``: its text (an incomplete UTF-8
    character is shown on the token that completes it); ``top1_match``: both models' most likely next token agree.
    """

    index: int
    token: int
    text: str
    kl: float
    top1_match: bool
    top5_overlap: float
    p_ref: float
    p_cand: float


@dataclass(frozen=True)
class ModelSummary:
    """A compared GGUF, as its header describes it."""

    path: str
    name: str
    architecture: str
    file_type: str
    size_bytes: int
    n_params: int
    bits_per_weight: float

    @classmethod
    def of(cls, info: GGUFHeader) -> ModelSummary:
        return cls(path=str(info.path), name=info.name, architecture=info.architecture,
                   file_type=file_type_name(info.file_type), size_bytes=info.size_bytes, n_params=info.n_params,
                   bits_per_weight=round(info.bits_per_weight, 4))


@dataclass
class Summary:
    """Summary figures over scored tokens (see the module docstring).  ``None`` when nothing was scored."""

    n_tokens: int
    mean_kld: float | None
    median_kld: float | None
    p99_kld: float | None
    max_kld: float | None
    top1_agreement: float | None
    top5_overlap: float | None
    ppl_reference: float | None
    ppl_candidate: float | None

    @classmethod
    def of(cls, kl: np.ndarray, top1: np.ndarray, top5: np.ndarray, nll_ref: np.ndarray,
           nll_cand: np.ndarray) -> Summary:
        if len(kl) == 0:
            return cls(0, None, None, None, None, None, None, None, None)
        return cls(n_tokens=len(kl), mean_kld=float(kl.mean()), median_kld=float(np.median(kl)),
                   p99_kld=float(np.percentile(kl, 99)), max_kld=float(kl.max()),
                   top1_agreement=float(np.mean(top1)), top5_overlap=float(np.mean(top5)),
                   ppl_reference=float(np.exp(np.mean(nll_ref))), ppl_candidate=float(np.exp(np.mean(nll_cand))))


@dataclass
class CompareResult:
    """Everything :func:`compare` found.  ``first_divergence``: index of the first answer token where the greedy
    answers differ (``None`` when they are identical; the shorter one's length when one is a prefix of the
    other).  ``reference_text``/``candidate_text`` are the raw answers (reasoning included); ``*_reasoning`` and
    ``*_answer`` are them split at ``</think>``."""

    reference: ModelSummary
    candidate: ModelSummary
    prompt: str
    n_ctx: int
    prompt_tokens: list[int]
    reference_text: str
    candidate_text: str
    reference_reasoning: str
    reference_answer: str
    candidate_reasoning: str
    candidate_answer: str
    reference_finish: str
    candidate_finish: str
    reference_tokens: list[int]
    candidate_tokens: list[int]
    first_divergence: int | None
    summary: Summary
    tokens: list[TokenRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def __getattr__(self, name: str) -> Any:          # result.mean_kld etc. read through to the summary
        if name != "summary" and name in Summary.__dataclass_fields__:
            return getattr(self.summary, name)
        raise AttributeError(name)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("summary"))
        return d

    def to_json(self, **kw: Any) -> str:
        """JSON text of :meth:`to_dict` (summary figures at the top level: ``mean_kld``, ``median_kld``, ...)."""
        return json.dumps(self.to_dict(), ensure_ascii=False, **kw)


def check_comparable(ref: GGUFHeader, cand: GGUFHeader) -> list[str]:
    """Raise :class:`VocabMismatchError` when the two files do not share a vocabulary; return warnings for other
    differences that suggest the candidate is not a quantization of the reference."""
    if ref.n_vocab != cand.n_vocab:
        raise VocabMismatchError(
            f"{cand.path.name} has a vocabulary of {cand.n_vocab} tokens and {ref.path.name} one of {ref.n_vocab}: "
            "they are different models; compare a quantization with the model it was made from")
    if ref.vocab_sha256 != cand.vocab_sha256:
        raise VocabMismatchError(
            f"{cand.path.name} and {ref.path.name} have vocabularies of the same size but different tokens: "
            "they are different models; compare a quantization with the model it was made from")
    warns = []
    if ref.architecture != cand.architecture:
        warns.append(f"architectures differ ({ref.architecture} vs {cand.architecture})")
    if ref.n_params != cand.n_params:
        warns.append(f"parameter counts differ ({ref.n_params} vs {cand.n_params}): the candidate may not be a "
                     "quantization of the reference")
    for w in warns:
        log.warning("%s", w)
    return warns


def score_tokens(ref: LogitSource, cand: LogitSource, tokens: Sequence[int], first: int, *,
                 cancel: threading.Event | None = None,
                 on_rows: Callable[[int], None] | None = None) -> tuple[TokenMetrics, np.ndarray]:
    """Teacher-force ``tokens`` through both models in lockstep and score rows ``first .. len(tokens)-2``
    (row ``i`` predicts ``tokens[i + 1]``).  Returns the per-row metrics and the row positions.  Only one batch
    of logits per model exists at a time (views of llama.cpp's buffers)."""
    parts: list[TokenMetrics] = []
    ref.n_batch = cand.n_batch = min(ref.n_batch, cand.n_batch)    # same batch boundaries -> same row blocks
    cand_rows = cand.rows(tokens, first, cancel=cancel)
    for i0, r in ref.rows(tokens, first, cancel=cancel):
        j0, c = next(cand_rows)
        if i0 != j0 or r.shape != c.shape:
            raise RuntimeError(f"the two models' logit rows are out of step (rows at {i0} {r.shape} and {j0} "
                               f"{c.shape})")
        parts.append(token_metrics(r, c, tokens[i0 + 1:i0 + 1 + len(r)]))
        if on_rows is not None:
            on_rows(i0 + len(r) - first)
    for _ in cand_rows:      # exhaust: the generator clears the candidate's KV cache on exit
        pass
    merged = TokenMetrics(**{k: np.concatenate([getattr(p, k) for p in parts]) if parts else np.zeros(0)
                             for k in TokenMetrics.__dataclass_fields__})
    return merged, np.arange(first, first + len(merged.kl))


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first position where two token sequences differ; ``None`` when they are equal."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def token_texts(src: LogitSource, tokens: Sequence[int]) -> list[str]:
    """Text of each token, decoding UTF-8 incrementally (a character split over tokens shows on the last one)."""
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    out = [dec.decode(src.piece(t)) for t in tokens]
    if out:
        out[-1] += dec.decode(b"", final=True)
    return out


def _greedy(engine: Any, prompt_tokens: Sequence[int], max_tokens: int, who: str,
            on_text: Callable[[str], None] | None, progress: ProgressFn | None,
            cancel: threading.Event | None) -> Any:
    from .engine import SamplingSettings

    count = [0]

    def piece(text: str) -> None:
        count[0] += 1
        if on_text is not None:
            on_text(text)
        if progress is not None:
            progress(Progress(f"{who} answer", min(count[0], max_tokens), max_tokens))

    reply = engine.complete(list(prompt_tokens), settings=SamplingSettings(greedy=True, max_tokens=max_tokens,
                                                                            seed=0),
                            on_text=piece, cancel=cancel)
    if reply.finish_reason == "cancelled":
        raise GenerationCancelled("comparison cancelled")
    return reply


def _answer_tokens(engine: Any, reply: Any) -> list[int]:
    """The reply's tokens plus, when it stopped on an end-of-generation token, that token.  The engine leaves it
    out of ``reply.tokens``; greedy decoding picked it as the most likely token after the last answer token, so
    it is the argmax of the logits llama.cpp still holds from that step."""
    toks = list(reply.tokens)
    if reply.finish_reason == "stop":
        import ctypes

        import llama_cpp

        llm = engine.llama
        ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        last = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(llm.n_vocab(),))
        eog = int(last.argmax())
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        if llama_cpp.llama_vocab_is_eog(vocab, eog):
            toks.append(eog)
        else:               # cannot happen with greedy decoding; keep the answer as it is
            log.warning("the reference stopped but its last logits do not point at an end token")
    return toks


def _teacher_forced(ref_eng: Any, cand_eng: Any, prompt_tokens: list[int], answer: list[int],
                    progress: ProgressFn | None, cancel: threading.Event | None) -> tuple[TokenMetrics, list[str]]:
    """Score the reference's answer tokens (after the prompt) under both models; also the answer tokens' texts."""
    seq = prompt_tokens + answer
    first = len(prompt_tokens) - 1

    def on_rows(done: int) -> None:
        if progress is not None:
            progress(Progress("scoring", done, len(answer)))

    with LogitSource(ref_eng.llama) as rs, LogitSource(cand_eng.llama) as cs:
        m, _ = score_tokens(rs, cs, seq, first, cancel=cancel, on_rows=on_rows)
        return m, token_texts(rs, answer)


def compare(reference: str | Path, candidate: str | Path, prompt: str, *, max_tokens: int = DEFAULT_MAX_TOKENS,
            n_ctx: int = DEFAULT_N_CTX, threads: int | None = None, progress: ProgressFn | None = None,
            cancel: threading.Event | None = None, on_reference_text: Callable[[str], None] | None = None,
            on_candidate_text: Callable[[str], None] | None = None) -> CompareResult:
    """Compare ``candidate`` with ``reference`` on ``prompt`` (a user message).  See the module docstring.

    ``on_reference_text``/``on_candidate_text`` receive the answers' text as it streams.  Raises
    :class:`~app.core.errors.VocabMismatchError` (different vocabularies),
    :class:`~app.core.errors.ContextOverflowError` (the prompt does not fit in ``n_ctx``),
    :class:`~app.core.errors.ModelLoadError` (missing, non-GGUF, truncated, unsupported architecture) and
    :class:`~app.core.errors.GenerationCancelled` when ``cancel`` is set.
    """
    from .engine import Engine, Message
    from .thinking import split_reasoning

    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    ref_info, cand_info = read_header(reference), read_header(candidate)
    warnings = check_comparable(ref_info, cand_info)
    with Engine(reference, n_ctx=n_ctx, n_threads=threads) as ref_eng:
        prep = ref_eng.render_tokens([Message("user", prompt)])
        prompt_tokens = list(prep.tokens)
        if len(prompt_tokens) >= ref_eng.n_ctx:          # not even one answer token would fit
            raise ContextOverflowError(
                f"the prompt takes {len(prompt_tokens)} tokens but the context holds {ref_eng.n_ctx}: shorten the "
                f"prompt or raise the context size (--ctx)")
        ref_n_ctx = ref_eng.n_ctx
        budget = min(max_tokens, ref_n_ctx - len(prompt_tokens))
        ref_reply = _greedy(ref_eng, prompt_tokens, budget, "reference", on_reference_text, progress, cancel)
        ref_answer = _answer_tokens(ref_eng, ref_reply)[:ref_eng.n_ctx - len(prompt_tokens)]
        with Engine(candidate, n_ctx=n_ctx, n_threads=threads) as cand_eng:
            cand_reply = _greedy(cand_eng, prompt_tokens, budget, "candidate", on_candidate_text, progress,
                                 cancel)
            m, texts = _teacher_forced(ref_eng, cand_eng, prompt_tokens, ref_answer, progress, cancel)
    records = [TokenRecord(index=k, token=int(t), text=texts[k], kl=float(m.kl[k]), top1_match=bool(m.top1[k]),
                           top5_overlap=float(m.top5[k]), p_ref=float(m.p_ref[k]), p_cand=float(m.p_cand[k]))
               for k, t in enumerate(ref_answer)]
    opens = prep.starts_in_reasoning
    rs_split = split_reasoning(ref_reply.text, starts_in_reasoning=opens)
    cs_split = split_reasoning(cand_reply.text, starts_in_reasoning=opens)
    return CompareResult(
        reference=ModelSummary.of(ref_info), candidate=ModelSummary.of(cand_info), prompt=prompt, n_ctx=ref_n_ctx,
        prompt_tokens=list(prompt_tokens), reference_text=ref_reply.text, candidate_text=cand_reply.text,
        reference_reasoning=rs_split.reasoning, reference_answer=rs_split.answer,
        candidate_reasoning=cs_split.reasoning, candidate_answer=cs_split.answer,
        reference_finish=ref_reply.finish_reason, candidate_finish=cand_reply.finish_reason,
        reference_tokens=list(ref_reply.tokens), candidate_tokens=list(cand_reply.tokens),
        first_divergence=first_divergence(ref_reply.tokens, cand_reply.tokens),
        summary=Summary.of(m.kl, m.top1, m.top5, m.nll_ref, m.nll_cand), tokens=records, warnings=warnings)
