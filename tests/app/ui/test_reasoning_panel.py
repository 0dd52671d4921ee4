"""The chain-of-thought side panel, fed by recorded R1-style token streams: real R1 transcripts cut at the real
DeepSeek-R1-Distill tokenizer's token boundaries, split by app.core.thinking's incremental parser, streamed into the
chat view's message model exactly as the model worker's segments are."""
from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from app.core.thinking import ThinkingParser
from app.ui.chat_model import ChatMessage
from app.ui.reasoning_panel import SKIPPED_WARNING, UNTERMINATED_WARNING

DATA = Path(__file__).resolve().parents[2] / "data"


def r1_token_stream(name: str) -> list[str]:
    """The transcript as the R1 tokenizer cuts it: one text piece per token (byte-level tokens inside a
    multi-byte character are merged with the token that completes it, as a streaming detokenizer does)."""
    from tokenizers import Tokenizer

    text = (DATA / "transcripts" / name).read_text(encoding="utf-8")
    tok = Tokenizer.from_file(str(DATA / "deepseek-r1-distill-qwen" / "tokenizer.json"))
    enc = tok.encode(text, add_special_tokens=False)
    pieces, pos = [], 0
    for _start, end in enc.offsets:
        if end > pos:
            pieces.append(text[pos:end])
            pos = end
    if pos < len(text):
        pieces.append(text[pos:])
    assert "".join(pieces) == text and len(pieces) > 20
    return pieces


def stream_reply(view, name: str, *, starts_in_reasoning: bool = False, check=None):
    """Stream a recorded reply into ``view`` token by token; ``check(kind)`` runs after each piece."""
    row = view.model.append(ChatMessage("assistant", streaming=True, model="R1 (recorded)"))
    view.reasoning.show_message(view.model.message(row))
    parser = ThinkingParser(starts_in_reasoning=starts_in_reasoning)
    for piece in r1_token_stream(name):
        for seg in parser.feed(piece):
            view.model.append_text(row, seg.kind, seg.text)
            if check is not None:
                check(seg.kind)
    for seg in parser.feed(""):
        view.model.append_text(row, seg.kind, seg.text)
    result = parser.finish()
    m = view.model.message(row)
    # what the chat view does with the engine's Reply
    view.model.update(row, content=m.content or result.answer, reasoning=m.reasoning or result.reasoning,
                      streaming=False, finish_reason="stop", unterminated=result.unterminated,
                      skipped_reasoning=result.skipped_reasoning,
                      stats={"reasoning_tokens": result.reasoning_tokens, "reasoning_s": 1.25,
                             "generated_tokens": len(r1_token_stream(name)), "decode_tokens_per_s": 20.0,
                             "time_to_first_token_s": 0.1})
    view.reasoning.show_message(view.model.message(row))
    return row, result


@pytest.fixture
def view(window):
    window.tabs.setCurrentWidget(window.chat)
    return window.chat


def test_reasoning_streams_live_beside_the_answer(view, qtbot):
    seen = {"reasoning": 0, "answer": 0}
    panel = view.reasoning

    def check(kind):
        seen[kind] += 1
        m = view.model.message(0)
        assert panel.plain_text() == m.reasoning  # the panel keeps up token by token
        if kind == "reasoning" and not m.content:
            assert panel.summary.text().startswith("Thinking…")
            bubble = view.transcript.widget_at(0)
            bubble._render_pending()  # the bubble re-renders on a timer; force it to read it now
            assert bubble.body.toPlainText().strip() == "thinking…"  # the answer column waits
            assert "</think>" not in m.reasoning

    row, result = stream_reply(view, "r1_arithmetic.txt", check=check)
    assert seen["reasoning"] > 20 and seen["answer"] > 10
    m = view.model.message(row)
    assert m.reasoning.strip() == result.reasoning and "17 × 20 = 340" in panel.plain_text()
    assert "<think>" not in panel.plain_text() and "</think>" not in m.content
    assert panel.summary.text() == f"Thought for 1.2 s, {result.reasoning_tokens} tokens"
    assert result.reasoning_tokens > 20
    assert not panel.warning.isVisibleTo(panel)
    body = view.transcript.widget_at(row).body.toPlainText()
    assert "Answer:" in body and "408" in body and "Okay, so I need" not in body  # markdown rendered, no CoT


def test_forced_open_template_and_warnings(view):
    panel = view.reasoning
    _, r = stream_reply(view, "r1_forced_open.txt", starts_in_reasoning=True)
    assert "capital of France" in panel.plain_text() and "Paris" in view.model.message(0).content
    assert not r.unterminated and not panel.warning.isVisibleTo(panel)

    _, r = stream_reply(view, "r1_unterminated.txt")
    assert r.unterminated and view.model.message(1).content == ""
    assert panel.warning.isVisibleTo(panel) and panel.warning.text() == UNTERMINATED_WARNING
    assert "13 × 17 = 221" in panel.plain_text()

    _, r = stream_reply(view, "r1_skipped.txt")
    assert r.skipped_reasoning
    assert panel.warning.isVisibleTo(panel) and panel.warning.text() == SKIPPED_WARNING
    assert "DeepSeek-R1" in view.model.message(2).content


def test_collapsible_and_past_replies_keep_their_reasoning(view, qtbot):
    panel = view.reasoning
    stream_reply(view, "r1_arithmetic.txt")
    stream_reply(view, "r1_tag_in_answer.txt")
    assert "think tags" in panel.plain_text()
    # the tags the answer quotes stay in the answer
    assert "`<think>`" in view.model.message(1).content
    # the first reply's reasoning, from its bubble's "Reasoning" button
    qtbot.mouseClick(view.transcript.widget_at(0).action, Qt.MouseButton.LeftButton)
    assert panel.message() is view.model.message(0) and "17 × 20 = 340" in panel.plain_text()
    # collapse to the toggle (the summary becomes its tooltip) and back; the transcript gets the space
    summary = panel.summary.text()
    center, width = view.center.width(), panel.width()
    assert width > 250
    qtbot.mouseClick(panel.toggle, Qt.MouseButton.LeftButton)
    assert not panel.is_expanded() and not panel.text.isVisibleTo(panel) and not panel.summary.isVisibleTo(panel)
    assert panel.toggle.toolTip() == summary
    qtbot.waitUntil(lambda: view.center.width() >= center + width - 150)
    assert panel.width() <= 150 and panel.toggle.isVisibleTo(panel)
    qtbot.mouseClick(panel.toggle, Qt.MouseButton.LeftButton)
    assert panel.is_expanded() and panel.text.isVisibleTo(panel) and panel.summary.isVisibleTo(panel)
    qtbot.waitUntil(lambda: panel.width() >= width - 10)
    assert view.center.width() <= center + 10
