"""The value types of chatting with a model: messages, sampling settings, replies and their timings.

Kept apart from :mod:`app.core.engine` (which re-exports them) so that history, the GUI and the CLI can use them
without loading llama.cpp.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
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
    ``overthinking_penalty``: subtracted from the logits of ~50 hesitation markers ("Wait", "Alternatively", ...)
    tokenised for the loaded vocabulary (:mod:`app.core.probes.penalty`); 0 = off.
    """

    temperature: float = R1_TEMPERATURE
    top_p: float = R1_TOP_P
    top_k: int = 0                 # 0 = off
    min_p: float = 0.0             # 0 = off
    repeat_penalty: float = 1.0    # 1 = off
    max_tokens: int = 2048
    greedy: bool = False
    seed: int | None = None
    overthinking_penalty: float = 0.0   # logit bias taken off hesitation markers (app.core.probes.penalty); 0 = off

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SamplingSettings:
        """Inverse of :meth:`to_dict`; unknown keys are ignored (settings saved by other versions)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class Message:
    """One chat message.  ``reasoning`` (assistant only) is kept for display and history but is NOT sent back
    to the model in later turns."""

    role: Role
    content: str
    reasoning: str = ""


MessageLike = Message | Mapping[str, Any]   # dicts with "role" and "content" (and optional "reasoning") work too


def as_message(m: MessageLike) -> Message:
    if isinstance(m, Message):
        return m
    role = m.get("role")
    if role not in ("system", "user", "assistant"):
        raise ValueError(f"unknown message role {role!r}: use system, user or assistant")
    return Message(role, str(m.get("content") or ""), str(m.get("reasoning") or ""))


def split_turns(messages: Sequence[Message]) -> tuple[Message | None, list[list[Message]]]:
    """(system prompt, turns): a turn is a user message and what follows it up to the next user message."""
    system = messages[0] if messages and messages[0].role == "system" else None
    turns: list[list[Message]] = []
    for m in messages[1 if system else 0:]:
        if m.role == "user" or not turns:
            turns.append([m])
        else:
            turns[-1].append(m)
    return system, turns


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
        return asdict(self)

    def summary(self) -> str:
        """One line for a status bar / the terminal."""
        return (f"{self.prompt_tokens} prompt tokens ({self.prompt_tokens_per_s:.1f} tok/s), "
                f"{self.generated_tokens} generated ({self.decode_tokens_per_s:.1f} tok/s), "
                f"first token after {self.time_to_first_token_s:.2f} s")


@dataclass(frozen=True)
class Reply:
    """What :meth:`Engine.chat` returns.

    ``text``: the raw generated text; ``reasoning``/``answer``: it split by the thinking parser.
    ``finish_reason``: ``"stop"`` (end-of-generation token), ``"length"`` (max_tokens reached, or the context
    ended: then ``context_full``), ``"cancelled"`` (the cancel event was set; the partial text is kept).
    ``dropped_turns``: how many of the oldest turns were left out to fit the context.  ``notice`` says in words
    that turns were left out and/or that the reply was cut where the context ends (``None`` when neither).
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
    context_full: bool = False
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
    offload: str = ""              # e.g. "31/31 layers offloaded (Vulkan0 97.0 MB, CPU_Mapped 30.4 MB)"; "" on CPU
    workers: tuple[str, ...] = ()  # host:port of the remote RPC workers the model runs on


@dataclass(frozen=True)
class PreparedPrompt:
    """A conversation rendered and tokenized to fit the context (see :meth:`Engine.prepare`)."""

    text: str
    tokens: tuple[int, ...]
    dropped_turns: int
    starts_in_reasoning: bool      # the rendered prompt ends inside an open <think> block


OnText = Callable[[Segment], None]
