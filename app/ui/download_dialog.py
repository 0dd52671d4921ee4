"""Download dialog: the catalog of distilled models plus Hub search, per-file and total progress, cancel and
resume, over :mod:`app.core.hub`.  Until that service exists the dialog says so instead of opening."""
from __future__ import annotations

import importlib.util

from PySide6.QtWidgets import QDialog, QMessageBox, QWidget

from .workers import ThreadRegistry


def hub_available() -> bool:
    return importlib.util.find_spec("app.core.hub") is not None


def open_download_dialog(registry: ThreadRegistry, parent: QWidget | None = None) -> QDialog | None:
    if not hub_available():
        box = QMessageBox(QMessageBox.Icon.Information, "Download",
                          "Downloading from the Hugging Face Hub is not available in this build yet. Put a "
                          "checkpoint in the Hugging Face cache (huggingface-cli download REPO) and press Refresh, "
                          "or add a GGUF file.", QMessageBox.StandardButton.Ok, parent)
        box.open()
        return None
    from .download_view import DownloadDialog

    dlg = DownloadDialog(registry, parent)
    dlg.show()
    return dlg
