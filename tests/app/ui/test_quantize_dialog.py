"""Quantize through the dialog on the real SmolLM2 checkpoint (found in the Hugging Face cache like a downloaded
model): predictions before work, per-tensor and overall progress, the new GGUF in the Library; cancel; full disk."""
from __future__ import annotations

import collections

import pytest
from PySide6.QtCore import Qt

from app.core import paths
from app.ui.quantize_dialog import QuantizeDialog

NAME = "SmolLM2-135M-Instruct"


@pytest.fixture
def dialog(window, hf_smollm2, qtbot) -> QuantizeDialog:
    lib = window.library
    lib.refresh_now()
    g = lib.group(NAME)
    assert g is not None and g.checkpoint is not None and g.checkpoint.repo_id == "HuggingFaceTB/" + NAME
    assert lib.select_group(NAME) and lib.buttons["quantize"].isEnabled()
    qtbot.mouseClick(lib.buttons["quantize"], Qt.MouseButton.LeftButton)
    dlg = next(d for d in window._dialogs if isinstance(d, QuantizeDialog))
    assert dlg.isVisible() and not dlg.start_button.isEnabled()  # until the checkpoint has been read
    qtbot.waitUntil(lambda: dlg.facts is not None, timeout=60000)
    assert dlg.error is None and dlg.start_button.isEnabled()
    return dlg


def test_pick_a_bit_width_then_quantize(dialog, window, qtbot):
    from quantizer.recipes import RECIPES

    assert dialog.recipes() == list(RECIPES)
    assert dialog.selected_recipe() == "Q4_K_M"  # the recommended default
    est = {e.recipe: e for e in dialog.facts.estimates}
    row = dialog.row_text("Q8_0")
    assert row[2] == f"{est['Q8_0'].bits_per_weight:.2f}" and 8.4 < est["Q8_0"].bits_per_weight < 8.6
    assert row[1].startswith("≈ ") and row[3].startswith("≈ ") and row[4] == "not measured"
    assert est["F16"].size_bytes > est["Q8_0"].size_bytes > est["Q4_K_M"].size_bytes > est["Q2_K"].size_bytes
    assert all(e.ram_bytes > e.size_bytes for e in est.values())

    dialog.select_recipe("Q8_0")
    out = paths.models_dir() / NAME / f"{NAME}-Q8_0.gguf"
    assert dialog.out_label.text() == str(out) and not out.parent.exists()  # shown, not created, until started
    seen = []
    qtbot.mouseClick(dialog.start_button, Qt.MouseButton.LeftButton)
    dialog._job.progress.connect(lambda p: seen.append((p.index, p.count, dialog.tensor_label.text())))
    with qtbot.waitSignal(dialog.quantized, timeout=300000) as sig:
        pass
    assert sig.args == [out] and out.is_file()
    qtbot.waitUntil(lambda: not dialog.is_running(), timeout=10000)
    n = dialog.facts.n_tensors
    assert seen and seen[-1][:2] == (n, n)
    assert any("→ Q8_0" in label for _, _, label in seen)  # which tensor, and what it became
    assert dialog.tensor_bar.value() == dialog.tensor_bar.maximum() == n
    assert dialog.overall_bar.value() == 1000
    # the prediction was right: tensor data exactly as planned, the header (vocabulary, merges) within 1%
    assert abs(out.stat().st_size - est["Q8_0"].size_bytes) < 0.01 * out.stat().st_size
    assert dialog.result.n_bytes == out.stat().st_size
    # the new GGUF appears in the library, selected
    qtbot.waitUntil(lambda: window.library.selected_path() == out, timeout=30000)
    g = window.library.group(NAME)
    q8 = next(e for e in g.ggufs if e.file_type == "Q8_0")
    assert q8.path == out and abs(q8.bpw - est["Q8_0"].bits_per_weight) < 0.01
    qtbot.waitUntil(lambda: window.library.selected_path() == out, timeout=30000)
    assert dialog.cancel_button.text() == "Close"


def test_cancel_leaves_nothing_behind(dialog, qtbot):
    dialog.select_recipe("Q4_K_M")
    qtbot.mouseClick(dialog.start_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dialog.tensor_bar.value() >= 1, timeout=120000)
    with qtbot.waitSignal(dialog._job.cancelled, timeout=120000):
        qtbot.mouseClick(dialog.cancel_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not dialog.is_running(), timeout=10000)
    assert "Cancelled" in dialog.tensor_label.text()
    assert not (paths.models_dir() / NAME).exists()  # no GGUF, no temporary file, no empty folder
    assert dialog.start_button.isEnabled()  # ready to try again


def test_full_disk_shows_one_dialog_and_the_app_goes_on(dialog, error_reports, monkeypatch, qtbot):
    import sys

    import app.ui.quantize_dialog as qd

    conv = sys.modules["quantizer.convert"]  # the module (the package exports the function under that name)
    monkeypatch.setattr(qd, "IN_PROCESS", False)  # the patched disk must be the quantizer's: same process
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(conv.shutil, "disk_usage", lambda p: usage(10 * 2**30, 10 * 2**30 - 2**20, 2**20))
    dialog.select_recipe("Q6_K")
    qtbot.mouseClick(dialog.start_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: bool(error_reports), timeout=60000)
    (r,) = error_reports
    assert r.title == "Not enough disk space for the GGUF" and "free" in r.message
    assert "smaller bit-width" in r.advice
    qtbot.waitUntil(lambda: not dialog.is_running(), timeout=10000)
    assert not (paths.models_dir() / NAME).exists()  # nor the folder made for it
