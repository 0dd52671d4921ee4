"""Chain of thought: split a reasoning model's token stream into *reasoning* and *answer*, incrementally.

DeepSeek-R1 (and its distills) write ``<think>\\n ... \\n</think>\\n\\n answer``.  Variants this parser handles:

* the output starts with ``<think>`` (older R1 templates);
* the *prompt* already ends with ``<think>\\n`` (newer R1 templates force the block open), so the output holds
  only ``</think>`` -- pass ``starts_in_reasoning=True`` (see :func:`prompt_opens_thinking`);
* tags split across tokens at any character (``"</th"`` + ``"ink>"``): text that might be the start of a tag is
  held back until it is decided, so no partial tag ever reaches the screen;
* a missing ``</think>`` at the end (generation stopped mid-thought): everything is reasoning,
  ``unterminated=True``;
* an empty block (``<think>\\n\\n</think>``) or no block at all: ``skipped_reasoning=True`` -- a known R1
  behaviour worth showing the user, because its answers are worse without the thinking.

Only a ``<think>`` at the very start of the output (after whitespace) opens a block; one inside the answer is
plain text.  It also counts reasoning tokens and the seconds from the first reasoning text to ``</think>``.

Usage::

    p = ThinkingParser(starts_in_reasoning=prompt_opens_thinking(prompt))
    for piece in stream:
        for seg in p.feed(piece):          # Segment(kind="reasoning"|"answer", text=...)
            show(seg)
    tail = p.flush()                       # text held back at the end (e.g. a partial tag)
    result = p.finish()                    # ThinkingResult(reasoning, answer, unterminated, ...)
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"

SegmentKind = Literal["reasoning", "answer"]


@dataclass(frozen=True)
class Segment:
    """A piece of decided text: ``kind`` is ``"reasoning"`` or ``"answer"``."""

    kind: SegmentKind
    text: str


@dataclass(frozen=True)
class ThinkingResult:
    """The whole reply split in two.

    ``reasoning`` and ``answer`` have the tags and the whitespace around them stripped.
    ``unterminated``: a block was open and ``</think>`` never came (everything is reasoning).
    ``skipped_reasoning``: no block, or an empty one.
    ``reasoning_tokens``: tokens fed while inside the block (the closing tag's token counts as reasoning).
    ``reasoning_seconds``: from the first fed piece to the one that closed the block (or to ``finish``).
    """

    reasoning: str
    answer: str
    unterminated: bool
    skipped_reasoning: bool
    reasoning_tokens: int
    reasoning_seconds: float


def prompt_opens_thinking(prompt: str) -> bool:
    """True when a rendered prompt ends inside an open ``<think>`` block (newer R1 templates end with
    ``<think>\\n``), so the model's output will contain only ``</think>``."""
    return prompt.rstrip().endswith(OPEN_TAG)


class ThinkingParser:
    """Incremental splitter; feed it decoded text pieces as they stream, then call :meth:`flush` (the last held
    text) and :meth:`finish` (the totals).

    ``starts_in_reasoning``: the prompt already opened the block (see :func:`prompt_opens_thinking`); a
    ``<think>`` the model writes anyway at the start is then swallowed.
    ``clock``: a monotonic clock in seconds (injectable for tests of the timing bookkeeping).

    Whitespace just inside the block and around the answer is not emitted (trailing whitespace is held until
    text follows it), so the concatenated segments of each kind equal :class:`ThinkingResult`'s fields exactly.
    """

    def __init__(self, *, starts_in_reasoning: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._opened_by_prompt = starts_in_reasoning
        self._clock = clock
        self._mode: Literal["start", "reasoning", "answer"] = "start"
        self._buf = ""                          # undecided text
        self._pending_tokens = 0                # tokens fed while still in "start"
        self._closed = False                    # saw </think>
        self._flushed = False
        self._parts: dict[str, list[str]] = {"reasoning": [], "answer": []}
        self._ws_hold = {"reasoning": "", "answer": ""}   # trailing whitespace not yet emitted
        self._reasoning_tokens = 0
        self._t_first: float | None = None
        self._t_close: float | None = None

    @property
    def in_reasoning(self) -> bool:
        """Whether the parser is currently inside the block."""
        return self._mode == "reasoning" or (self._mode == "start" and self._opened_by_prompt)

    def feed(self, text: str, *, tokens: int = 1) -> list[Segment]:
        """Add a piece of output (``tokens``: how many tokens it came from) and return the text now decided,
        in order.  Text that could still turn out to be part of a tag is held back."""
        if self._flushed:
            raise RuntimeError("ThinkingParser: feed() after flush()/finish()")
        now = self._clock()
        if self._t_first is None:
            self._t_first = now
        out: list[Segment] = []
        self._buf += text
        counted = self._mode == "reasoning"
        if self._mode == "start":
            self._pending_tokens += tokens
            self._decide_start()
            if self._mode == "reasoning":
                self._reasoning_tokens += self._pending_tokens
        elif counted:
            self._reasoning_tokens += tokens
        if self._mode == "reasoning":
            idx = self._buf.find(CLOSE_TAG)
            if idx >= 0:
                self._emit(out, "reasoning", self._buf[:idx])
                self._ws_hold["reasoning"] = ""
                self._buf = self._buf[idx + len(CLOSE_TAG):]
                self._mode, self._closed, self._t_close = "answer", True, now
            else:
                keep = _partial_suffix(self._buf, CLOSE_TAG)
                self._emit(out, "reasoning", self._buf[:len(self._buf) - keep])
                self._buf = self._buf[len(self._buf) - keep:]
        if self._mode == "answer":
            self._emit(out, "answer", self._buf)
            self._buf = ""
        return out

    def flush(self) -> list[Segment]:
        """End of stream: return the text still held back (a partial tag is plain text after all).
        Idempotent; :meth:`finish` calls it too."""
        if self._flushed:
            return []
        self._flushed = True
        out: list[Segment] = []
        if self._mode == "start":        # only whitespace or a prefix of "<think>" arrived
            self._mode = "reasoning" if self._opened_by_prompt else "answer"
            self._buf = self._buf.lstrip()
        self._emit(out, self._mode, self._buf)  # type: ignore[arg-type]
        self._buf = ""
        return out

    def finish(self) -> ThinkingResult:
        """End of stream: the totals (call :meth:`flush` first to display the last held text)."""
        self.flush()
        reasoning = "".join(self._parts["reasoning"])
        unterminated = self._mode == "reasoning" and not self._closed
        end = self._t_close if self._t_close is not None else self._clock()
        seconds = 0.0 if self._t_first is None or self._reasoning_tokens == 0 else max(0.0, end - self._t_first)
        return ThinkingResult(reasoning=reasoning, answer="".join(self._parts["answer"]),
                              unterminated=unterminated,
                              skipped_reasoning=not unterminated and reasoning == "",
                              reasoning_tokens=self._reasoning_tokens, reasoning_seconds=seconds)

    # ---- internals --------------------------------------------------------------------------------------------
    def _decide_start(self) -> None:
        """Before any text is decided: does the output open a <think> block?"""
        s = self._buf.lstrip()
        if s == "" or (len(s) < len(OPEN_TAG) and OPEN_TAG.startswith(s)):
            return                       # still undecided
        if s.startswith(OPEN_TAG):
            self._mode, self._buf = "reasoning", s[len(OPEN_TAG):]
        else:
            self._mode, self._buf = ("reasoning" if self._opened_by_prompt else "answer"), s

    def _emit(self, out: list[Segment], kind: SegmentKind, text: str) -> None:
        """Append ``text`` of ``kind`` minus leading whitespace of the part and with trailing whitespace held."""
        if not text:
            return
        if not self._parts[kind]:
            text = (self._ws_hold[kind] + text).lstrip()
            self._ws_hold[kind] = ""
        else:
            text = self._ws_hold[kind] + text
        body = text.rstrip()
        self._ws_hold[kind] = text[len(body):]
        if not body:
            return
        self._parts[kind].append(body)
        if out and out[-1].kind == kind:
            out[-1] = Segment(kind, out[-1].text + body)
        else:
            out.append(Segment(kind, body))


def _partial_suffix(s: str, tag: str) -> int:
    """Length of the longest suffix of ``s`` that is a proper prefix of ``tag`` (could be a tag still arriving)."""
    for k in range(min(len(tag) - 1, len(s)), 0, -1):
        if s.endswith(tag[:k]):
            return k
    return 0


def split_reasoning(text: str, *, starts_in_reasoning: bool = False) -> ThinkingResult:
    """Split a complete reply in one go (same rules as the incremental parser)."""
    p = ThinkingParser(starts_in_reasoning=starts_in_reasoning)
    p.feed(text, tokens=0)
    return p.finish()
