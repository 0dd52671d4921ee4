"""The chat under ordinary use, driven by mouse and keys on the real widgets with the real SmolLM2 model: the Send
button, switching conversation / New chat / Delete / another model while a reply streams, text shown as typed, a
system prompt added mid-conversation, Regenerate's state, the status bar after Unload, Delete's confirmation, and
the reasoning panel for a model that does not reason (issues 14 and 15)."""
from __future__ import annotations

import pytest
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QApplication, QMessageBox

from app.core.history import History

from .test_chat import MAX_TOKENS, PROMPT  # the `chat` fixture (conftest): SmolLM2 Q8_0 loaded, greedy

LEFT = Qt.MouseButton.LeftButton


def click(qtbot, widget) -> None:
    assert widget.isVisible() and widget.isEnabled(), widget.objectName() or widget.text()
    qtbot.mouseClick(widget, LEFT)


def type_and_click_send(qtbot, chat, text: str) -> None:
    qtbot.keyClicks(chat.prompt, text)
    click(qtbot, chat.send_button)


def click_conversation(qtbot, chat, title: str) -> None:
    lst = chat.conversations.list
    item = next(lst.item(i) for i in range(lst.count()) if lst.item(i).text() == title)
    qtbot.mouseClick(lst.viewport(), LEFT, pos=lst.visualItemRect(item).center())


_TEST_GENERATION = [0]


@pytest.fixture(autouse=True)
def _no_poll_outlives_its_test():
    """A poll of answer_dialog still waiting when its test ends must not answer a later test's dialog."""
    yield
    _TEST_GENERATION[0] += 1


def answer_dialog(qtbot, button_text: str, seen: list) -> None:
    """Click ``button_text`` in the next modal message box (as soon as it opens, within this test), recording
    its text."""
    generation = _TEST_GENERATION[0]

    def poll() -> None:
        if _TEST_GENERATION[0] != generation:
            return
        box = QApplication.activeModalWidget()
        if isinstance(box, QMessageBox):
            seen.append(box.text())
            qtbot.mouseClick(next(b for b in box.buttons() if b.text().replace("&", "") == button_text), LEFT)
        else:
            QTimer.singleShot(20, poll)
    QTimer.singleShot(0, poll)


def start_long_reply(qtbot, chat, text: str = "Tell me a long story about a dragon.") -> None:
    chat.greedy.setChecked(False)
    chat.max_tokens.setValue(900)
    type_and_click_send(qtbot, chat, text)
    assert chat.is_busy()
    row = chat.model.rowCount() - 1
    qtbot.waitUntil(lambda: len(chat.model.message(row).content) >= 20, timeout=60000)


def stored(title_or_index=0):
    with History() as h:
        convs = h.conversations()
        conv = (convs[title_or_index] if isinstance(title_or_index, int)
                else next(c for c in convs if c.title == title_or_index))
        return h.get(conv.id)


def assert_idle_and_working(chat) -> None:
    assert not chat.is_busy() and chat.send_button.isEnabled() and not chat.stop_button.isEnabled()


def test_clicking_send_sends(chat, qtbot):
    """Issue 14 §0: clicked(bool) used to reach send(text=False): "'bool' object has no attribute 'strip'"."""
    with qtbot.waitSignal(chat.replyFinished, timeout=120000):
        type_and_click_send(qtbot, chat, PROMPT)
    assert [m.role for m in chat.model.messages()] == ["user", "assistant"]
    assert chat.model.message(0).content == PROMPT and chat.model.message(1).content.strip()
    assert chat.prompt.toPlainText() == ""


