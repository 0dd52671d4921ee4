"""Chat through the real window on the real SmolLM2 model: streaming, stats, history, keyboard, stop, regenerate,
edit-and-resend."""
from __future__ import annotations

from PySide6.QtCore import Qt

PROMPT = "What is the capital of France?"
MAX_TOKENS = 24  # the `chat` fixture (conftest) sets this


def _engine_answer(path, prompt: str, max_tokens: int) -> str:
    """The oracle: the engine's own greedy answer, without the GUI."""
    from app.core.engine import Engine, SamplingSettings

    with Engine(path, n_ctx=1024, n_threads=1) as e:
        return e.chat([{"role": "user", "content": prompt}],
                      settings=SamplingSettings(greedy=True, max_tokens=max_tokens)).answer


def test_enter_sends_and_the_answer_streams_with_stats(chat, window, qtbot):
    streamed: list[str] = []
    chat.model.dataChanged.connect(lambda *_: streamed.append(chat.model.message(1).content)
                                   if chat.model.rowCount() > 1 and chat.model.message(1).streaming else None)
    qtbot.keyClicks(chat.prompt, PROMPT)
    with qtbot.waitSignal(chat.replyFinished, timeout=120000):
        qtbot.keyClick(chat.prompt, Qt.Key.Key_Return)
    assert chat.prompt.toPlainText() == ""
    user, reply = chat.model.messages()
    assert (user.role, user.content) == ("user", PROMPT)
    assert reply.role == "assistant" and not reply.streaming
    assert reply.content == _engine_answer(chat.q8, PROMPT, MAX_TOKENS)
    # it grew piece by piece while streaming, ending with the final answer
    assert len(streamed) >= 3 and len(streamed[0]) < len(reply.content) and streamed[-1] == reply.content
    # per-reply stats in the bubble and the status bar
    s = reply.stats
    assert s["generated_tokens"] == MAX_TOKENS and s["decode_tokens_per_s"] > 0 and s["time_to_first_token_s"] > 0
    bubble = chat.transcript.widget_at(1)
    assert f"{MAX_TOKENS} tokens" in bubble.stats.text() and "tok/s" in bubble.stats.text()
    assert bubble.stats.isVisibleTo(bubble)
    user_bubble = chat.transcript.widget_at(0)  # no empty stats line under the user's message
    assert user_bubble.height() < bubble.height() and not user_bubble.stats.isVisibleTo(user_bubble)
    assert bubble.body.toPlainText().strip() == reply.content.strip()
    assert window.speed_status.text() == f"{s['decode_tokens_per_s']:.1f} tok/s"
    assert "Q8_0" in window.model_status.text()
    # saved in the SQLite history as soon as complete
    from app.core.history import History

    with History() as h:
        (conv,) = h.conversations()
        stored = h.get(conv.id).messages
    assert [(m.role, m.content) for m in stored] == [("user", PROMPT), ("assistant", reply.content)]
    assert stored[1].stats["generated_tokens"] == MAX_TOKENS
    assert chat.conversations.list.count() == 1


