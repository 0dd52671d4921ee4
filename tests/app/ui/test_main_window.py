"""The main window: first run offers the demo (built by our own quantizer), `distilldesk --demo` goes straight to
its chat, the status bar, and closing the window in the middle of work cancels it and joins every thread."""
from __future__ import annotations

import time

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QApplication

from app.core import paths
from app.ui.demo_setup import DEMO_PROMPT, DemoDialog, demo_paths


def test_first_run_offers_the_demo_then_chats(window, qtbot):
    lib = window.library
    assert lib.groups() == [] and lib.stack.currentIndex() == 1  # the empty state
    assert lib.demo_button.isVisibleTo(window)
    assert window.backend_status.text().startswith("backend: ") and "memory" in window.memory_status.text()
    qtbot.mouseClick(lib.demo_button, Qt.MouseButton.LeftButton)
    dlg = next(d for d in window._dialogs if isinstance(d, DemoDialog))
    stages = []
    dlg._job.progress.connect(lambda p: stages.append(p.stage))
    with qtbot.waitSignal(window.chat.modelLoaded, timeout=600000) as sig:
        pass
    f16, q4 = demo_paths()
    assert f16.is_file() and q4.is_file() and sig.args[0].file_type == "Q4_K_M"
    assert any("F16" in s for s in stages) and any("Q4_K_M" in s for s in stages)
    assert window.tabs.currentWidget() is window.chat and window.chat.prompt.toPlainText() == DEMO_PROMPT
    qtbot.waitUntil(lambda: window.compare.candidate_path() == q4, timeout=30000)  # the listing, in a worker
    g = lib.group("SmolLM2-135M-Instruct")
    assert lib.stack.currentIndex() == 0 and g.checkpoint is not None
    assert [e.file_type for e in g.ggufs] == ["F16", "Q4_K_M"] and g.reference().path == f16
    assert (window.compare.reference_path(), window.compare.candidate_path()) == (f16, q4)
    with qtbot.waitSignal(window.chat.replyFinished, timeout=120000):
        window.chat.max_tokens.setValue(16)
        qtbot.keyClick(window.chat.prompt, Qt.Key.Key_Return)
    assert window.chat.model.message(1).content.strip()
    assert "tok/s" in window.speed_status.text() and "Q4_K_M" in window.model_status.text()


def test_distilldesk_demo_goes_straight_to_the_chat(qtbot, library_models, monkeypatch):
    """run_gui(demo=True), as `distilldesk --demo` calls it (demo files already there: it reuses them)."""
    import sys

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # run_gui installs its own
    from app.ui.main import run_gui

    assert library_models("F16", "Q4_K_M") == demo_paths()  # the demo's files, as a first run left them
    seen = {}

    def poll():
        wins = [w for w in QApplication.topLevelWidgets() if w.objectName() == "mainWindow" and w.isVisible()]
        if wins and wins[0].chat.loaded_info() is not None:
            seen["model"] = wins[0].chat.loaded_info().file_type
            seen["tab"] = wins[0].tabs.currentWidget() is wins[0].chat
            wins[0].close()  # quits the event loop (last window closed)
        elif time.monotonic() - start < 120:
            QTimer.singleShot(50, poll)
        else:
            for w in wins:
                w.close()

    start = time.monotonic()
    QTimer.singleShot(50, poll)
    assert run_gui(demo=True) == 0
    assert seen == {"model": "Q4_K_M", "tab": True}


def test_closing_during_generation_stops_and_joins(window, library_models, qtbot):
    (q8,) = library_models("Q8_0")
    with qtbot.waitSignal(window.chat.modelLoaded, timeout=60000):
        window.open_chat(q8)
    chat = window.chat
    chat.max_tokens.setValue(900)
    chat.send("Write a very long story about a lighthouse keeper.")
    qtbot.waitUntil(lambda: chat.model.message(1).answer_tokens >= 3, timeout=60000)
    t0 = time.monotonic()
    window.close()
    assert time.monotonic() - t0 < 20
    assert window.registry.live() == []
    assert chat.host is None or not chat.host._thread.isRunning()


def test_closing_during_quantize_cancels_and_leaves_no_file(window, hf_smollm2, qtbot):
    window.library.refresh_now()
    dlg = window.open_quantize(window.library.group("SmolLM2-135M-Instruct"))
    qtbot.waitUntil(lambda: dlg.facts is not None, timeout=60000)
    dlg.select_recipe("Q4_K_M")
    qtbot.mouseClick(dlg.start_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dlg.tensor_bar.value() >= 1, timeout=120000)
    window.close()
    assert window.registry.live() == []
    folder = paths.models_dir() / "SmolLM2-135M-Instruct"
    assert not folder.exists() or list(folder.iterdir()) == []
