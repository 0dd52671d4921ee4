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
    tail = prompt.rstrip()
    return tail.endswith(OPEN_TAG) or tail.rfind(OPEN_TAG) > tail.rfind(CLOSE_TAG)


class ThinkingParser:
    """Incremental splitter; feed it decoded text pieces as they stream, then call :meth:`finish`.

    ``starts_in_reasoning``: the prompt already opened the block (see :func:`prompt_opens_thinking`).
    ``clock``: a monotonic clock in seconds (injectable for tests of the timing bookkeeping).
    """

    def __init__(self, *, starts_in_reasoning: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        raise NotImplementedError

    def feed(self, text: str, *, tokens: int = 1) -> list[Segment]:
        """Add a piece of output (``tokens``: how many tokens it came from) and return the text now decided,
        in order.  Text that could still turn out to be part of a tag is held back."""
        raise NotImplementedError

    def finish(self) -> ThinkingResult:
        """End of stream: flush held-back text and return the totals.  Call once."""
        raise NotImplementedError

    @property
    def in_reasoning(self) -> bool:
        """Whether the parser is currently inside the block."""
        raise NotImplementedError


def split_reasoning(text: str, *, starts_in_reasoning: bool = False) -> ThinkingResult:
    """Split a complete reply in one go (same rules as the incremental parser)."""
    p = ThinkingParser(starts_in_reasoning=starts_in_reasoning)
    p.feed(text)
    return p.finish()
