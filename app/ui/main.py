"""Entry point of the desktop app: ``distilldesk`` with no subcommand calls :func:`run_gui`.

``run_gui(demo=True)`` (``distilldesk --demo``) goes straight to the built-in demo: the SmolLM2 model converted
by our own quantizer, then the chat.  On a first run with no models the Library offers the same demo.
"""
from __future__ import annotations

import logging
import sys

from PySide6.QtCore import Qt
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication

from app import __version__
from app.core import paths

from .errors import install_excepthook

log = logging.getLogger(__name__)


def style_sheet() -> str:
    p = paths.resources_dir() / "style.qss"
    try:
        return p.read_text(encoding="utf-8")
    except OSError:
        log.warning("no style sheet at %s", p)
        return ""


def ensure_app() -> QApplication:
    app = QApplication.instance()
    if app is None:
        QApplication.setHighDpiScaleFactorRoundingPolicy(Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)
        app = QApplication(sys.argv[:1])
    app.setApplicationName("DistillDesk")
    app.setApplicationVersion(__version__)
    app.setOrganizationName("DistillDesk")
    icon = paths.resources_dir() / "icons" / "distilldesk.svg"
    if icon.exists():
        app.setWindowIcon(QIcon(str(icon)))
    app.setStyleSheet(style_sheet())
    # Workers run Python (the quantizer's numpy kernels, token callbacks) beside the GUI thread; a shorter GIL
    # switch interval than CPython's 5 ms lets the GUI thread in sooner, which halves the typical event-loop delay.
    sys.setswitchinterval(0.001)
    return app  # type: ignore[return-value]


def create_main_window():  # -> MainWindow (imported lazily so `import app.ui.main` stays light)
    """The main window, with a QApplication created if there is none (used by --self-test and the tests)."""
    ensure_app()
    from .main_window import MainWindow

    return MainWindow()


def run_gui(demo: bool = False) -> int:
    """Open the app; with ``demo`` set up the demo model and open the chat on it.  Returns the exit code."""
    app = ensure_app()
    win = create_main_window()
    install_excepthook(lambda: win)
    from .geometry_probe import install_from_env

    install_from_env(win)  # end-to-end tests only: nothing happens unless DISTILLDESK_TEST_GEOMETRY_FILE is set
    win.show()
    if demo:
        win.start_demo(chat=True)
    return int(app.exec())
