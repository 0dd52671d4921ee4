"""The quantize dialog where files of the model exist already: it asks before replacing one (or writes beside it
under a free name), its Cancel button says it cancels during every run, and measured quality shows although a
second file of the same type is in the library.  Driven with real clicks."""
from __future__ import annotations

import shutil

from app.core.evaluate import eval_ladder
from app.ui.quantize_dialog import QuantizeDialog
from tests.app.ui.gui_driver import Answers, click, click_tree_row

NAME = "SmolLM2-135M-Instruct"


def _open_dialog(window, qtbot) -> QuantizeDialog:
    lib = window.library
    with qtbot.waitSignal(lib.refreshed, timeout=30000):
        lib.refresh()
    assert lib.select_group(NAME)
    click_tree_row(lib.tree, lib.tree.currentIndex())
    click(lib.buttons["quantize"])
    dlg = next(d for d in window._dialogs if isinstance(d, QuantizeDialog))
    qtbot.waitUntil(lambda: dlg.facts is not None, timeout=60000)
    return dlg


def test_an_existing_gguf_is_not_replaced_without_asking(window, hf_smollm2, library_models, error_reports, qtbot):
    (q4,) = library_models("Q4_K_M")
    before = (q4.stat().st_size, q4.stat().st_mtime_ns)
    dlg = _open_dialog(window, qtbot)
    assert dlg.selected_recipe() == "Q4_K_M" and "exists" in dlg.out_label.text()
    with Answers(["Cancel"]) as seen:
        click(dlg.start_button)
    assert str(q4) in seen[0].text and "Replace" in seen[0].buttons and not dlg.is_running()
    with Answers(["Keep both"]) as seen:
        click(dlg.start_button)
    beside = q4.with_name(f"{NAME}-2-Q4_K_M.gguf")
    assert beside.name in seen[0].text and dlg.is_running()
    assert dlg.cancel_button.text() == "Cancel quantizing"
    with qtbot.waitSignal(dlg.quantized, timeout=300000) as sig:
        pass
    qtbot.waitUntil(lambda: not dlg.is_running(), timeout=10000)
    assert sig.args == [beside] and beside.is_file() and (q4.stat().st_size, q4.stat().st_mtime_ns) == before
    assert dlg.cancel_button.text() == "Close"

    # a second run: the button says it cancels (it said "Close" and cancelled silently), and cancelling a
    # replacement leaves the old file as it was
    with Answers(["Replace"]):
        click(dlg.start_button)
    assert dlg.is_running() and dlg.cancel_button.text() == "Cancel quantizing"
    qtbot.waitUntil(lambda: dlg.tensor_bar.value() >= 1, timeout=120000)
    click(dlg.cancel_button)
    qtbot.waitUntil(lambda: not dlg.is_running(), timeout=120000)
    assert "Cancelled" in dlg.tensor_label.text() and dlg.isVisible()
    assert (q4.stat().st_size, q4.stat().st_mtime_ns) == before and error_reports == []
    dlg.close()


def test_measured_quality_shows_with_a_second_file_of_the_type(window, hf_smollm2, library_models, error_reports,
                                                               qtbot):
    f16, q4 = library_models("F16", "Q4_K_M")
    copy = q4.with_name(f"{NAME}-2-Q4_K_M.gguf")  # a second Q4_K_M, as "Keep both" writes it
    shutil.copyfile(q4, copy)
    (row,) = eval_ladder(f16, [copy], n_ctx=128, n_chunks=1, threads=2)[1:]  # the second one is measured
    dlg = _open_dialog(window, qtbot)
    assert sorted(e.path for e in window.library.group(NAME).ggufs if e.file_type == "Q4_K_M") == [copy, q4]
    cells = dlg.row_text("Q4_K_M")
    assert cells[4] == f"{row.mean_kld:.4f}" and cells[5] == f"{row.top1_agreement:.1%}"
    assert "135M parameters" in dlg.head.text()  # the same format as the Download dialog's "1.78B"
    dlg.close()
    assert error_reports == []


def test_errors_speak_of_the_dialog_not_of_cli_flags(window, hf_smollm2, tmp_path, error_reports, qtbot):
    from PySide6.QtCore import Qt

    bad = tmp_path / "imatrix.dat"
    bad.write_bytes(b"not an importance matrix at all")
    dlg = _open_dialog(window, qtbot)
    click(dlg.imatrix_mode)  # a person opens the combo box...
    qtbot.keyClick(dlg.imatrix_mode.view() if dlg.imatrix_mode.view().isVisible() else dlg.imatrix_mode,
                   Qt.Key.Key_Escape)
    dlg.imatrix_mode.setFocus()
    while not dlg.imatrix_mode.currentText().startswith("file"):
        qtbot.keyClick(dlg.imatrix_mode, Qt.Key.Key_Down)
    click(dlg.imatrix)
    qtbot.keyClicks(dlg.imatrix, str(bad))
    click(dlg.start_button)
    qtbot.waitUntil(lambda: bool(error_reports), timeout=120000)
    qtbot.waitUntil(lambda: not dlg.is_running(), timeout=60000)
    (r,) = error_reports
    assert str(bad) in r.message and "--" not in r.message and "Importance matrix to none" in r.message
    dlg.close()
