"""The inference engine: one loaded GGUF model (llama-cpp-python) and chat with it.

One :class:`Engine` owns one ``llama_cpp.Llama``; it is not thread-safe (one owner -- in the GUI, one worker
thread -- per loaded model; a second concurrent call raises :class:`EngineBusyError`).  ``close()`` frees the
model (the engine is also a context manager).

* Loading checks the file first (exists, GGUF magic, readable header, fits in RAM when mmap is off) and turns
  every failure into :class:`~app.core.errors.ModelLoadError` saying what to do.
* ``backend`` is ``"CPU"``, or ``"CUDA"``/``"Metal"``/``"Vulkan"``/... when this llama.cpp build offloads to a
  GPU; ``n_gpu_layers > 0`` on a CPU-only build raises :class:`~app.core.errors.GpuUnavailableError`.
* llama.cpp's log goes to the ``logging`` logger ``"app.core.llama_cpp"`` (a ctypes callback installed with
  ``llama_log_set``), never to the terminal.
* :meth:`Engine.chat` renders the model's own chat template (from the GGUF metadata, in a Jinja2 sandbox: see
  :mod:`app.core.chat_template`), streams tokens through :class:`~app.core.thinking.ThinkingParser`, can be
  cancelled at any token, and returns a :class:`Reply` with the reasoning and the answer apart, why it stopped,
  and timings.  Earlier assistant turns are sent without their reasoning (DeepSeek's guidance for R1); when the
  conversation does not fit, the oldest turns after the system prompt are left out and the reply says so.
* Across turns llama-cpp-python's KV cache is reused for the common prefix of the previous and the new prompt
  (``Llama.generate`` does the prefix match), so a follow-up question evaluates only the new tokens.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .thinking import Segment

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length", "cancelled"]

# DeepSeek's recommended R1 sampling: temperature 0.6, top-p 0.95, no other truncation.
R1_TEMPERATURE = 0.6
R1_TOP_P = 0.95


@dataclass(frozen=True)
class SamplingSettings:
    """How to pick tokens.  Defaults are DeepSeek-R1's recommendation.

    ``greedy=True`` always takes the most likely token (temperature/top-p are then ignored).
    ``seed``: a fixed seed makes sampling reproducible; ``None`` = a fresh random seed per reply.
    ``max_tokens``: the most tokens one reply may generate (reasoning included).
    """

    temperature: float = R1_TEMPERATURE
    top_p: float = R1_TOP_P
    top_k: int = 0                 # 0 = off
    min_p: float = 0.0             # 0 = off
    repeat_penalty: float = 1.0    # 1 = off
    max_tokens: int = 2048
    greedy: bool = False
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SamplingSettings:
        """Inverse of :meth:`to_dict`; unknown keys are ignored (settings saved by other versions)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Message:
    """One chat message.  ``reasoning`` (assistant only) is kept for display and history but is NOT sent back
    to the model in later turns."""

    role: Role
    content: str
    reasoning: str = ""


MessageLike = Message | Mapping[str, Any]   # dicts with "role" and "content" (and optional "reasoning") work too


@dataclass(frozen=True)
class ReplyStats:
    """Timings of one reply.  Rates are 0.0 when there was nothing to time."""

    time_to_first_token_s: float   # from the call to the first generated token
    prompt_tokens: int             # tokens of the whole rendered prompt
    prompt_tokens_evaluated: int   # of which were actually evaluated (the rest came from the KV cache)
    prompt_tokens_per_s: float     # prompt_tokens_evaluated / prompt time
    generated_tokens: int
    decode_tokens_per_s: float     # (generated_tokens - 1) / time from the first to the last token
    total_s: float
    reasoning_tokens: int = 0
    reasoning_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError


@dataclass(frozen=True)
class Reply:
    """What :meth:`Engine.chat` returns.

    ``text``: the raw generated text; ``reasoning``/``answer``: it split by the thinking parser.
    ``finish_reason``: ``"stop"`` (end-of-generation token), ``"length"`` (max_tokens or context full),
    ``"cancelled"`` (the cancel event was set; the partial text is kept).
    ``dropped_turns``: how many of the oldest turns were left out to fit the context; ``notice`` says so in words
    (``None`` when nothing was left out).
    """

    text: str
    reasoning: str
    answer: str
    finish_reason: FinishReason
    stats: ReplyStats
    unterminated: bool = False
    skipped_reasoning: bool = False
    dropped_turns: int = 0
    notice: str | None = None
    tokens: tuple[int, ...] = field(default=(), repr=False)

    def as_message(self) -> Message:
        """The assistant message to append to the conversation for the next turn."""
        return Message("assistant", self.answer, self.reasoning)


