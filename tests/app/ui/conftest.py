"""GUI test fixtures: offscreen Qt, captured error dialogs, and a fixture that FAILS any test leaving a QThread
running (napari's lesson: a leaked worker thread crashes a later test, or the interpreter at exit)."""
from __future__ import annotations

import os
import traceback

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QThread  # noqa: E402

# How long a thread that is already on its way out (quit() called) may take to finish before it counts as leaked.
_GRACE_MS = 1000


def live_qthreads(started: list[tuple[QThread, str]]) -> list[tuple[QThread, str]]:
    """The threads of ``started`` still running after the grace period."""
    alive = []
    for thread, where in started:
        try:
            running = thread.isRunning() and not thread.wait(_GRACE_MS)
        except RuntimeError:  # the C++ object is gone: the thread is certainly not running
            running = False
        if running:
            alive.append((thread, where))
    return alive


def fail_on_live_qthreads(started: list[tuple[QThread, str]]) -> None:
    alive = live_qthreads(started)
    if alive:
        names = ", ".join(t.objectName() or "QThread" for t, _ in alive)
        pytest.fail(f"{len(alive)} QThread(s) still running after the test ({names}); started at:\n"
                    + "\n".join(where for _, where in alive), pytrace=False)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """The app's cache dir (where the demo checkpoint is built) in a temporary folder too, so a demo checkpoint
    in the user's cache does not show up in the Library under test."""
    monkeypatch.setenv("DISTILLDESK_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(autouse=True)
def no_qthread_leaks(qapp, monkeypatch):
    started: list[tuple[QThread, str]] = []
    original = QThread.start

    def start(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        started.append((self, "".join(traceback.format_stack(limit=12)[:-1])))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(QThread, "start", start)
    yield started
    try:
        fail_on_live_qthreads(started)
    finally:
        # stop leaked threads anyway, so one leak does not crash the tests that follow
        from app.ui.workers import default_registry

        default_registry().shutdown(timeout_ms=30000)


@pytest.fixture
def error_reports(monkeypatch):
    """Error dialogs captured as ErrorReports instead of opening (modal) message boxes."""
    import app.ui.errors as errors

    reports: list = []
    monkeypatch.setattr(errors, "HOOK", reports.append)
    return reports


@pytest.fixture
def window(qtbot):
    """The main window (isolated data dir); closed -- all work cancelled, threads joined -- at the end."""
    from app.ui.main import create_main_window

    win = create_main_window()
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: win.library._scan_job is None, timeout=30000)  # the first listing, in a worker
    yield win
    import shiboken6

    if shiboken6.isValid(win):  # a test may have closed (and so deleted) it already
        win.close()


@pytest.fixture
def hf_smollm2(smollm2_checkpoint):
    """The SmolLM2 test checkpoint placed in the (temporary) Hugging Face cache as the Hub would lay it out, so the
    Library finds it like a downloaded model."""
    from pathlib import Path

    from quantizer.checkpoint import hf_cache_dir

    repo = hf_cache_dir() / "models--HuggingFaceTB--SmolLM2-135M-Instruct"
    snap = repo / "snapshots" / "0123456789abcdef"
    snap.mkdir(parents=True)
    for f in Path(smollm2_checkpoint).iterdir():
        (snap / f.name).symlink_to(f)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef")
    return snap


@pytest.fixture
def library_models(smollm2_gguf):
    """Factory: put our GGUFs of SmolLM2 (``recipes``) into the models folder the app lists, as the quantize
    dialog would name them; returns their paths."""
    import shutil

    from app.ui.library_model import output_path

    def make(*recipes: str):
        out = []
        for r in recipes:
            dst = output_path("SmolLM2-135M-Instruct", r)
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.exists():
                try:
                    dst.hardlink_to(smollm2_gguf(r))
                except OSError:
                    shutil.copyfile(smollm2_gguf(r), dst)
            out.append(dst)
        return out

    return make


@pytest.fixture
def chat(window, library_models, qtbot):
    """The chat view with SmolLM2 Q8_0 loaded through the Library's Chat button; greedy, 24-token replies
    (test_chat*.py)."""
    from PySide6.QtCore import Qt

    (q8,) = library_models("Q8_0")
    window.settings.context_size = 1024
    window.library.refresh_now()
    assert window.library.select_path(q8)
    with qtbot.waitSignal(window.chat.modelLoaded, timeout=60000):
        qtbot.mouseClick(window.library.buttons["chat"], Qt.MouseButton.LeftButton)
    view = window.chat
    assert window.tabs.currentWidget() is view
    view.greedy.setChecked(True)
    view.max_tokens.setValue(24)
    view.q8 = q8
    return view
