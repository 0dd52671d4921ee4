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


def test_closing_while_quantizing_asks_first(dialog, qtbot):
    from .test_chat_use import answer_dialog

    dialog.select_recipe("Q4_K_M")
    qtbot.mouseClick(dialog.start_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dialog.tensor_bar.value() >= 1, timeout=120000)
    seen: list = []
    answer_dialog(qtbot, "Keep quantizing", seen)
    qtbot.keyClick(dialog, Qt.Key.Key_Escape)  # Escape closes a dialog: used to stop the job without a word
    assert len(seen) == 1 and "still being written" in seen[0] and "Nothing partial is kept" in seen[0]
    assert dialog.isVisible() and dialog.is_running()  # kept: the job goes on
    answer_dialog(qtbot, "Stop and close", seen)
    dialog.close()  # the window's close button
    assert len(seen) == 2 and not dialog.isVisible()
    qtbot.waitUntil(lambda: not dialog.is_running(), timeout=60000)
    assert not (paths.models_dir() / NAME).exists()  # stopped: no GGUF, no temporary file, no empty folder


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


@pytest.mark.timeout(1200)
def test_compute_importance_matrix_then_quantize(dialog, window, qtbot, monkeypatch):
    """'Importance matrix: compute' runs the model's F16 from the library over the built-in text and quantizes
    with the result: the GGUF records it as llama-quantize does.  Low-bit rows say it matters."""
    import app.core.imatrix as imx
    import app.ui.quantize_dialog as qd
    from app.core.imatrix import cached_path
    from tests.quantizer.test_recipes import read_gguf

    # the built-in text cut to its first chunk (the whole is ~21 chunks of SmolLM2 tokens: minutes on a busy
    # machine); patched in this process, so the job runs here too, with one quantizer thread (no worker processes
    # forked from a process that has run llama.cpp's OpenMP threads)
    short = imx.builtin_calibration_text()[:2000]
    monkeypatch.setattr(imx, "builtin_calibration_text", lambda: short)
    monkeypatch.setattr(qd, "IN_PROCESS", False)
    dialog.threads.setFocus()
    dialog.threads.selectAll()
    qtbot.keyClicks(dialog.threads, "1")
    assert dialog.threads.value() == 1

    assert "importance matrix matters" in dialog.row_text("Q2_K")[6]
    assert "importance matrix matters" in dialog.row_text("Q3_K_S")[6]
    assert "importance matrix" not in dialog.row_text("Q8_0")[6]
    mode = dialog.imatrix_mode
    assert [mode.itemText(i).split(" (")[0] for i in range(mode.count())] == ["none", "compute", "file"]
    assert mode.currentText() == "none" and "min)" in mode.itemText(1)
    mode.setFocus()
    qtbot.keyClick(mode, Qt.Key.Key_Down)  # none -> compute
    assert mode.currentText().startswith("compute") and not dialog.imatrix.isEnabled()
    dialog.select_recipe("Q8_0")  # the quickest quantized recipe (the flow and the metadata are what is checked)
    seen = []
    qtbot.mouseClick(dialog.start_button, Qt.MouseButton.LeftButton)
    dialog._job.progress.connect(lambda p: seen.append(p.tensor))
    out = paths.models_dir() / NAME / f"{NAME}-Q8_0.gguf"
    with qtbot.waitSignal(dialog.quantized, timeout=1100000) as sig:
        pass
    assert sig.args == [out]
    assert any(s.startswith("importance matrix: chunk") for s in seen)
    kv, _, _ = read_gguf(out)
    im = kv["quantize.imatrix.file"]
    assert im.startswith(str(cached_path("")).rsplit("/", 1)[0]) and kv["quantize.imatrix.entries_count"] == 210
    assert kv["quantize.imatrix.dataset"] == "distilldesk-calibration-v1"


@pytest.mark.timeout(1200)
def test_sensitivity_plan_shown_then_quantized(dialog, smollm2_gguf, qtbot, tmp_path):
    """'Plan by sensitivity' for Q3_K_M's size: the plan (types per tensor group and why) is shown before any
    quantizing; Quantize then makes <name>-Q3_K_D.gguf with those types, an ordinary GGUF llama.cpp loads."""
    import llama_cpp

    from app.core.imatrix import compute_imatrix
    from app.core.load_options import LoadOptions
    from tests.quantizer.test_recipes import read_gguf

    im = compute_imatrix(smollm2_gguf("Q8_0"), tmp_path / "im.gguf", chunk_size=128, n_chunks=2,
                         options=LoadOptions(n_threads=2, flash_attn="off"), use_cache=False).path
    dialog.imatrix.setFocus()
    qtbot.keyClicks(dialog.imatrix, str(im))  # typing a path chooses "file"
    assert dialog.imatrix_mode.currentText() == "file"
    dialog.select_recipe("Q4_K_S")
    assert not dialog.place_button.isEnabled()  # no *_D counterpart
    dialog.select_recipe("Q3_K_M")
    assert dialog.place_button.isEnabled() and not dialog.plan_view.isVisible()
    qtbot.mouseClick(dialog.place_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dialog.placed is not None, timeout=1000000)
    qtbot.waitUntil(lambda: not dialog.is_running(), timeout=10000)
    plan = dialog.plan_view.toPlainText()
    assert dialog.plan_view.isVisible() and plan.startswith("Q3_K_D: Q3_K_M's file type")
    assert "attn_v" in plan and "ffn_down" in plan and "predicted KL" in plan
    assert "weights measured: the KL divergence of" in plan and "min)" in plan  # how long the measuring took
    assert dialog.start_button.text() == "Quantize Q3_K_D"
    types = dialog.placed[0].types
    with qtbot.waitSignal(dialog.quantized, timeout=600000) as sig:
        qtbot.mouseClick(dialog.start_button, Qt.MouseButton.LeftButton)
    out = paths.models_dir() / NAME / f"{NAME}-Q3_K_D.gguf"
    assert sig.args == [out]
    _, got, _ = read_gguf(out)
    assert {n: got[n][0].name for n in types} == types
    llm = llama_cpp.Llama(str(out), n_ctx=64, verbose=False)  # stock llama.cpp loads it
    assert llm.create_completion("Hello", max_tokens=2)["usage"]["completion_tokens"] >= 1
    llm.close()