@dataclass(frozen=True)
class ModelInfo:
    """What the GGUF says about itself (plus how it was loaded)."""

    path: Path
    architecture: str
    name: str
    file_type: str                 # e.g. "Q4_K_M", "F16" ("unknown" when the file does not say)
    size_bytes: int
    n_params: int
    context_length: int            # trained context length
    vocab_size: int
    chat_template: str | None
    n_ctx: int                     # context of this load
    backend: str


@dataclass(frozen=True)
class PreparedPrompt:
    """A conversation rendered and tokenized to fit the context (see :meth:`Engine.prepare`)."""

    text: str
    tokens: tuple[int, ...]
    dropped_turns: int
    starts_in_reasoning: bool      # the rendered prompt ends inside an open <think> block


OnText = Callable[[Segment], None]


def gpu_backend() -> str | None:
    """The GPU backend this llama.cpp build offloads to (``"CUDA"``, ``"Metal"``, ``"Vulkan"``, ...), or ``None``
    for a CPU-only build."""
    raise NotImplementedError


class Engine:
    """One loaded model.  See the module docstring.

    ``model_path``: a GGUF file.  ``n_ctx``: context window (tokens) for this load.  ``n_threads``: CPU threads
    (``None`` = llama.cpp's default).  ``n_gpu_layers``: layers to offload (``-1`` = all; needs a GPU build).
    ``use_mmap``: map the file instead of reading it into RAM.  ``seed``: default seed for sampling.
    ``vocab_only``: load only the tokenizer and metadata (no weights: rendering/tokenizing, no generation).
    """

    def __init__(self, model_path: str | Path, *, n_ctx: int = 4096, n_threads: int | None = None,
                 n_gpu_layers: int = 0, use_mmap: bool = True, seed: int | None = None,
                 vocab_only: bool = False) -> None:
        self._lock = threading.Lock()
        raise NotImplementedError

    # ---- facts ------------------------------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        """``"CPU"`` or the GPU backend layers are offloaded to."""
        raise NotImplementedError

    @property
    def info(self) -> ModelInfo:
        raise NotImplementedError

    @property
    def n_ctx(self) -> int:
        raise NotImplementedError

    @property
    def llama(self) -> Any:
        """The underlying ``llama_cpp.Llama`` (for app.core.compare's teacher-forced evaluation).  Do not keep it
        past :meth:`close`."""
        raise NotImplementedError

    # ---- text <-> tokens --------------------------------------------------------------------------------------
    def tokenize(self, text: str, *, special: bool = True, add_bos: bool = False) -> list[int]:
        """Tokens of ``text``; ``special=True`` parses special-token text (``<|im_start|>``) as those tokens."""
        raise NotImplementedError

    def detokenize(self, tokens: Sequence[int]) -> str:
        raise NotImplementedError

    def render_prompt(self, messages: Sequence[MessageLike], *, add_generation_prompt: bool = True) -> str:
        """The conversation as the model's chat template writes it (assistant reasoning left out)."""
        raise NotImplementedError

    def prepare(self, messages: Sequence[MessageLike], *, max_tokens: int) -> PreparedPrompt:
        """Render and tokenize, leaving out the oldest turns (after the system prompt) until prompt +
        ``max_tokens`` fits in the context.  Raises ContextOverflowError when even the last user message does
        not fit."""
        raise NotImplementedError

    # ---- generation -------------------------------------------------------------------------------------------
    def chat(self, messages: Sequence[MessageLike], *, settings: SamplingSettings = SamplingSettings(),
             on_text: OnText | None = None, cancel: threading.Event | None = None) -> Reply:
        """Answer the conversation (its last message is the user's).  ``on_text`` gets each decided piece of
        reasoning/answer text as it streams (a :class:`~app.core.thinking.Segment`); setting ``cancel`` stops at
        the next token and returns the partial reply with ``finish_reason="cancelled"``."""
        raise NotImplementedError

    def complete(self, prompt: str | Sequence[int], *, settings: SamplingSettings = SamplingSettings(),
                 on_text: Callable[[str], None] | None = None, cancel: threading.Event | None = None) -> Reply:
        """Plain continuation of ``prompt`` (text, or tokens), no chat template and no reasoning split
        (``answer == text``)."""
        raise NotImplementedError

    # ---- lifetime ---------------------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        """Free the model and its context.  Idempotent."""
        raise NotImplementedError

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