def test_shift_enter_is_a_new_line_and_escape_stops(chat, qtbot):
    qtbot.keyClicks(chat.prompt, "Tell me a long story")
    qtbot.keyClick(chat.prompt, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
    qtbot.keyClicks(chat.prompt, "about a dragon.")
    assert chat.prompt.toPlainText() == "Tell me a long story\nabout a dragon."
    assert chat.model.rowCount() == 0
    chat.max_tokens.setValue(900)
    chat.greedy.setChecked(False)
    qtbot.keyClick(chat.prompt, Qt.Key.Key_Return)
    assert chat.is_busy() and chat.stop_button.isEnabled() and not chat.send_button.isEnabled()
    qtbot.waitUntil(lambda: chat.model.message(1).answer_tokens + chat.model.message(1).reasoning_tokens >= 3,
                    timeout=60000)
    with qtbot.waitSignal(chat.replyFinished, timeout=30000):
        qtbot.keyClick(chat.prompt, Qt.Key.Key_Escape)
    reply = chat.model.message(1)
    assert reply.finish_reason == "cancelled"
    assert 3 <= reply.stats["generated_tokens"] < 900
    assert "stopped" in chat.transcript.widget_at(1).stats.text()
    assert not chat.is_busy() and not chat.stop_button.isEnabled() and chat.send_button.isEnabled()


def test_regenerate_edit_and_resend_and_reopen_from_history(chat, qtbot):
    qtbot.keyClicks(chat.prompt, "Say hello.")
    qtbot.mouseClick(chat.send_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not chat.is_busy(), timeout=120000)
    first = chat.model.message(1).content
    with qtbot.waitSignal(chat.replyFinished, timeout=120000):
        qtbot.mouseClick(chat.regen_button, Qt.MouseButton.LeftButton)
    assert chat.model.rowCount() == 2
    assert chat.model.message(1).content == first  # greedy: the same reply again, replacing the old one

    qtbot.mouseClick(chat.transcript.widget_at(0).action, Qt.MouseButton.LeftButton)  # "Edit" on the user bubble
    assert chat.prompt.toPlainText() == "Say hello." and chat.edit_banner.isVisibleTo(chat)
    qtbot.keyClick(chat.prompt, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier)
    qtbot.keyClicks(chat.prompt, PROMPT)  # typing over the selected old text
    with qtbot.waitSignal(chat.replyFinished, timeout=120000):
        qtbot.keyClick(chat.prompt, Qt.Key.Key_Return)
    assert [m.content for m in chat.model.messages()][0] == PROMPT and chat.model.rowCount() == 2
    answer = chat.model.message(1).content
    assert answer == _engine_answer(chat.q8, PROMPT, MAX_TOKENS)

    from app.core.history import History

    with History() as h:
        (conv,) = h.conversations()
        assert [m.content for m in h.get(conv.id).messages] == [PROMPT, answer]

    qtbot.mouseClick(chat.conversations.new_button, Qt.MouseButton.LeftButton)
    assert chat.model.rowCount() == 0
    item = chat.conversations.list.item(0)
    qtbot.mouseClick(chat.conversations.list.viewport(), Qt.MouseButton.LeftButton,
                     pos=chat.conversations.list.visualItemRect(item).center())
    assert [m.content for m in chat.model.messages()] == [PROMPT, answer]


def test_r1_sampling_defaults_and_the_system_prompt_is_sent(chat, qtbot):
    qtbot.mouseClick(chat.greedy, Qt.MouseButton.LeftButton)
    assert not chat.greedy.isChecked()
    for spin, text in ((chat.temperature, "1.3"), (chat.top_p, "0.5")):
        spin.setFocus()
        qtbot.keyClick(spin, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier)
        qtbot.keyClicks(spin, text)
    assert (chat.sampling().temperature, chat.sampling().top_p) == (1.3, 0.5)
    qtbot.mouseClick(next(b for b in chat.findChildren(type(chat.send_button)) if b.text() == "R1 defaults"),
                     Qt.MouseButton.LeftButton)
    s = chat.sampling()
    assert (s.temperature, s.top_p, s.greedy) == (0.6, 0.95, False)
    qtbot.mouseClick(chat.greedy, Qt.MouseButton.LeftButton)
    assert chat.greedy.isChecked()
    qtbot.mouseClick(chat.system_toggle, Qt.MouseButton.LeftButton)
    assert chat.system_prompt.isVisibleTo(chat)
    qtbot.keyClicks(chat.system_prompt, "You are a pirate. Answer like a pirate.")
    with qtbot.waitSignal(chat.replyFinished, timeout=120000):
        qtbot.keyClicks(chat.prompt, "Who are you?")
        qtbot.mouseClick(chat.send_button, Qt.MouseButton.LeftButton)
    from app.core.engine import Engine, SamplingSettings

    with Engine(chat.q8, n_ctx=1024, n_threads=1) as e:
        want = e.chat([{"role": "system", "content": "You are a pirate. Answer like a pirate."},
                       {"role": "user", "content": "Who are you?"}],
                      settings=SamplingSettings(greedy=True, max_tokens=MAX_TOKENS)).answer
        without = e.chat([{"role": "user", "content": "Who are you?"}],
                         settings=SamplingSettings(greedy=True, max_tokens=MAX_TOKENS)).answer
    assert chat.model.message(1).content == want != without  # the system prompt reached the model
