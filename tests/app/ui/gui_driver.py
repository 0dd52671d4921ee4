"""Driving the GUI as a person does, for the tests: mouse clicks on the visible widgets, menu actions through the
menu bar, and answers to the modal dialogs the app opens (a message box, a file dialog) by clicking their buttons.

A modal dialog opened with ``exec()`` blocks the click that opened it; :class:`Answers` answers it from a timer
that runs inside that dialog's event loop, so set it up *before* the click::

    with Answers(["Remove from library"]) as seen:
        click(lib.buttons["delete"])
    assert "outside" in seen[0].text
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from PySide6.QtCore import QPoint, Qt, QTimer
from PySide6.QtTest import QTest
from PySide6.QtWidgets import (
    QAbstractButton,
    QApplication,
    QDialog,
    QFileDialog,
    QLineEdit,
    QMainWindow,
    QMenu,
    QMessageBox,
    QWidget,
)


def click(widget: QWidget, pos: QPoint | None = None) -> None:
    """A left click in the middle of ``widget`` (or at ``pos``), as QTest sends a real mouse press and release."""
    assert widget.isVisible(), f"{widget!r} is not visible: a person could not click it"
    assert widget.isEnabled(), f"{widget!r} is disabled: a person could not click it"
    QTest.mouseClick(widget, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                     pos if pos is not None else widget.rect().center())


def double_click(widget: QWidget, pos: QPoint) -> None:
    QTest.mouseDClick(widget, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, pos)


def click_tree_row(view, index) -> None:
    """Click the row of ``index`` in a QTreeView/QTableView (in its viewport, where a person clicks)."""
    view.scrollTo(index)
    click(view.viewport(), view.visualRect(index).center())


def double_click_tree_row(view, index) -> None:
    view.scrollTo(index)
    pos = view.visualRect(index).center()
    QTest.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, pos)
    double_click(view.viewport(), pos)


def wait_for(cond: Callable[[], bool], timeout_ms: int = 5000) -> bool:
    """Process events until ``cond()`` holds (True) or ``timeout_ms`` passes (False)."""
    import time

    end = time.monotonic() + timeout_ms / 1000
    while not cond():
        if time.monotonic() > end:
            return False
        QTest.qWait(10)
    return True


def _strip(text: str) -> str:
    return text.replace("&", "").strip()


def menu_actions(window: QMainWindow) -> list[tuple[str, str]]:
    """(menu title, action text) of every enabled action in the menu bar, in order."""
    out = []
    for top in window.menuBar().actions():
        menu = top.menu()
        if menu is None:
            continue
        for a in menu.actions():
            if not a.isSeparator() and a.isVisible() and a.isEnabled() and a.menu() is None:
                out.append((_strip(top.text()), _strip(a.text())))
    return out


def trigger_menu(window: QMainWindow, title: str, text: str) -> None:
    """Open the menu ``title`` by clicking it in the menu bar, then click its action ``text``."""
    bar = window.menuBar()
    top = next(a for a in bar.actions() if _strip(a.text()) == title)
    menu: QMenu = top.menu()
    click(bar, bar.actionGeometry(top).center())
    wait_for(menu.isVisible, 2000)
    assert menu.isVisible(), f"the {title} menu did not open"
    action = next(a for a in menu.actions() if _strip(a.text()) == text)
    QTest.mouseClick(menu, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                     menu.actionGeometry(action).center())


@dataclass
class Seen:
    """A modal dialog :class:`Answers` answered."""
    kind: str  # class name
    title: str
    text: str  # a message box's text + informative text; "" for other dialogs
    buttons: list[str] = field(default_factory=list)
    answer: str = ""


def _button(dialog: QDialog, wanted: str) -> QAbstractButton | None:
    for b in dialog.findChildren(QAbstractButton):
        if b.isVisible() and b.isEnabled() and _strip(b.text()).lower().startswith(wanted.lower()):
            return b
    return None


def _dismiss_button(dialog: QDialog) -> QAbstractButton | None:
    if isinstance(dialog, QMessageBox):
        esc = dialog.escapeButton()
        if esc is not None and esc.isVisible():
            return esc
    for wanted in ("Cancel", "No", "Close", "OK"):
        b = _button(dialog, wanted)
        if b is not None:
            return b
    return None


class Answers:
    """Answer the modal dialogs opened while the block runs: the n-th one by clicking its button whose text
    starts with ``answers[n]`` (an answer may also be a callable taking the dialog, e.g. to type a file name);
    dialogs beyond the list are dismissed (Cancel / No / Close / Escape).  Yields the list of :class:`Seen`."""

    def __init__(self, answers: Iterable[str | Callable[[QDialog], None]] = (),
                 ignore: Callable[[QWidget], bool] = lambda _w: False, close_popups: bool = False) -> None:
        self.answers = list(answers)
        self.seen: list[Seen] = []
        self._ignore = ignore
        self._close_popups = close_popups  # e.g. a tool button's menu (its exec() would block the click)
        self._handled: list[QWidget] = []  # the dialogs themselves: an id() is reused once one is freed
        self._when: list[float] = []
        self.stuck = False
        self._timer = QTimer()
        self._timer.setInterval(25)
        self._timer.timeout.connect(self._poll)

    def __enter__(self) -> list[Seen]:
        self._timer.start()
        return self.seen

    def __exit__(self, *exc: object) -> None:
        self._timer.stop()
        if not exc[0]:
            assert not self.stuck, f"a dialog did not close when answered: {self.seen}"

    def _poll(self) -> None:
        import time

        popup = QApplication.activePopupWidget()
        if self._close_popups and isinstance(popup, QMenu) and popup.isVisible():
            self.seen.append(Seen("QMenu", popup.title(), "", [_strip(a.text()) for a in popup.actions()],
                                  "closed"))
            popup.close()
            return
        w = QApplication.activeModalWidget()
        if not isinstance(w, QDialog) or not w.isVisible() or self._ignore(w):
            return
        old = next((i for i, h in enumerate(self._handled) if w is h), None)
        if old is not None:  # answered, yet still open: never block the test forever
            if time.monotonic() - self._when[old] > 10:
                self.seen[old].answer += " (still open after 10 s: rejected)"
                self.stuck = True
                w.reject()
            return
        self._handled.append(w)
        self._when.append(time.monotonic())
        text = ""
        if isinstance(w, QMessageBox):
            text = "\n".join(t for t in (w.text(), w.informativeText()) if t)
        seen = Seen(type(w).__name__, w.windowTitle(), text,
                    [_strip(b.text()) for b in w.findChildren(QAbstractButton) if b.isVisible()])
        self.seen.append(seen)
        answer = self.answers.pop(0) if self.answers else None
        if callable(answer):
            seen.answer = getattr(answer, "__name__", "callable")
            answer(w)
            return
        b = _button(w, answer) if answer else _dismiss_button(w)
        assert b is not None or answer is None, f"no button {answer!r} in {seen}"
        if b is None:
            seen.answer = "reject()"
            w.reject()
            return
        seen.answer = _strip(b.text())
        QTest.mouseClick(b, Qt.MouseButton.LeftButton)


def type_file_name(path) -> Callable[[QDialog], None]:
    """An answer for a (Qt's own, non-native) file dialog: type ``path`` into its file name box, press Enter."""
    def type_path(dlg: QDialog) -> None:
        assert isinstance(dlg, QFileDialog), dlg
        edit = dlg.findChild(QLineEdit, "fileNameEdit")
        assert edit is not None and edit.isVisible(), "not Qt's own file dialog"
        QTest.qWait(300)  # the dialog fills its file name box once its folder is listed: type after that
        edit.setFocus()
        edit.selectAll()
        QTest.keyClicks(edit, str(path))
        assert edit.text() == str(path), f"typed {str(path)!r}, the box says {edit.text()!r}"
        popup = edit.completer().popup() if edit.completer() else None
        if popup is not None and popup.isVisible():
            QTest.keyClick(popup, Qt.Key.Key_Escape)  # as a person closes the completion list before Enter
        QTest.keyClick(edit, Qt.Key.Key_Return)

    return type_path