def test_switching_conversation_while_a_reply_streams(chat, qtbot):
    with qtbot.waitSignal(chat.replyFinished, timeout=120000):
        type_and_click_send(qtbot, chat, "Say hello.")
    click(qtbot, chat.conversations.new_button)
    start_long_reply(qtbot, chat)
    click_conversation(qtbot, chat, "Say hello.")  # used to raise IndexError in _on_segment
    assert [m.content for m in chat.model.messages()][0] == "Say hello." and chat.model.rowCount() == 2
    assert_idle_and_working(chat)
    qtbot.wait(300)  # late tokens of the stopped reply arrive and must not land here
    assert chat.model.rowCount() == 2 and not chat.model.message(1).streaming
    story = stored("Tell me a long story about a dragon.")
    assert [m.role for m in story.messages] == ["user", "assistant"]
    assert len(story.messages[1].content) >= 20 and story.messages[1].stats["finish_reason"] == "cancelled"
    # the conversation switched to works
    chat.greedy.setChecked(True)
    chat.max_tokens.setValue(MAX_TOKENS)
    with qtbot.waitSignal(chat.replyFinished, timeout=120000):
        type_and_click_send(qtbot, chat, PROMPT)
    assert chat.model.rowCount() == 4 and chat.model.message(3).content.strip()
    assert [m.content for m in stored("Say hello.").messages][2] == PROMPT
    # the stopped story reopens with its partial reply, marked stopped
    click_conversation(qtbot, chat, "Tell me a long story about a dragon.")
    assert chat.model.message(1).content == story.messages[1].content
    assert "stopped" in chat.transcript.widget_at(1).stats.text()


def test_new_chat_and_delete_while_a_reply_streams(chat, qtbot):
    start_long_reply(qtbot, chat, "Tell me a long story about a cat.")
    click(qtbot, chat.conversations.new_button)
    assert chat.model.rowCount() == 0
    assert_idle_and_working(chat)
    assert stored(0).messages[1].stats["finish_reason"] == "cancelled"

    start_long_reply(qtbot, chat, "Tell me a long story about a dog.")
    click_conversation(qtbot, chat, "Tell me a long story about a dog.")  # select it (it is the open one)
    seen: list = []
    answer_dialog(qtbot, "Delete", seen)
    click(qtbot, chat.conversations.delete_button)
    assert seen and "Tell me a long story about a dog." in seen[0]
    assert chat.model.rowCount() == 0
    assert_idle_and_working(chat)
    qtbot.wait(300)
    assert chat.model.rowCount() == 0
    with History() as h:
        assert [c.title for c in h.conversations()] == ["Tell me a long story about a cat."]
    chat.greedy.setChecked(True)
    chat.max_tokens.setValue(MAX_TOKENS)
    with qtbot.waitSignal(chat.replyFinished, timeout=120000):
        type_and_click_send(qtbot, chat, PROMPT)
    assert chat.model.message(1).content.strip()


def test_switching_model_keeps_the_partial_reply(chat, window, library_models, qtbot):
    (q4,) = library_models("Q4_K_M")
    window.library.refresh_now()
    start_long_reply(qtbot, chat)
    bar = window.tabs.tabBar()
    qtbot.mouseClick(bar, LEFT, pos=bar.tabRect(0).center())  # the Library tab
    assert window.tabs.currentWidget() is window.library
    assert window.library.select_path(q4)
    with qtbot.waitSignal(chat.modelLoaded, timeout=60000):
        click(qtbot, window.library.buttons["chat"])
    on_screen = chat.model.message(1).content
    assert len(on_screen) >= 20 and not chat.model.message(1).streaming
    assert "stopped" in chat.transcript.widget_at(1).stats.text()
    reply = stored(0).messages[1]
    assert reply.content == on_screen and reply.stats["finish_reason"] == "cancelled"
    assert window.speed_status.text() == "– tok/s"  # the old model's speed went with it
    click(qtbot, chat.conversations.new_button)
    click_conversation(qtbot, chat, "Tell me a long story about a dragon.")
    assert [m.content for m in chat.model.messages()] == ["Tell me a long story about a dragon.", on_screen]


