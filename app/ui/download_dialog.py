"""Opening the download dialog (:mod:`app.ui.download_view`) from the Library or the menu."""
from __future__ import annotations

from PySide6.QtWidgets import QWidget

from .download_view import DownloadDialog
from .workers import ThreadRegistry


def open_download_dialog(registry: ThreadRegistry, parent: QWidget | None = None) -> DownloadDialog:
    dlg = DownloadDialog(registry, parent)
    dlg.show()
    return dlg
