"""Settings' "Open" buttons where no file manager can open a folder (the offscreen platform has none, as a
bare desktop may not), and the About box, reached through the menus with real clicks."""
from __future__ import annotations

from PySide6.QtWidgets import QLabel, QPushButton

from app import __version__
from app.core import paths
from app.ui.settings_dialog import SettingsDialog
from tests.app.ui.gui_driver import Answers, click, trigger_menu


def test_open_says_when_no_file_manager_can_open_the_folder(window, qtbot):
    paths.models_dir().mkdir(parents=True, exist_ok=True)
    trigger_menu(window, "File", "Settings…")
    dlg = next(d for d in window._dialogs if isinstance(d, SettingsDialog))
    qtbot.waitUntil(dlg.isVisible, timeout=5000)
    opens = [b for b in dlg.findChildren(QPushButton) if b.text() == "Open" and b.isVisible()]
    assert len(opens) == 4
    row = opens[1].parentWidget()
    shown = row.findChild(QLabel, "pathLabel").text()
    assert shown == str(paths.models_dir())
    assert not dlg.open_note.isVisible()
    click(opens[1])
    assert dlg.open_note.isVisible()
    assert "No file manager" in dlg.open_note.text() and str(paths.models_dir()) in dlg.open_note.text()
    dlg.reject()


def test_about_names_the_version(window, qtbot):
    with Answers(["OK"]) as seen:
        trigger_menu(window, "Help", "About DistillDesk")
    (box,) = seen
    assert f"DistillDesk {__version__}" in box.text
