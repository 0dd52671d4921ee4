"""Every button of every view, and every menu action, clicked as a person clicks them (issue 14 §0).

The main window is set up with a model that has a checkpoint, an F16 and a Q4_K_M; then each tab (Library,
Chat, Compare with its eval ladder, and any tab added later) is opened by clicking its tab, and every visible,
enabled QPushButton / QToolButton in it is clicked with a real mouse event -- in a few states (each Library row
selected; the Chat with a loaded model and a typed prompt).  Dialogs the clicks open are walked the same way
(Quantize, Download, Settings, ...); modal ones (questions, file dialogs, About) are answered with their
dismissing button.  Then every menu action is triggered through the menu bar, Quit last.

The test fails when any click raises: an exception escaping a slot reaches the app's excepthook, which shows the
"Unexpected error" dialog (captured here), and pytest-qt fails on exceptions in Qt virtual methods.  The Send
button's ``clicked(bool)`` reaching ``ChatView.send(text)`` was such a bug.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication, QDialog, QPushButton, QSpinBox, QTabBar, QToolButton, QWidget

from app.ui import errors
from tests.app.ui.gui_driver import Answers, click, click_tree_row, menu_actions, trigger_menu, wait_for

SETTLE_S = 240  # a click may start work (load a model, compare, the eval ladder): wait for it to end
PATIENCE_S = 20  # ... and when it takes longer (an importance matrix, a quantization), click Stop / Cancel
STOPPERS = ("Stop", "Cancel")


class Walker:
    def __init__(self, window, qtbot, reports) -> None:
        self.window, self.qtbot, self.reports = window, qtbot, reports
        self.clicked: list[str] = []
        self.failures: list[str] = []
        self._seen_reports = 0
        self._walked: list[QWidget] = []

    # ---- waiting --------------------------------------------------------------------------------------------
    def busy_parts(self) -> list[str]:
        """What is still working (the loaded model's worker thread lives on, so live threads do not count)."""
        w = self.window
        parts = [f"{type(d).__name__} running" for d in w._dialogs if getattr(d, "is_running", lambda: False)()]
        checks = {"chat": w.chat.is_busy(), "compare": w.compare.is_busy(), "ladder": w.compare.ladder.is_busy(),
                  "chat loading": w.chat.host is not None and w.chat.loaded_info() is None,
                  "library scan": w.library._scan_job is not None,
                  "library open": getattr(w.library, "_open_job", None) is not None,
                  "library delete": getattr(w.library, "_delete_job", None) is not None}
        return parts + [k for k, v in checks.items() if v]

    def busy(self) -> bool:
        return bool(self.busy_parts())

    def settle(self, what: str, root: QWidget | None = None) -> None:
        if root is not None and not wait_for(lambda: not self.busy(), PATIENCE_S * 1000):
            stop = next((b for b in self.buttons(root) if b.text().replace("&", "").startswith(STOPPERS)), None)
            if stop is not None:
                self.clicked.append(f"    still working after {PATIENCE_S} s: clicked {stop.text()}")
                click(stop)
        if not wait_for(lambda: not self.busy(), SETTLE_S * 1000):
            self.failures.append(f"{what}: still busy after {SETTLE_S} s ({', '.join(self.busy_parts())})")
        self.qtbot.wait(50)
        self.check(what)

    def check(self, what: str) -> None:
        new = self.reports[self._seen_reports:]
        self._seen_reports = len(self.reports)
        for r in new:
            if r.title == errors.UNEXPECTED:
                self.failures.append(f"{what}: {r.message}\n{r.detail}")

    # ---- clicking -------------------------------------------------------------------------------------------
    def top_dialogs(self) -> list[QDialog]:
        return [w for w in QApplication.topLevelWidgets()
                if isinstance(w, QDialog) and w.isVisible() and not any(w is d for d in self._walked)]

    def press(self, button: QWidget, where: str, root: QWidget | None = None) -> None:
        what = f"{where} → {button.text() or button.toolTip() or button.objectName() or type(button).__name__}"
        before = self.top_dialogs()
        self.clicked.append(what)
        # modal dialogs: dismissed (Cancel / No / Close); the window's own non-blocking ones are walked below
        with Answers(close_popups=True, ignore=lambda w: any(w is d for d in self.window._dialogs)) as seen:
            click(button)
            self.settle(what, root)
        for s in seen:
            self.clicked.append(f"    answered {s.kind} '{s.title}' with {s.answer}")
        for d in self.top_dialogs():
            if not any(d is b for b in before):
                self.walk_dialog(d, what)

    def buttons(self, root: QWidget) -> list[QWidget]:
        out = []
        for b in root.findChildren(QPushButton) + root.findChildren(QToolButton):
            if (b.isVisible() and b.isEnabled() and b.window() is root.window()
                    and not isinstance(b.parentWidget(), QTabBar)):
                out.append(b)
        return out

    def walk(self, root: QWidget, where: str, first: tuple[str, ...] = (), last: tuple[str, ...] = (),
             reopen: Callable[[], object] | None = None) -> None:
        """Click every button of ``root`` once (buttons that appear meanwhile too); texts starting with one of
        ``first`` before the others, with one of ``last`` (those that close a dialog, unload...) after them.
        ``reopen``: how to show ``root`` again when a click moved away from it (a tab)."""
        done: list[QWidget] = []
        for _ in range(300):
            if not root.isVisible() and reopen is not None:
                reopen()
            if not root.isVisible():
                return
            todo = [b for b in self.buttons(root) if not any(b is d for d in done)]
            if not todo:
                return
            todo.sort(key=lambda b: (not b.text().replace("&", "").startswith(first) if first else False,
                                     b.text().replace("&", "").startswith(last) if last else False))
            done.append(todo[0])
            self.press(todo[0], where, root)

    def walk_dialog(self, dlg: QDialog, opened_by: str) -> None:
        self._walked.append(dlg)
        where = f"{type(dlg).__name__} '{dlg.windowTitle()}' (from {opened_by})"
        self.walk(dlg, where, last=("OK", "Close", "Cancel", "Done"))
        if dlg.isVisible():
            dlg.close()
            self.settle(f"{where} closed")

    def open_tab(self, index: int) -> QWidget:
        bar = self.window.tabs.tabBar()
        click(bar, bar.tabRect(index).center())
        assert self.window.tabs.currentIndex() == index
        return self.window.tabs.widget(index)


def _type(qtbot, widget, text: str) -> None:
    click(widget)
    qtbot.keyClick(widget, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier)
    qtbot.keyClicks(widget, text)


@pytest.mark.timeout(1500)
def test_every_button_and_menu_action(window, hf_smollm2, library_models, error_reports, monkeypatch, qtbot):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # Download/Search must not reach the internet
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    errors.install_excepthook(lambda: window)  # as run_gui does: an exception in a slot -> "Unexpected error"
    f16, q4 = library_models("F16", "Q4_K_M")
    lib = window.library
    with qtbot.waitSignal(lib.refreshed, timeout=30000):
        lib.refresh()
    walker = Walker(window, qtbot, error_reports)
    t0 = time.monotonic()

    # Library: with each row selected in turn (the group with its checkpoint, the F16, the Q4_K_M)
    tabs = window.tabs
    names = [tabs.tabText(i).replace("&", "") for i in range(tabs.count())]
    lib_tab = names.index("Library")
    for path in (None, f16, q4):
        walker.open_tab(lib_tab)
        if path is None:
            assert lib.select_group("SmolLM2-135M-Instruct")
        else:
            assert lib.select_path(path)
        click_tree_row(lib.tree, lib.tree.currentIndex())
        walker.walk(lib, f"Library [{path.name if path else 'checkpoint'} selected]", last=("Delete",),
                    reopen=lambda: walker.open_tab(lib_tab))

    # Chat: with the Q4_K_M loaded and a prompt typed (short replies)
    chat_tab = names.index("Chat")
    if window.chat.loaded_info() is None or window.chat.loaded_info().file_type != "Q4_K_M":
        with qtbot.waitSignal(window.chat.modelLoaded, timeout=120000):
            window.open_chat(q4)
    chat = walker.open_tab(chat_tab)
    for spin in chat.findChildren(QSpinBox):
        if spin.objectName() == "maxTokens" or spin is getattr(chat, "max_tokens", None):
            _type(qtbot, spin, "8")
    _type(qtbot, chat.prompt, "Say hi.")
    walker.walk(chat, "Chat", first=("Send",), last=("New chat", "Delete", "Unload"),
                reopen=lambda: walker.open_tab(chat_tab))

    # Compare, and every other tab
    for i, name in enumerate(names):
        if name in ("Library", "Chat"):
            continue
        view = walker.open_tab(i)
        for spin in view.findChildren(QSpinBox):  # keep the eval ladder / probes short
            if "chunk" in spin.objectName().lower() or spin is getattr(getattr(view, "ladder", None), "chunks", None):
                _type(qtbot, spin, "1")
        walker.walk(view, name, reopen=lambda i=i: walker.open_tab(i))

    # every menu action through the menu bar, Quit last
    actions = menu_actions(window)
    assert ("File", "Quit") in actions and ("Help", "About DistillDesk") in actions
    for title, text in actions:
        if text == "Quit":
            continue
        what = f"menu {title} → {text}"
        before = walker.top_dialogs()
        walker.clicked.append(what)
        # dialogs the window keeps open without blocking (Settings is window-modal) are walked, not dismissed
        with Answers(ignore=lambda w: any(w is d for d in window._dialogs)) as seen:
            trigger_menu(window, title, text)
            walker.settle(what)
        walker.clicked.extend(f"    answered {s.kind} '{s.title}' with {s.answer}" for s in seen)
        for d in walker.top_dialogs():
            if not any(d is b for b in before):
                walker.walk_dialog(d, what)

    print(f"{len(walker.clicked)} clicks in {time.monotonic() - t0:.0f} s:\n" + "\n".join(walker.clicked))
    assert not walker.failures, "clicks that failed:\n" + "\n\n".join(walker.failures)
    # the clicks reached the views' main controls
    for expected in ("Library [checkpoint selected] → Quantize…", "Chat → Send", "menu Help → About DistillDesk",
                     "SettingsDialog 'Settings' (from menu File → Settings…) → Open"):
        assert any(c.startswith(expected) for c in walker.clicked), expected

    trigger_menu(window, "File", "Quit")
    qtbot.waitUntil(lambda: not window.isVisible(), timeout=60000)
    assert window.registry.live() == []
