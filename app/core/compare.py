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

One model in memory at a time, in two phases:

1. **reference**: the reference answers greedily, its answer is teacher-forced and its raw float32 logits at the
   scored rows are written to the reference store (:class:`app.core.refstore.RefStore`), then it is unloaded;
2. **candidate**: the candidate is loaded alone, answers greedily, is teacher-forced on the reference's tokens
   and scored batch by batch against the stored rows (:func:`app.core.logits.score_rows`).

The store's key is the reference file's identity, the prompt tokens, the answer budget, the context and the
settings that change logits, so a second comparison against the same reference and prompt skips phase 1
(``CompareResult.reference_cached``; ``use_cache=False`` forces a fresh reference).  Before each phase the model
must fit the memory available (:func:`check_fits`).
"""
from __future__ import annotations

import codecs
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CompareError, ContextOverflowError, GenerationCancelled, ModelLoadError, VocabMismatchError
from .gguf_header import GGUFHeader, file_type_name, read_header
from .load_options import LoadOptions
from .logits import LogitSource, TokenMetrics, score_rows, summarize
from .refstore import Entry, RefStore, file_identity, make_key

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 256
DEFAULT_N_CTX = 2048


@dataclass(frozen=True)
class Progress:
    """A progress report: ``stage`` in words, ``done`` of ``total`` units (tokens or chunks); ``phase``:
    "reference" or "candidate" (the model in memory); ``eta_s``: seconds left in this stage, when known."""

    stage: str
    done: int
    total: int
    phase: str = ""
    eta_s: float | None = None


class Reporter:
    """Adds the phase and an ETA (from the pace since the stage began) to progress reports."""

    def __init__(self, progress: ProgressFn | None, phase: str) -> None:
        self._progress, self.phase = progress, phase
        self._stage, self._t0 = "", 0.0

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self._progress is None:
            return
        now = time.perf_counter()
        if stage != self._stage:
            self._stage, self._t0 = stage, now
        eta = (now - self._t0) / done * (total - done) if 0 < done <= total else None
        self._progress(Progress(stage, done, total, self.phase, eta))


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
    def of(cls, m: TokenMetrics) -> Summary:
        return cls(**summarize(m))


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
    reference_cached: bool = False       # the reference's answer and rows came from the store (phase 1 skipped)
    load: dict[str, Any] = field(default_factory=dict)   # the settings that change logits, as used

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
    """Score ``tokens`` under two loaded models: the reference's rows ``first .. len(tokens)-2`` are copied out
    (small sequences only: tests and checks; :func:`compare` stores them on disk instead), then the candidate is
    scored against them by :func:`app.core.logits.score_rows`, the path compare and eval use.  Returns the
    per-row metrics and the row positions."""
    cand.n_batch = ref.n_batch = min(ref.n_batch, cand.n_batch)
    rows = np.concatenate([r.copy() for _, r in ref.rows(tokens, first, cancel=cancel)])
    m = score_rows(lambda k0, n: rows[k0:k0 + n], cand, tokens, first, cancel=cancel, on_rows=on_rows)
    return m, np.arange(first, first + len(m.kl))


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
            on_text: Callable[[str], None] | None, report: Reporter, cancel: threading.Event | None) -> Any:
    from .engine import SamplingSettings

    count = [0]

    def piece(text: str) -> None:
        count[0] += 1
        if on_text is not None:
            on_text(text)
        report(f"{who} answer", min(count[0], max_tokens), max_tokens)

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


def load_options(options: LoadOptions | None, threads: int | None) -> LoadOptions:
    """The load settings of a run: ``options`` (``threads``, when given, replaces its thread count)."""
    options = options or LoadOptions()
    return dataclasses.replace(options, n_threads=threads) if threads is not None else options


def logit_settings(options: LoadOptions) -> dict[str, Any]:
    """What a stored reference must share with the candidate's run: the settings that change logits, as they
    are really used (``auto`` decided as the Engine decides it), and whether layers are offloaded."""
    from .engine import resolve_attention

    fa, kv = resolve_attention(options, offloaded=bool(options.n_gpu_layers))
    return {**options.logit_key(), "flash_attn": fa, "kv_cache_type": kv, "gpu": bool(options.n_gpu_layers),
            "devices": list(options.devices), "rpc": bool(options.rpc_workers)}


def check_fits(info: GGUFHeader, role: str, options: LoadOptions) -> None:
    """Refuse, before loading, a model that does not fit the memory available now (CPU loads; with GPU offload
    llama.cpp checks the device memory itself).  The message names the ways out."""
    from .llama_runtime import available_memory
    from .units import format_size

    avail = available_memory()
    need = info.file_size
    if options.n_gpu_layers or avail is None or need <= avail:
        return
    ways = ["offload layers to a GPU (GPU layers in Settings, or --gpu-layers)"]
    if role == "reference" and file_type_name(info.file_type) in ("F16", "BF16", "F32"):
        ways.append("use a Q8_0 of the model as the reference (its mean KL against F16 is usually below 0.001, "
                    "so the figures barely move)")
    ways += ["use a smaller context (Settings, or --ctx)", "close other programs"]
    raise ModelLoadError(f"the {role} {info.path.name} needs {format_size(need)} of memory but only "
                         f"{format_size(avail)} is available: " + "; or ".join(ways))


def _reference_phase(path: Path, options: LoadOptions, n_ctx: int, prompt_tokens: list[int], budget: int,
                     store: RefStore, key: str, on_text: Callable[[str], None] | None, report: Reporter,
                     cancel: threading.Event | None) -> Entry:
    """Phase 1: the reference alone answers, is teacher-forced on its answer, and its raw logits at the scored
    rows go to the store (written under a temporary name; cancel leaves nothing)."""
    from .engine import Engine

    with Engine(path, n_ctx=n_ctx, options=options) as eng:
        reply = _greedy(eng, prompt_tokens, budget, "reference", on_text, report, cancel)
        answer = _answer_tokens(eng, reply)[:eng.n_ctx - len(prompt_tokens)]
        seq, first = prompt_tokens + answer, len(prompt_tokens) - 1
        meta: dict[str, Any] = {"kind": "compare", "reference": str(path)}
        with store.writing(key, meta) as folder, LogitSource(eng.llama) as src:
            with open(folder / "rows.f32", "wb") as fh:
                for i0, r in src.rows(seq, first, cancel=cancel):
                    fh.write(memoryview(np.ascontiguousarray(r, dtype="<f4")))     # no copy of the batch
                    report("reference distributions", i0 + len(r) - first, len(answer))
            _check_cancel(cancel)               # asked for while the last rows were written: store nothing
            meta.update(text=reply.text, tokens=list(reply.tokens), finish=reply.finish_reason, answer=answer,
                        texts=token_texts(src, answer), n_vocab=src.n_vocab, n_batch=src.n_batch, n_ctx=eng.n_ctx)
    return store.get(key) or Entry(folder, meta)


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise GenerationCancelled("cancelled")


def _stored_rows(entry: Entry) -> tuple[Any, int] | None:
    """The store's rows file (opened) and its row width, or None when it is missing or not the size it says."""
    m, f = entry.meta, entry.file("rows.f32")
    try:
        if f.stat().st_size != 4 * int(m["n_vocab"]) * len(m["answer"]):
            return None
        return open(f, "rb"), int(m["n_vocab"])  # noqa: SIM115 - closed by the caller
    except (OSError, KeyError, TypeError, ValueError):
        return None


