"""The inference engine: one loaded GGUF model (llama-cpp-python) and chat with it.

One :class:`Engine` owns one ``llama_cpp.Llama``; it is not thread-safe (one owner -- in the GUI, one worker
thread -- per loaded model; a second concurrent call raises :class:`EngineBusyError`).  ``close()`` frees the
model (the engine is also a context manager).

* Loading checks the file first (exists, GGUF magic, readable header, fits in RAM) and turns every failure into
  :class:`~app.core.errors.ModelLoadError` saying what to do.
* The context size is rounded up to a multiple of 256 (:func:`~app.core.llama_runtime.context_size`) before
  llama.cpp sees it: llama.cpp pads ``n_ctx`` so itself, while llama-cpp-python sizes its token buffer for the
  number asked, so an unrounded size (64, 300) let generation run past that buffer (tokens silently dropped, then
  a numpy broadcast error).  ``Engine.n_ctx`` is the rounded size; nonsense sizes raise
  :class:`~app.core.errors.EngineSettingError`.
* ``backend`` is ``"CPU"``, or ``"CUDA"``/``"Metal"``/``"Vulkan"``/... when this llama.cpp build offloads to a
  GPU; ``n_gpu_layers > 0`` on a CPU-only build raises :class:`~app.core.errors.GpuUnavailableError`.
* llama.cpp's log goes to the ``logging`` logger ``"app.core.llama_cpp"`` (a ctypes callback installed with
  ``llama_log_set``), never to the terminal.
* :meth:`Engine.chat` renders the model's own chat template (from the GGUF metadata, in a Jinja2 sandbox: see
  :mod:`app.core.chat_template`), streams tokens through :class:`~app.core.thinking.ThinkingParser`, can be
  cancelled at any token, and returns a :class:`Reply` with the reasoning and the answer apart, why it stopped,
  and timings.  Earlier assistant turns are sent without their reasoning (DeepSeek's guidance for R1).  The reply
  may use all the context the prompt leaves; only when the prompt leaves less than ``min(max_tokens, n_ctx // 4)``
  are the oldest turns after the system prompt left out, and the reply says so (and says when it was cut
  because the context ended).
* Across turns llama-cpp-python's KV cache is reused for the common prefix of the previous and the new prompt
  (``Llama.generate`` does the prefix match), so a follow-up question evaluates only the new tokens.
"""
from __future__ import annotations

import codecs
import ctypes
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import backends
from .chat_template import ChatTemplate
from .chat_types import (
    FinishReason,
    Message,
    MessageLike,
    ModelInfo,
    OnText,
    PreparedPrompt,
    Reply,
    ReplyStats,
    Role,
    SamplingSettings,
    as_message,
    split_turns,
)
from .errors import (
    ChatTemplateError,
    ContextOverflowError,
    EngineBusyError,
    EngineError,
    EngineSettingError,
    ModelLoadError,
)
from .gguf_header import GGUFHeader, read_header
from .llama_runtime import (
    MAX_N_CTX,
    available_memory,
    clear_recent_problems,
    context_size,
    gpu_backend,
    install_llama_log_handler,
    load_failure_reason,
    total_memory,
)
from .load_options import FLASH_ATTN_CHOICES, KV_CACHE_TYPES, LoadOptions
from .thinking import ThinkingParser, prompt_opens_thinking
from .units import format_size

log = logging.getLogger(__name__)
DEFAULT_SETTINGS = SamplingSettings()   # DeepSeek-R1's recommended sampling


__all__ = ["DEFAULT_SETTINGS", "MAX_N_CTX", "Engine", "FinishReason", "Message", "MessageLike", "ModelInfo", "OnText",
           "PreparedPrompt", "Reply", "ReplyStats", "Role", "SamplingSettings", "context_size",
           "gpu_backend", "install_llama_log_handler"]


