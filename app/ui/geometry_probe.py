"""A test hook for end-to-end tests in a real X server: with ``DISTILLDESK_TEST_GEOMETRY_FILE`` set, the running
app writes, a few times a second, where its named widgets are on the screen (global coordinates, in pixels) and
what they say, as JSON.  The test then clicks and types at those places with synthetic X input (xdotool), as a
person would.  Without the variable nothing is installed: the app never writes the file in normal use.

The file only reports; it never drives the app.  Written atomically (temporary file, then rename), so a reader
never sees half a file.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QPoint, QTimer
from PySide6.QtWidgets import (
    QAbstractButton,
    QApplication,
    QLabel,
    QListWidget,
    QMessageBox,
    QPlainTextEdit,
    QTabBar,
    QTextEdit,
    QWidget,
)

ENV = "DISTILLDESK_TEST_GEOMETRY_FILE"
INTERVAL_MS = 150

log = logging.getLogger(__name__)


def _rect(w: QWidget, x: int = 0, y: int = 0, width: int | None = None, height: int | None = None) -> dict:
    p = w.mapToGlobal(QPoint(x, y))
    return {"x": p.x(), "y": p.y(), "w": w.width() if width is None else width,
            "h": w.height() if height is None else height}


def _text(w: QWidget) -> str | None:
    if isinstance(w, QAbstractButton | QLabel):
        return w.text()
    if isinstance(w, QPlainTextEdit | QTextEdit):
        return w.toPlainText()
    return None


def _describe(w: QWidget) -> dict[str, Any]:
    d: dict[str, Any] = {"name": w.objectName(), "class": type(w).__name__, "enabled": w.isEnabled(),
                         **_rect(w)}
    text = _text(w)
    if text is not None:
        d["text"] = text
    if isinstance(w, QTabBar):
        d["tabs"] = [{"text": w.tabText(i), **_rect(w, r.x(), r.y(), r.width(), r.height())}
                     for i in range(w.count()) for r in [w.tabRect(i)]]
    if isinstance(w, QListWidget):
        vp = w.viewport()
        d["items"] = [{"text": w.item(i).text(), **_rect(vp, r.x(), r.y(), r.width(), r.height())}
                      for i in range(w.count()) for r in [w.visualItemRect(w.item(i)).intersected(vp.rect())]
                      if not r.isEmpty()]  # the visible part: a long title's rectangle runs past the list
    return d


def snapshot() -> dict[str, Any]:
    """Every visible top-level window and, inside it, every visible widget that has an object name (plus tab bars
    and lists, with their tabs' and items' rectangles)."""
    windows = []
    for top in QApplication.topLevelWidgets():
        if not top.isVisible():
            continue
        widgets = [_describe(w) for w in top.findChildren(QWidget)
                   if w.isVisible() and (isinstance(w, QTabBar | QListWidget)
                                         or (w.objectName() and not w.objectName().startswith("qt_")))]
        windows.append({"name": top.objectName(), "class": type(top).__name__, "title": top.windowTitle(),
                        "modal": top.isModal(), **_rect(top), "widgets": widgets,
                        "text": top.text() if isinstance(top, QMessageBox) else None})
    modal = QApplication.activeModalWidget()
    return {"pid": os.getpid(), "windows": windows, "active_modal": modal.objectName() if modal else None}


def write(path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(snapshot()), encoding="utf-8")
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # a widget deleted mid-walk, or a full disk: try again next tick
        log.debug("geometry probe: %s", e)


def install_from_env(parent: QObject) -> QTimer | None:
    """Start writing the geometry file when ``DISTILLDESK_TEST_GEOMETRY_FILE`` is set; otherwise do nothing."""
    target = os.environ.get(ENV)
    if not target:
        return None
    path = Path(target)
    timer = QTimer(parent)
    timer.setInterval(INTERVAL_MS)
    timer.timeout.connect(lambda: write(path))
    timer.start()
    log.info("writing widget geometry to %s (%s is set)", path, ENV)
    return timer