def _candidate_phase(path: Path, options: LoadOptions, n_ctx: int, prompt_tokens: list[int], budget: int,
                     entry: Entry, fh: Any, on_text: Callable[[str], None] | None, report: Reporter,
                     cancel: threading.Event | None) -> tuple[Any, TokenMetrics]:
    """Phase 2: the candidate alone answers, then is scored on the reference's tokens against the stored rows."""
    from .engine import Engine

    answer, n_vocab = entry.meta["answer"], int(entry.meta["n_vocab"])
    seq, first = prompt_tokens + answer, len(prompt_tokens) - 1

    def ref_rows(k0: int, n: int) -> np.ndarray:
        fh.seek(4 * n_vocab * k0)
        return np.fromfile(fh, dtype="<f4", count=n * n_vocab).reshape(n, n_vocab)

    with Engine(path, n_ctx=n_ctx, options=options) as eng:
        reply = _greedy(eng, prompt_tokens, budget, "candidate", on_text, report, cancel)
        with LogitSource(eng.llama, n_batch=int(entry.meta["n_batch"])) as src:
            m = score_rows(ref_rows, src, seq, first, cancel=cancel,
                           on_rows=lambda done: report("scoring", done, len(answer)))
    return reply, m


def compare(reference: str | Path, candidate: str | Path, prompt: str, *, max_tokens: int = DEFAULT_MAX_TOKENS,
            n_ctx: int = DEFAULT_N_CTX, threads: int | None = None, options: LoadOptions | None = None,
            use_cache: bool = True, store: RefStore | None = None, progress: ProgressFn | None = None,
            cancel: threading.Event | None = None, on_reference_text: Callable[[str], None] | None = None,
            on_candidate_text: Callable[[str], None] | None = None) -> CompareResult:
    """Compare ``candidate`` with ``reference`` on ``prompt`` (a user message).  See the module docstring.

    ``options``: the load settings of both phases (``threads`` replaces its thread count).  ``use_cache=False``
    computes the reference afresh (and stores it).  ``on_reference_text``/``on_candidate_text`` receive the
    answers' text as it streams (a stored reference's text arrives in one piece).  Raises
    :class:`~app.core.errors.VocabMismatchError` (different vocabularies),
    :class:`~app.core.errors.ContextOverflowError` (the prompt does not fit in ``n_ctx``),
    :class:`~app.core.errors.ModelLoadError` (missing, non-GGUF, truncated, unsupported architecture, does not fit
    the memory available) and :class:`~app.core.errors.GenerationCancelled` when ``cancel`` is set.
    """
    from .engine import Engine, Message
    from .llama_runtime import context_size
    from .thinking import split_reasoning

    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    if not prompt.strip():
        raise CompareError("the prompt is empty: type the message both models should answer")
    options = load_options(options, threads)
    ref_info, cand_info = read_header(reference), read_header(candidate)
    warnings = check_comparable(ref_info, cand_info)
    ctx = context_size(n_ctx, int(ref_info.arch_value("context_length", 0) or 0))
    with Engine(reference, n_ctx=n_ctx, vocab_only=True) as voc:       # the prompt's tokens, without the weights
        prep = voc.render_tokens([Message("user", prompt)])
    prompt_tokens = list(prep.tokens)
    if len(prompt_tokens) >= ctx:          # not even one answer token would fit
        raise ContextOverflowError(
            f"the prompt takes {len(prompt_tokens)} tokens but the context holds {ctx}: shorten the "
            f"prompt or raise the context size (--ctx)")
    budget = min(max_tokens, ctx - len(prompt_tokens))
    load = logit_settings(options)
    store = store or RefStore()
    key = make_key(kind="compare", ref=file_identity(reference), prompt=prompt_tokens, budget=budget, n_ctx=ctx,
                   load=load, version=1)
    entry = store.get(key) if use_cache else None
    opened = _stored_rows(entry) if entry is not None else None
    cached = opened is not None
    if not cached:
        check_fits(ref_info, "reference", options)
        entry = _reference_phase(Path(reference), options, n_ctx, prompt_tokens, budget, store, key,
                                 on_reference_text, Reporter(progress, "reference"), cancel)
        opened = _stored_rows(entry)
        if opened is None:
            raise CompareError(f"the stored reference in {entry.folder} could not be read back: check the disk "
                               "(space, permissions) and compare again")
    else:
        log.info("compare: using the stored reference %s", entry.folder.name)
        if on_reference_text is not None and entry.meta["text"]:
            on_reference_text(entry.meta["text"])
    fh, _ = opened
    with fh:
        check_fits(cand_info, "candidate", options)
        cand_reply, m = _candidate_phase(Path(candidate), options, n_ctx, prompt_tokens, budget, entry, fh,
                                         on_candidate_text, Reporter(progress, "candidate"), cancel)
    meta = entry.meta
    answer, texts = meta["answer"], meta["texts"]
    records = [TokenRecord(index=k, token=int(t), text=texts[k], kl=float(m.kl[k]), top1_match=bool(m.top1[k]),
                           top5_overlap=float(m.top5[k]), p_ref=float(m.p_ref[k]), p_cand=float(m.p_cand[k]))
               for k, t in enumerate(answer)]
    opens = prep.starts_in_reasoning
    rs_split = split_reasoning(meta["text"], starts_in_reasoning=opens)
    cs_split = split_reasoning(cand_reply.text, starts_in_reasoning=opens)
    return CompareResult(
        reference=ModelSummary.of(ref_info), candidate=ModelSummary.of(cand_info), prompt=prompt,
        n_ctx=int(meta["n_ctx"]), prompt_tokens=list(prompt_tokens), reference_text=meta["text"],
        candidate_text=cand_reply.text, reference_reasoning=rs_split.reasoning, reference_answer=rs_split.answer,
        candidate_reasoning=cs_split.reasoning, candidate_answer=cs_split.answer,
        reference_finish=meta["finish"], candidate_finish=cand_reply.finish_reason,
        reference_tokens=list(meta["tokens"]), candidate_tokens=list(cand_reply.tokens),
        first_divergence=first_divergence(meta["tokens"], cand_reply.tokens), summary=Summary.of(m),
        tokens=records, warnings=warnings, reference_cached=cached, load=load)