def test_user_text_is_shown_as_typed_and_html_is_not_rendered(chat, qtbot):
    with qtbot.waitSignal(chat.replyFinished, timeout=120000):
        qtbot.keyClicks(chat.prompt, "<x> tag a*b*c")
        qtbot.keyClick(chat.prompt, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
        qtbot.keyClicks(chat.prompt, "second <b>line</b>")
        click(qtbot, chat.send_button)
    typed = "<x> tag a*b*c\nsecond <b>line</b>"
    assert chat.model.message(0).content == typed
    assert chat.transcript.widget_at(0).body.toPlainText() == typed
    # the model's markdown is rendered, raw HTML in it is shown as text
    from app.ui.chat_widgets import MessageWidget

    bubble = MessageWidget(0)
    from app.ui.chat_model import ChatMessage

    bubble.set_message(ChatMessage("assistant", "**bold** and <b>tag</b><script>x</script>"))
    assert bubble.body.toPlainText() == "bold and <b>tag</b><script>x</script>"
    bubble.deleteLater()


def test_system_prompt_added_mid_conversation_is_saved(chat, qtbot):
    with qtbot.waitSignal(chat.replyFinished, timeout=120000):
        type_and_click_send(qtbot, chat, "Say hello.")
    assert stored(0).settings["system_prompt"] == ""
    click(qtbot, chat.system_toggle)
    qtbot.keyClicks(chat.system_prompt, "Answer like a pirate.")
    with qtbot.waitSignal(chat.replyFinished, timeout=120000):
        type_and_click_send(qtbot, chat, "Who are you?")
    assert stored(0).settings["system_prompt"] == "Answer like a pirate."
    click(qtbot, chat.conversations.new_button)
    chat.system_prompt.selectAll()
    qtbot.keyClick(chat.system_prompt, Qt.Key.Key_Delete)
    click_conversation(qtbot, chat, "Say hello.")
    assert chat.system_prompt.toPlainText() == "Answer like a pirate." and chat.system_prompt.isVisibleTo(chat)


def set_spin(qtbot, spin, text: str) -> None:
    """Select the spin box's text with Ctrl+A and type a new value, as a person does."""
    qtbot.mouseClick(spin.lineEdit(), LEFT)
    qtbot.keyClick(spin.lineEdit(), Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier)
    qtbot.keyClicks(spin.lineEdit(), text)
    qtbot.keyClick(spin.lineEdit(), Qt.Key.Key_Return)


def test_opening_a_conversation_restores_its_sampling(chat, qtbot):
    from app.ui.chat_sampling import SAVE_DELAY_MS
    from app.ui.settings import load_settings

    if chat.greedy.isChecked():
        click(qtbot, chat.greedy)
    set_spin(qtbot, chat.temperature, "0.3")
    set_spin(qtbot, chat.seed, "7")
    with qtbot.waitSignal(chat.replyFinished, timeout=120000):
        type_and_click_send(qtbot, chat, "Say hello.")
    click(qtbot, chat.conversations.new_button)
    set_spin(qtbot, chat.temperature, "1.2")
    set_spin(qtbot, chat.seed, "99")
    click(qtbot, chat.greedy)
    with qtbot.waitSignal(chat.replyFinished, timeout=120000):
        type_and_click_send(qtbot, chat, "Who are you?")
    qtbot.wait(SAVE_DELAY_MS + 200)
    assert load_settings().temperature == 1.2 and load_settings().greedy   # the user's own last values

    click_conversation(qtbot, chat, "Say hello.")
    assert (chat.temperature.value(), chat.seed.value(), chat.greedy.isChecked()) == (0.3, 7, False)
    assert chat.temperature.isEnabled()
    qtbot.wait(SAVE_DELAY_MS + 200)
    assert load_settings().temperature == 1.2 and load_settings().greedy   # showing them saved nothing
    with qtbot.waitSignal(chat.replyFinished, timeout=120000):
        type_and_click_send(qtbot, chat, "And goodbye.")           # it continues with its own values
    assert stored("Say hello.").settings["temperature"] == 0.3 and stored("Say hello.").settings["seed"] == 7

    click_conversation(qtbot, chat, "Who are you?")
    assert (chat.temperature.value(), chat.seed.value(), chat.greedy.isChecked()) == (1.2, 99, True)
    assert not chat.temperature.isEnabled()


def test_regenerate_is_enabled_only_where_it_does_something(chat, qtbot):
    assert not chat.regen_button.isEnabled()  # empty chat
    with qtbot.waitSignal(chat.replyFinished, timeout=120000):
        type_and_click_send(qtbot, chat, "Say hello.")
    assert chat.regen_button.isEnabled()
    click(qtbot, chat.conversations.new_button)
    assert not chat.regen_button.isEnabled()  # was left enabled, doing nothing
    click_conversation(qtbot, chat, "Say hello.")
    assert chat.regen_button.isEnabled()  # was left disabled on a chat with a reply
    first = chat.model.message(1).content
    with qtbot.waitSignal(chat.replyFinished, timeout=120000):
        click(qtbot, chat.regen_button)
    assert chat.model.rowCount() == 2 and chat.model.message(1).content == first  # greedy: the same reply
    answer_dialog(qtbot, "Delete", [])
    click(qtbot, chat.conversations.delete_button)
    assert chat.model.rowCount() == 0 and not chat.regen_button.isEnabled()


def test_unload_clears_the_status_bar(chat, window, qtbot):
    with qtbot.waitSignal(chat.replyFinished, timeout=120000):
        type_and_click_send(qtbot, chat, "Say hello.")
    assert window.speed_status.text().endswith("tok/s") and window.speed_status.text() != "– tok/s"
    click(qtbot, chat.unload_button)
    assert window.speed_status.text() == "– tok/s" and window.model_status.text() == "no model"
    assert chat.loaded_info() is None and not chat.send_button.isEnabled() and not chat.unload_button.isEnabled()
    assert chat.model.rowCount() == 2  # the conversation stays


def test_delete_chat_asks_first(chat, qtbot):
    with qtbot.waitSignal(chat.replyFinished, timeout=120000):
        type_and_click_send(qtbot, chat, "Say hello.")
    click_conversation(qtbot, chat, "Say hello.")
    seen: list = []
    answer_dialog(qtbot, "Cancel", seen)
    click(qtbot, chat.conversations.delete_button)
    assert seen and "Say hello." in seen[0] and "cannot be undone" in seen[0]
    assert chat.conversations.list.count() == 1 and chat.model.rowCount() == 2
    answer_dialog(qtbot, "Delete", seen)
    click(qtbot, chat.conversations.delete_button)
    assert len(seen) == 2 and chat.conversations.list.count() == 0 and chat.model.rowCount() == 0
    with History() as h:
        assert h.conversations() == []


def test_reasoning_panel_for_a_model_that_does_not_reason(chat, qtbot):
    """SmolLM2's template has no <think>: never "Thought for 0.0 s, 0 tokens", never a "Reasoning" link."""
    summaries, links = [], []

    def watch(*_):
        if chat.model.rowCount() > 1:
            summaries.append(chat.reasoning.summary.text())
            w = chat.transcript.widget_at(1)
            links.append(w.action.isVisibleTo(w))
    chat.model.dataChanged.connect(watch)
    with qtbot.waitSignal(chat.replyFinished, timeout=120000):
        type_and_click_send(qtbot, chat, PROMPT)
    assert len(summaries) >= 3 and not any(links)
    assert not any("Thought for" in s or "0 tokens" in s for s in summaries), summaries
    assert chat.reasoning.summary.text() == "No reasoning"


def test_every_chat_button_clicks_cleanly(chat, qtbot, error_reports):
    """Issue 14 §0: every button of the chat view, clicked with the mouse, does its job without raising (pytest-qt
    fails the test on an exception in a slot) and without an error dialog."""
    import shiboken6
    from PySide6.QtWidgets import QAbstractButton

    with qtbot.waitSignal(chat.replyFinished, timeout=120000):
        type_and_click_send(qtbot, chat, "Say hello.")
    buttons = [b for b in chat.findChildren(QAbstractButton) if b.isVisibleTo(chat)]
    buttons.sort(key=lambda b: b is chat.unload_button)  # unloading last
    clicked = []
    for b in buttons:
        if not shiboken6.isValid(b) or not b.isVisible() or not b.isEnabled():  # e.g. a bubble New chat removed
            continue
        if b is chat.send_button:
            qtbot.keyClicks(chat.prompt, "And goodbye.")
        if b is chat.conversations.delete_button:
            answer_dialog(qtbot, "Cancel", [])
        qtbot.mouseClick(b, LEFT)
        clicked.append(b.text() or b.objectName())
        qtbot.waitUntil(lambda: not chat.is_busy(), timeout=120000)
    assert {"Send", "Regenerate", "New chat", "Delete", "R1 defaults", "Unload", "Edit"} <= set(clicked), clicked
    assert error_reports == []
