"""The <think> parser, fed realistic R1 transcripts split at every possible point.

The oracle is an independent, non-incremental regex split of the whole text; every way of cutting the stream
must give the same reasoning/answer/flags, and the streamed segments must add up to exactly that.
"""
from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from app.core.thinking import ThinkingParser, prompt_opens_thinking, split_reasoning

TRANSCRIPTS = Path(__file__).resolve().parent.parent / "data" / "transcripts"
R1_VOCAB = TRANSCRIPTS.parent / "deepseek-r1-distill-qwen" / "ggml-vocab-deepseek-r1-qwen.gguf"
# (file, the prompt ended with "<think>\n")
CASES = [("r1_arithmetic.txt", False), ("r1_forced_open.txt", True), ("r1_skipped.txt", False),
         ("r1_unterminated.txt", False), ("r1_tag_in_answer.txt", False)]


def _text(name: str) -> str:
    return (TRANSCRIPTS / name).read_text(encoding="utf-8")


def oracle(text: str, opened: bool) -> tuple[str, str, bool, bool]:
    """(reasoning, answer, unterminated, skipped) by regex over the whole text."""
    m = re.match(r"\s*<think>", text)
    if m:
        text = text[m.end():]
    elif not opened:
        return "", text.strip(), False, True
    head, sep, tail = text.partition("</think>")
    if not sep:
        return head.strip(), "", True, False
    return head.strip(), tail.strip(), False, head.strip() == ""


def run(pieces: list[str], opened: bool):
    p = ThinkingParser(starts_in_reasoning=opened)
    segs = []
    for piece in pieces:
        segs += p.feed(piece)
    segs += p.flush()
    res = p.finish()
    streamed = {"reasoning": "", "answer": ""}
    for s in segs:
        assert s.text, "empty segment"
        streamed[s.kind] += s.text
    return res, streamed


def check(pieces: list[str], opened: bool, expect) -> None:
    res, streamed = run(pieces, opened)
    got = (res.reasoning, res.answer, res.unterminated, res.skipped_reasoning)
    assert got == expect, f"split {[len(x) for x in pieces]}"
    assert streamed == {"reasoning": res.reasoning, "answer": res.answer}, f"split {[len(x) for x in pieces]}"


@pytest.mark.parametrize("name,opened", CASES)
def test_every_single_split_point(name, opened):
    text = _text(name)
    expect = oracle(text, opened)
    for i in range(len(text) + 1):
        check([text[:i], text[i:]], opened, expect)


@pytest.mark.parametrize("name,opened", CASES)
def test_char_by_char_and_every_double_split_near_tags(name, opened):
    text = _text(name)
    expect = oracle(text, opened)
    check(list(text), opened, expect)
    tag_positions = [m.start() for m in re.finditer(r"</?think>?", text)] + [0]
    for pos in tag_positions:
        window = range(max(0, pos - 3), min(len(text), pos + 12) + 1)
        for i, j in itertools.combinations(window, 2):
            check([text[:i], text[i:j], text[j:]], opened, expect)


def test_the_transcripts_split_as_a_reader_would():
    r = split_reasoning(_text("r1_arithmetic.txt"))
    assert r.reasoning.startswith("Okay, so I need") and r.reasoning.endswith("the answer should be 408.")
    assert r.answer.startswith("To compute") and r.answer.endswith(r"\(\boxed{408}\)")
    assert not r.unterminated and not r.skipped_reasoning

    r = split_reasoning(_text("r1_forced_open.txt"), starts_in_reasoning=True)
    assert r.reasoning.startswith("Alright,") and r.reasoning.endswith("friendly tone is fine. 😊")
    assert r.answer.startswith("The capital of France is **Paris**.")

    r = split_reasoning(_text("r1_skipped.txt"))
    assert r.skipped_reasoning and r.reasoning == "" and r.answer.startswith("Hello! I'm DeepSeek-R1")

    r = split_reasoning(_text("r1_unterminated.txt"))
    assert r.unterminated and r.answer == "" and '"</think" in their message' in r.reasoning
    assert r.reasoning.endswith("factorization step by")

    r = split_reasoning(_text("r1_tag_in_answer.txt"))
    assert "between `<think>` and `</think>` tags" in r.answer and "inside <think>…</think>" in r.answer
    assert r.reasoning.endswith("so they can see them.")