def resolve_attention(options: LoadOptions, *, offloaded: bool) -> tuple[str, str]:
    """The flash-attention mode ("on"/"off") and KV cache type a load really uses.  llama-cpp-python can only
    say on or off, so "auto" is decided here: on when layers are offloaded to a GPU (where it saves memory and
    time), off on the CPU (llama-cpp-python's default; figures comparable with ``llama-perplexity -fa off``).
    A q8_0 KV cache needs flash attention (llama.cpp refuses a quantized V cache without it)."""
    fa, kv = options.flash_attn, options.kv_cache_type
    if fa not in FLASH_ATTN_CHOICES:
        raise EngineSettingError(f"flash attention {fa!r} is not one of {', '.join(FLASH_ATTN_CHOICES)}")
    if kv not in KV_CACHE_TYPES:
        raise EngineSettingError(f"KV cache type {kv!r} is not one of {', '.join(KV_CACHE_TYPES)}")
    if fa == "auto":
        fa = "on" if offloaded or kv != "f16" else "off"
    if kv != "f16" and fa == "off":
        raise EngineSettingError(f"a {kv} KV cache needs flash attention: set flash attention to auto or on, or "
                                 "use an f16 KV cache")
    return fa, kv


class Engine:
    """One loaded model.  See the module docstring.

    ``model_path``: a GGUF file.  ``n_ctx``: context window (tokens) for this load (0 = the trained length),
    rounded up to a multiple of 256 (:func:`~app.core.llama_runtime.context_size`; :attr:`n_ctx` is the size in
    effect).
    ``n_threads``: CPU threads (``None`` = llama.cpp's default).  ``n_gpu_layers``: layers to offload (``-1`` =
    all; needs a GPU build).  ``use_mmap``: map the file instead of reading it into RAM.  ``seed``: default seed
    for sampling (``SamplingSettings.seed`` overrides it).  ``vocab_only``: load only the tokenizer and metadata
    (rendering/tokenizing, no generation).  ``options``: the app's one set of load settings
    (:class:`~app.core.load_options.LoadOptions`; its threads, GPU layers and mmap replace the keywords above;
    flash attention and KV cache type: :func:`resolve_attention`, the values in effect are :attr:`flash_attn`
    and :attr:`kv_cache_type`).
    """

    def __init__(self, model_path: str | Path, *, n_ctx: int = 4096, n_threads: int | None = None,
                 n_gpu_layers: int = 0, use_mmap: bool = True, seed: int | None = None,
                 vocab_only: bool = False, options: LoadOptions | None = None) -> None:
        if options is not None:       # the one set of load settings wins over the single keywords
            n_threads, n_gpu_layers, use_mmap = options.n_threads, options.n_gpu_layers, options.use_mmap
        else:
            options = LoadOptions(n_threads=n_threads, n_gpu_layers=n_gpu_layers, use_mmap=use_mmap)
        self._lock = threading.Lock()
        self._llama: Any = None
        self._path = Path(model_path)
        self._seed = seed
        context_size(n_ctx)                     # nonsense sizes fail before any file is read
        self._header: GGUFHeader = read_header(self._path)
        n_ctx = context_size(n_ctx, int(self._header.arch_value("context_length", 0) or 0))
        # The devices of this load (app.core.backends): none for n_gpu_layers=0 (CPU only), else GPU module
        # devices and RPC workers; GpuUnavailableError when layers are asked for and there is no such device.
        self._options = options
        self._plan = backends.plan(options) if not vocab_only else backends.LoadPlan()
        self._backend = self._plan.backend
        self.load_report = backends.LoadReport()
        self.flash_attn, self.kv_cache_type = resolve_attention(options, offloaded=self._backend != "CPU")
        if not vocab_only:
            self._check_fits_in_ram(use_mmap)
        self._llama = self._load(n_ctx=n_ctx, n_threads=n_threads, n_gpu_layers=n_gpu_layers,
                                 use_mmap=use_mmap, vocab_only=vocab_only)
        self._vocab_only = vocab_only
        import llama_cpp

        self._vocab = self._llama._model.vocab
        self._piece_buf = ctypes.create_string_buffer(64)
        state: dict[str, threading.Event | None] = {"event": None}     # no reference back to self: no cycle
        self._abort_state = state
        self._abort_cb = llama_cpp.ggml_abort_callback(
            lambda _data: bool(state["event"] is not None and state["event"].is_set()))
        self._is_eog = llama_cpp.llama_vocab_is_eog
        model = self._llama._model
        bos, eos = self._llama.token_bos(), self._llama.token_eos()
        self._add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab)) and bos >= 0
        self._template = ChatTemplate(self._header.metadata.get("tokenizer.chat_template"),
                                      bos_token=model.token_get_text(bos) if bos >= 0 else "",
                                      eos_token=model.token_get_text(eos) if eos >= 0 else "")
        if self._template.is_fallback:
            log.warning("%s has no chat template; using ChatML", self._path.name)
        self._info = self._make_info()
        log.info("loaded %s (%s, %s, n_ctx=%d, backend %s)", self._path.name, self._info.architecture,
                 self._info.file_type, self.n_ctx, self._backend)

    def _check_fits_in_ram(self, use_mmap: bool) -> None:
        """Without mmap the whole file is read into memory: it must fit in the memory available now.  With mmap
        the pages are read on demand and can be evicted, but every token touches every weight: a model larger
        than all of the machine's RAM would re-read the disk for each token (minutes per token), so it is
        refused too.  (With GPU offload the weights live in GPU memory: not checked here.)"""
        need = self._header.file_size
        if use_mmap:
            total = total_memory() if self._backend == "CPU" else None
            if total is not None and need > total:
                raise ModelLoadError(
                    f"{self._path.name} is {format_size(need)} but this machine has only {format_size(total)} of "
                    f"RAM in all: it cannot run usefully here (every token would read the file from disk again). "
                    f"Choose a smaller quantization of the model (fewer bits per weight), or a smaller model")
            return
        avail = available_memory()
        if avail is not None and need > avail:
            raise ModelLoadError(
                f"{self._path.name} needs {format_size(need)} of memory to load without memory mapping, but "
                f"only {format_size(avail)} is available: turn memory mapping on, close other programs, or "
                f"choose a smaller quantization")

    def _load(self, *, n_ctx: int, n_threads: int | None, n_gpu_layers: int, use_mmap: bool,
              vocab_only: bool) -> Any:
        import llama_cpp

        install_llama_log_handler()
        clear_recent_problems()
        seed = self._seed if self._seed is not None else llama_cpp.LLAMA_DEFAULT_SEED
        try:
            kv = llama_cpp.GGML_TYPE_Q8_0 if self.kv_cache_type == "q8_0" else llama_cpp.GGML_TYPE_F16
            with backends.model_devices(self._plan), backends.capture_load_report() as self.load_report:
                return llama_cpp.Llama(str(self._path), n_ctx=n_ctx, n_threads=n_threads,
                                       n_threads_batch=n_threads, n_gpu_layers=n_gpu_layers, use_mmap=use_mmap,
                                       vocab_only=vocab_only, seed=seed, verbose=False,
                                       flash_attn=self.flash_attn == "on", type_k=kv, type_v=kv,
                                       tensor_split=list(self._options.tensor_split) or None)
        except (ValueError, RuntimeError, OSError) as e:
            why = load_failure_reason(str(e).rstrip("."))
            arch = self._header.architecture
            about = "" if arch in why else f" (architecture {arch!r})"
            raise ModelLoadError(
                f"llama.cpp could not load {self._path.name}{about}: {why}; if the architecture is new, update "
                f"DistillDesk, otherwise download or convert the model again") from None
        except Exception as e:
            from jinja2 import TemplateError  # llama-cpp-python compiles every chat template the file holds

            if not isinstance(e, TemplateError):
                raise
            raise ChatTemplateError(f"the chat template in {self._path.name} is not valid Jinja ({e}): the GGUF's "
                                    f"tokenizer.chat_template is damaged; convert the model again") from None

    def _make_info(self) -> ModelInfo:
        import llama_cpp

        h = self._header
        n_params = h.n_params or int(llama_cpp.llama_model_n_params(self._llama._model.model))
        return ModelInfo(path=self._path, architecture=h.architecture,
                         name=str(h.metadata.get("general.name") or self._path.stem),
                         file_type=h.file_type_name, size_bytes=h.file_size,
                         n_params=n_params, context_length=int(h.arch_value("context_length", 0) or 0),
                         vocab_size=int(self._llama.n_vocab()), chat_template=self._template.source
                         if not self._template.is_fallback else None, n_ctx=self.n_ctx, backend=self._backend,
                         offload=self.load_report.summary() if self._plan.devices else "",
                         workers=self._plan.endpoints)

    # ---- facts ------------------------------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        """``"CPU"`` or the GPU backend layers are offloaded to."""
        return self._backend

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def n_ctx(self) -> int:
        return int(self._live().n_ctx())

    @property
    def llama(self) -> Any:
        """The underlying ``llama_cpp.Llama`` (for app.core.compare's teacher-forced evaluation).  Do not keep it
        past :meth:`close`."""
        return self._live()

    @property
    def chat_template(self) -> ChatTemplate:
        return self._template

    def _live(self) -> Any:
        if self._llama is None:
            raise EngineError("the model was closed: load it again")
        return self._llama

    # ---- text <-> tokens --------------------------------------------------------------------------------------
    def tokenize(self, text: str, *, special: bool = True, add_bos: bool = False) -> list[int]:
        """Tokens of ``text``; ``special=True`` parses special-token text (``<|im_start|>``) as those tokens."""
        return list(self._live().tokenize(text.encode("utf-8"), add_bos=add_bos, special=special))

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self._live().detokenize(list(tokens)).decode("utf-8", errors="replace")

    def render_prompt(self, messages: Sequence[MessageLike], *, add_generation_prompt: bool = True) -> str:
        """The conversation as the model's chat template writes it (assistant reasoning left out)."""
        msgs = [as_message(m) for m in messages]
        return self._template.render([{"role": m.role, "content": m.content} for m in msgs],
                                     add_generation_prompt=add_generation_prompt)

    def _prompt_tokens(self, text: str) -> list[int]:
        toks = self.tokenize(text, special=True)
        bos = self._llama.token_bos()
        if self._add_bos and (not toks or toks[0] != bos):   # the template did not write the BOS itself
            toks.insert(0, bos)
        return toks

    def render_tokens(self, messages: Sequence[MessageLike]) -> PreparedPrompt:
        """The whole conversation rendered and tokenized, nothing left out (its length is not checked)."""
        text = self.render_prompt(messages)
        return PreparedPrompt(text, tuple(self._prompt_tokens(text)), 0, prompt_opens_thinking(text))

    def reply_room(self, max_tokens: int) -> int:
        """The least room a prompt must leave for the reply: ``max_tokens``, but at most a quarter of the
        context (so a small context still answers; the reply then stops where the context ends)."""
        return max(0, min(max_tokens, self.n_ctx // 4))

    def prepare(self, messages: Sequence[MessageLike], *, max_tokens: int) -> PreparedPrompt:
        """Render and tokenize, leaving out the oldest turns (after the system prompt) until the prompt leaves
        :meth:`reply_room` tokens of the context; the reply may then use all the context has left.  Raises
        ContextOverflowError when even the last user message does not fit."""
        msgs = [as_message(m) for m in messages]
        if not msgs or msgs[-1].role != "user":
            raise ValueError("the conversation must end with a user message")
        system, turns = split_turns(msgs)
        room = self.reply_room(max_tokens)
        for dropped in range(len(turns)):
            prep = self.render_tokens(([system] if system else []) + [m for t in turns[dropped:] for m in t])
            if len(prep.tokens) + room <= self.n_ctx:
                return PreparedPrompt(prep.text, prep.tokens, dropped, prep.starts_in_reasoning)
        what = "the last message and the system prompt take" if system else "the last message takes"
        lower = ", lower the maximum reply length" if room < self.n_ctx // 4 else ""
        raise ContextOverflowError(
            f"{what} {len(prep.tokens)} tokens, which leaves less than {room} tokens for the reply in a context "
            f"of {self.n_ctx}: shorten the message{lower}, or load the model with a larger context")

    # ---- generation -------------------------------------------------------------------------------------------
    def chat(self, messages: Sequence[MessageLike], *, settings: SamplingSettings = DEFAULT_SETTINGS,
             on_text: OnText | None = None, cancel: threading.Event | None = None) -> Reply:
        """Answer the conversation (its last message is the user's).  ``on_text`` gets each decided piece of
        reasoning/answer text as it streams (a :class:`~app.core.thinking.Segment`); setting ``cancel`` stops at
        the next token and returns the partial reply with ``finish_reason="cancelled"``."""
        with self._busy():
            t0 = time.perf_counter()
            prep = self.prepare(messages, max_tokens=settings.max_tokens)
            parser = ThinkingParser(starts_in_reasoning=prep.starts_in_reasoning)

            def sink(piece: str, n_tokens: int) -> None:
                for seg in parser.feed(piece, tokens=n_tokens):
                    if on_text is not None:
                        on_text(seg)

            run = self._generate(prep.tokens, settings, sink, cancel, t0)
            for seg in parser.flush():
                if on_text is not None:
                    on_text(seg)
            th = parser.finish()
            stats = run.stats(len(prep.tokens), th.reasoning_tokens, th.reasoning_seconds)
            notes = []
            if prep.dropped_turns:
                notes.append(f"The conversation is longer than the model's context ({self.n_ctx} tokens): the "
                             f"oldest {prep.dropped_turns} turn{'s' if prep.dropped_turns > 1 else ''} "
                             f"{'were' if prep.dropped_turns > 1 else 'was'} left out of this reply's context.")
            if run.context_full:
                notes.append(f"The reply was cut where the context ({self.n_ctx} tokens) ends: start a new "
                             f"conversation, or load the model with a larger context.")
            return Reply(text=run.text, reasoning=th.reasoning, answer=th.answer, finish_reason=run.finish,
                         stats=stats, unterminated=th.unterminated, skipped_reasoning=th.skipped_reasoning,
                         dropped_turns=prep.dropped_turns, notice=" ".join(notes) or None,
                         context_full=run.context_full, tokens=tuple(run.tokens))

    def complete(self, prompt: str | Sequence[int], *, settings: SamplingSettings = DEFAULT_SETTINGS,
                 on_text: Callable[[str], None] | None = None, cancel: threading.Event | None = None) -> Reply:
        """Plain continuation of ``prompt`` (text, or tokens), no chat template and no reasoning split
        (``answer == text``).  Like :meth:`chat`, refused only when the prompt leaves less than
        :meth:`reply_room`; the continuation stops where the context ends (``context_full``)."""
        with self._busy():
            t0 = time.perf_counter()
            toks = self._prompt_tokens(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
            room = self.reply_room(settings.max_tokens)
            if len(toks) + room > self.n_ctx:
                raise ContextOverflowError(
                    f"the prompt takes {len(toks)} tokens, which leaves less than {room} tokens for the reply in a "
                    f"context of {self.n_ctx}: shorten the prompt, or load the model with a larger context")
            show = on_text or (lambda _s: None)
            run = self._generate(toks, settings, lambda piece, _n: show(piece), cancel, t0)
            return Reply(text=run.text, reasoning="", answer=run.text, finish_reason=run.finish,
                         stats=run.stats(len(toks), 0, 0.0), context_full=run.context_full,
                         tokens=tuple(run.tokens))

    def _busy(self) -> Any:
        engine = self

        class _Guard:
            def __enter__(self) -> None:
                engine._live()
                if engine._vocab_only:
                    raise EngineError("this model was loaded for its vocabulary only: load it fully to generate")
                if not engine._lock.acquire(blocking=False):
                    raise EngineBusyError("the model is already answering: wait for the reply or stop it first")

            def __exit__(self, *exc: object) -> None:
                engine._lock.release()

        return _Guard()

    def _generate(self, tokens: Sequence[int], settings: SamplingSettings, sink: Callable[[str, int], None],
                  cancel: threading.Event | None, t0: float) -> _Run:
        """The token loop.  Kept lean: it is the decode hot path measured by benchmarks/bench_engine.py."""
        import llama_cpp

        llama = self._llama
        run = _Run(t0=t0, prompt_evaluated=len(tokens) - self._cached_prefix(tokens))
        seed = settings.seed if settings.seed is not None else self._seed
        llama.set_seed(seed if seed is not None else llama_cpp.LLAMA_DEFAULT_SEED)
        temp = 0.0 if settings.greedy else settings.temperature
        budget = min(settings.max_tokens, self.n_ctx - len(tokens))
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        vocab, is_eog, detok = self._vocab, self._is_eog, self._piece
        pending = 0
        gen = llama.generate(tokens, top_k=settings.top_k, top_p=settings.top_p, min_p=settings.min_p,
                             typical_p=1.0, temp=temp, repeat_penalty=settings.repeat_penalty, reset=True,
                             logits_processor=self._hesitation_penalty(settings.overthinking_penalty))
        try:
            tok = self._first_token(gen, cancel)        # evaluates the prompt; None if cancelled meanwhile
            if tok is None:
                run.finish = "cancelled"
            while tok is not None:
                run.t_last = time.perf_counter()
                if run.t_first is None:
                    run.t_first = run.t_last
                run.yielded += 1
                if is_eog(vocab, tok):
                    run.finish = "stop"
                    break
                run.tokens.append(tok)
                pending += 1                     # tokens whose bytes are not yet shown (split UTF-8 characters)
                piece = decoder.decode(detok(tok))
                if piece:
                    run.parts.append(piece)
                    sink(piece, pending)
                    pending = 0
                if cancel is not None and cancel.is_set():
                    run.finish = "cancelled"
                    break
                if len(run.tokens) >= budget:
                    run.finish = "length"
                    run.context_full = budget < settings.max_tokens     # the context ended, not max_tokens
                    break
                tok = next(gen)
        finally:
            gen.close()
        tail = decoder.decode(b"", final=True)
        if tail:
            run.parts.append(tail)
            sink(tail, pending)
        return run

    def _hesitation_penalty(self, penalty: float) -> Any:
        """The overthinking penalty as a llama-cpp-python logits processor (None when off)."""
        if not penalty:
            return None
        import llama_cpp

        from .probes.penalty import HesitationPenalty

        return llama_cpp.LogitsProcessorList([HesitationPenalty.for_vocab(
            lambda t: self.tokenize(t, special=False), penalty)])

    def _first_token(self, gen: Any, cancel: threading.Event | None) -> int | None:
        """Run the generator to its first token.  That evaluates the prompt, which can take minutes for a long
        prompt on a big model, so llama.cpp's abort callback watches ``cancel`` meanwhile (only meanwhile: it is
        called after every graph node, too costly to leave on while decoding)."""
        import llama_cpp

        if cancel is None:
            return next(gen)
        ctx = self._llama._ctx.ctx
        self._abort_state["event"] = cancel
        llama_cpp.llama_set_abort_callback(ctx, self._abort_cb, None)
        try:
            return next(gen)
        except RuntimeError as e:                 # llama_decode returned 2: aborted
            if cancel.is_set():
                return None
            raise EngineError(f"llama.cpp failed while reading the prompt ({e})") from None
        finally:
            llama_cpp.llama_set_abort_callback(ctx, llama_cpp.ggml_abort_callback(), None)
            self._abort_state["event"] = None

    def _piece(self, token: int) -> bytes:
        """The bytes of one token (control tokens such as end-of-sequence give b"").  llama-cpp-python's own
        ``token_to_piece`` returns a fixed 32-byte buffer, NULs included, so this calls llama.cpp directly."""
        import llama_cpp

        n = llama_cpp.llama_token_to_piece(self._vocab, token, self._piece_buf, len(self._piece_buf), 0, False)
        if n < 0:                                  # the buffer is too small: -n is the size needed
            self._piece_buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, self._piece_buf, -n, 0, False)
        return self._piece_buf.raw[:n]

    def _cached_prefix(self, tokens: Sequence[int]) -> int:
        """How many leading prompt tokens llama-cpp-python will take from its KV cache (it keeps at least one
        token to evaluate); mirrors the prefix match in ``Llama.generate``."""
        cached = self._llama.input_ids[: self._llama.n_tokens]
        n = 0
        for a, b in zip(cached, tokens, strict=False):
            if a != b:
                break
            n += 1
        return min(n, max(len(tokens) - 1, 0))

    # ---- lifetime ---------------------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._llama is None

    def close(self) -> None:
        """Free the model and its context.  Idempotent; refused while a reply is being generated."""
        if self._llama is None:
            return
        if not self._lock.acquire(blocking=False):
            raise EngineBusyError("the model is answering: stop the reply before closing the model")
        try:
            llama, self._llama = self._llama, None
            llama.close()
            backends.release(self._plan)
        finally:
            self._lock.release()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if getattr(self, "_llama", None) is not None and not self._lock.locked():
                self.close()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass


@dataclass
class _Run:
    """Bookkeeping of one generation."""

    t0: float
    prompt_evaluated: int
    t_first: float | None = None
    t_last: float = 0.0
    yielded: int = 0
    finish: FinishReason = "length"
    context_full: bool = False
    tokens: list[int] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def stats(self, prompt_tokens: int, reasoning_tokens: int, reasoning_s: float) -> ReplyStats:
        now = time.perf_counter()
        ttft = (self.t_first - self.t0) if self.t_first is not None else 0.0
        prompt_s = ttft
        decode_s = (self.t_last - self.t_first) if self.t_first is not None else 0.0
        return ReplyStats(
            time_to_first_token_s=ttft, prompt_tokens=prompt_tokens, prompt_tokens_evaluated=self.prompt_evaluated,
            prompt_tokens_per_s=self.prompt_evaluated / prompt_s if prompt_s > 0 else 0.0,
            generated_tokens=len(self.tokens),
            decode_tokens_per_s=(self.yielded - 1) / decode_s if decode_s > 0 and self.yielded > 1 else 0.0,
            total_s=now - self.t0, reasoning_tokens=reasoning_tokens, reasoning_s=reasoning_s)
