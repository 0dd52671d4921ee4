"""Errors from the services become ONE dialog that says what to do, and the app never dies on bad input: a corrupt
or truncated GGUF picked from disk, GPU layers on a CPU-only build, a full disk, no memory, a damaged history."""
from __future__ import annotations

import errno
import sys

from app.ui import errors


def _garbage(path, n=4096):
    path.write_bytes(b"this is not a GGUF file " * (n // 24))
    return path


def test_corrupt_and_truncated_gguf_from_disk_are_refused(window, error_reports, smollm2_gguf, tmp_path, qtbot):
    lib = window.library
    truncated = tmp_path / "truncated-Q8_0.gguf"
    with open(smollm2_gguf("Q8_0"), "rb") as f:
        truncated.write_bytes(f.read(3 * 2**20))
    for bad in (_garbage(tmp_path / "corrupt.gguf"), truncated):
        with qtbot.waitSignal(lib.add_file(bad).finished, timeout=30000):
            pass
    assert [r.title for r in error_reports] == ["This model cannot be opened"] * 2
    assert "not a GGUF" in error_reports[0].message and "truncated" in error_reports[1].message
    assert "complete GGUF" in error_reports[0].advice
    assert window.settings.extra_gguf_files == []  # nothing broken was added
    assert window.isVisible()
    # a good file from anywhere on disk is added, listed and selected
    good = tmp_path / "elsewhere-Q8_0.gguf"
    good.write_bytes(smollm2_gguf("Q8_0").read_bytes())
    with qtbot.waitSignal(lib.refreshed, timeout=30000):
        lib.add_file(good)
    assert window.settings.extra_gguf_files == [str(good)] and lib.selected_path() == good
    from app.core.gguf_header import read_header

    # grouped by the model name stored in the file, not by its file name
    assert lib.group("elsewhere") is None
    assert [e.path for e in lib.group(read_header(good).name).ggufs] == [good]


def test_loading_a_truncated_gguf_fails_cleanly_then_a_good_one_loads(window, error_reports, library_models,
                                                                    tmp_path, qtbot):
    (q8,) = library_models("Q8_0")
    truncated = tmp_path / "cut.gguf"
    with open(q8, "rb") as f:
        truncated.write_bytes(f.read(q8.stat().st_size // 2))
    with qtbot.waitSignal(window.chat.modelFailed, timeout=60000):
        window.open_chat(truncated)
    (r,) = error_reports
    assert r.title == "This model cannot be opened" and r.kind == "ModelLoadError"
    assert window.chat.loaded_info() is None and not window.chat.send_button.isEnabled()
    assert window.model_status.text() == "no model"
    with qtbot.waitSignal(window.chat.modelLoaded, timeout=60000):
        window.open_chat(q8)
    assert window.chat.loaded_info().file_type == "Q8_0" and window.chat.send_button.isEnabled()


def test_gpu_layers_without_gpu_offload(window, error_reports, library_models, qtbot):
    from app.core.engine import gpu_backend
    from app.ui.settings_dialog import NO_GPU_REASON

    dlg = window.open_settings()
    if gpu_backend() is None:  # this build: CPU only -> greyed out, with the reason
        assert not dlg.gpu_layers.isEnabled() and dlg.gpu_layers.toolTip() == NO_GPU_REASON
        assert dlg.gpu_reason.text() == NO_GPU_REASON
    dlg.reject()
    window.settings.gpu_layers = 8  # e.g. settings carried over from a GPU machine
    (q8,) = library_models("Q8_0")
    with qtbot.waitSignal(window.chat.modelFailed if gpu_backend() is None else window.chat.modelLoaded,
                          timeout=60000):
        window.open_chat(q8)
    if gpu_backend() is None:
        (r,) = error_reports
        assert r.title == "GPU offload is not available" and "GPU layers to 0" in r.advice


def test_describe_maps_every_kind_once():
    from app.core.errors import DiskSpaceError, GenerationCancelled, HubAuthError, VocabMismatchError
    from quantizer.errors import ConversionCancelled, PickleCheckpointError

    assert errors.describe(GenerationCancelled("stopped")) is None
    assert errors.describe(ConversionCancelled("stopped")) is None
    assert errors.describe(OSError(errno.ENOSPC, "No space left on device")).title == "The disk is full"
    assert errors.describe(DiskSpaceError("need 4 GB")).title == "Not enough disk space"
    assert errors.describe(MemoryError()).title == "Not enough memory"
    assert errors.describe(VocabMismatchError("x")).title == "These two models cannot be compared"
    assert errors.describe(HubAuthError("401")).title == "Access to this repository was refused"
    assert errors.describe(PickleCheckpointError("bin")).title == "Unsafe checkpoint format"
    r = errors.describe(KeyError("boom"))
    assert r.title == "Unexpected error" and "keeps running" in r.advice and "KeyError" in r.detail


def test_uncaught_exception_in_a_slot_shows_the_dialog(window, error_reports, monkeypatch):
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    errors.install_excepthook(lambda: window)
    try:
        raise RuntimeError("a bug")
    except RuntimeError as e:
        sys.excepthook(type(e), e, e.__traceback__)
    assert error_reports[-1].title == "Unexpected error" and "a bug" in error_reports[-1].message


def test_delete_asks_first(window, library_models, qtbot):
    from tests.app.ui.gui_driver import Answers, click

    q8, q4 = library_models("Q8_0", "Q4_K_M")
    lib = window.library
    lib.refresh_now()
    assert lib.select_path(q4)
    with Answers(["Cancel"]) as seen:
        click(lib.buttons["delete"])
    assert q4.exists() and str(q4) in seen[0].text and "cannot be undone" in seen[0].text
    with Answers([f"Delete {q4.name}"]), qtbot.waitSignal(lib.refreshed, timeout=60000):
        click(lib.buttons["delete"])
    assert not q4.exists() and q8.exists()
    assert [e.file_type for e in lib.group("SmolLM2-135M-Instruct").ggufs] == ["Q8_0"]


def test_damaged_history_is_set_aside_with_a_message(error_reports, qtbot):
    from app.core import paths
    from app.ui.main import create_main_window

    _garbage(paths.history_db())
    win = create_main_window()
    qtbot.addWidget(win)
    (r,) = error_reports
    assert r.title == "The chat history was damaged" and "set aside" in r.message
    assert list(paths.data_dir().glob("history.sqlite3.corrupt-*"))
    assert win.chat.conversations.store() is not None  # a fresh history works
    win.close()


def test_a_file_that_is_no_gguf_gets_advice_about_files_only(window, error_reports, tmp_path, qtbot):
    """Added through File → Add GGUF file…: the advice is about picking a GGUF, not about smaller quantizations
    (nothing to do with a file that is not a model) nor command-line flags."""
    from tests.app.ui.gui_driver import Answers, trigger_menu, type_file_name

    bad = _garbage(tmp_path / "notes-Q4_K_M.gguf")
    with Answers([type_file_name(bad)]):
        trigger_menu(window, "File", "Add GGUF file…")
    qtbot.waitUntil(lambda: bool(error_reports), timeout=30000)
    (r,) = error_reports
    assert r.title == "This model cannot be opened" and "not a GGUF" in r.message
    assert "smaller" not in r.advice and "--" not in r.advice and "Add GGUF" in r.advice