def test_no_block_is_skipped_reasoning_and_answer_only():
    r = split_reasoning("  The capital of France is Paris.\n")
    assert (r.reasoning, r.answer, r.skipped_reasoning, r.unterminated) == ("", "The capital of France is Paris.",
                                                                           True, False)
    # a <think> later in the text is not a block
    r = split_reasoning("Sure. <think>x</think> y")
    assert r.answer == "Sure. <think>x</think> y" and r.skipped_reasoning


def test_partial_open_tag_at_end_is_text():
    assert split_reasoning("<thi").answer == "<thi"
    r = split_reasoning("<thi", starts_in_reasoning=True)
    assert r.reasoning == "<thi" and r.unterminated
    r = split_reasoning("<think>\nabc </thin")
    assert r.reasoning == "abc </thin" and r.unterminated


def test_forced_open_prompt_and_model_repeating_the_open_tag():
    r = split_reasoning("<think>\nhmm\n</think>\n\nok", starts_in_reasoning=True)
    assert (r.reasoning, r.answer) == ("hmm", "ok")
    r = split_reasoning("", starts_in_reasoning=True)
    assert r.unterminated and not r.skipped_reasoning


def test_nothing_is_shown_before_it_is_decided():
    p = ThinkingParser()
    assert p.feed("<th") == [] and p.feed("ink>\n") == [] and p.in_reasoning
    assert [s.text for s in p.feed("Hello\n")] == ["Hello"]      # trailing newline held
    assert p.feed("</thi") == []
    segs = p.feed("nk>\n\nAnswer")
    assert [(s.kind, s.text) for s in segs] == [("answer", "Answer")] and not p.in_reasoning


def test_reasoning_tokens_and_seconds_with_a_fake_clock():
    text = _text("r1_arithmetic.txt")
    ticks = itertools.count()
    p = ThinkingParser(clock=lambda: float(next(ticks)))
    for ch in text:
        p.feed(ch, tokens=1)
    res = p.finish()
    close_end = text.index("</think>") + len("</think>")
    assert res.reasoning_tokens == close_end          # every piece up to and including the one closing the tag
    assert res.reasoning_seconds == float(close_end - 1)   # first feed at t=0, the closing one at t=close_end-1

    p = ThinkingParser(clock=lambda: 0.0)
    for ch in "plain answer":
        p.feed(ch, tokens=2)
    assert p.finish().reasoning_tokens == 0


def test_feed_after_finish_is_refused():
    p = ThinkingParser()
    p.finish()
    with pytest.raises(RuntimeError):
        p.feed("x")


def test_prompt_opens_thinking():
    assert prompt_opens_thinking("<｜User｜>hi<｜Assistant｜><think>\n")
    assert not prompt_opens_thinking("<｜User｜>hi<｜Assistant｜>")
    assert not prompt_opens_thinking("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert not prompt_opens_thinking("<｜User｜>what does <think> mean?<｜Assistant｜>")


def test_real_r1_token_boundaries():
    """Feed each transcript token by token as the R1 tokenizer splits it (multi-byte characters decoded
    incrementally, as the engine does)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from app.core.engine import Engine

    with Engine(R1_VOCAB, vocab_only=True) as eng:
        for name, opened in CASES:
            text = _text(name)
            toks = eng.tokenize(text, special=True)
            assert len(toks) > 10
            pieces, pending = [], b""
            for t in toks:
                pending += eng.llama.detokenize([t], special=True)
                try:
                    pieces.append(pending.decode("utf-8"))
                    pending = b""
                except UnicodeDecodeError:
                    pieces.append("")
            assert "".join(pieces) == text
            check(pieces, opened, oracle(text, opened))
    del llama_cpp
