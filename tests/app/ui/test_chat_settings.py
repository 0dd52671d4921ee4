"""Issue 14 §4: the chat's sampling controls and system prompt, changed with the keyboard and mouse, are there
again after closing and reopening the app; the seed control reaches the sampling settings."""
from __future__ import annotations

import json

from PySide6.QtCore import Qt

from app.ui.settings import settings_path

LEFT = Qt.MouseButton.LeftButton


def retype(qtbot, spin, text: str) -> None:
    spin.setFocus()
    qtbot.keyClick(spin, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier)
    qtbot.keyClicks(spin, text)
    qtbot.keyClick(spin, Qt.Key.Key_Tab)


def test_sampling_settings_survive_a_restart(window, qtbot):
    from app.ui.main import create_main_window

    chat = window.chat
    window.tabs.setCurrentWidget(chat)
    assert chat.seed.text() == "random" and chat.sampling().seed is None
    retype(qtbot, chat.temperature, "1.1")
    retype(qtbot, chat.top_p, "0.8")
    retype(qtbot, chat.max_tokens, "512")
    retype(qtbot, chat.seed, "42")
    qtbot.mouseClick(chat.system_toggle, LEFT)
    qtbot.keyClicks(chat.system_prompt, "Be brief.")
    s = chat.sampling()
    assert (round(s.temperature, 2), round(s.top_p, 2), s.max_tokens, s.seed, s.greedy) == (1.1, 0.8, 512, 42, False)
    qtbot.mouseClick(chat.greedy, LEFT)
    assert chat.greedy.isChecked() and not chat.temperature.isEnabled()
    window.close()
    saved = json.loads(settings_path().read_text(encoding="utf-8"))
    assert (saved["temperature"], saved["top_p"], saved["max_tokens"], saved["seed"], saved["greedy"],
            saved["system_prompt"]) == (1.1, 0.8, 512, 42, True, "Be brief.")

    again = create_main_window()
    qtbot.addWidget(again)
    again.show()
    c = again.chat
    try:
        assert (round(c.temperature.value(), 2), round(c.top_p.value(), 2), c.max_tokens.value(), c.seed.value(),
                c.greedy.isChecked(), c.system_prompt.toPlainText()) == (1.1, 0.8, 512, 42, True, "Be brief.")
        assert c.sampling().seed == 42
        # "R1 defaults" is saved too; "random" is the seed's lowest value
        qtbot.mouseClick(c.sampling_bar.r1_button, LEFT)
        retype(qtbot, c.seed, "0")
        qtbot.keyClick(c.seed, Qt.Key.Key_Down)
        assert c.seed.text() == "random" and c.sampling().seed is None
        qtbot.waitUntil(lambda: json.loads(settings_path().read_text(encoding="utf-8"))["seed"] == -1)
        saved = json.loads(settings_path().read_text(encoding="utf-8"))
        assert (saved["temperature"], saved["top_p"], saved["greedy"]) == (0.6, 0.95, False)
    finally:
        again.close()
