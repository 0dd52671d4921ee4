"""Compare view on the real SmolLM2 F16 reference and our Q4_K_M: two streaming columns, the answer coloured by
KL, the first divergence, the per-token plot and summary figures; then the eval ladder and where its figures
show up (library, quantize dialog)."""
from __future__ import annotations

import re

from PySide6.QtCore import QPoint, Qt

from app.ui import compare_render, compare_view
from app.ui.plots import kl_color

PROMPT = "What is 17 times 24?"


def test_compare_shows_real_kl_figures(window, library_models, qtbot):
    f16, q4 = library_models("F16", "Q4_K_M")
    lib, view = window.library, window.compare
    window.settings.context_size = 1024
    lib.refresh_now()
    assert lib.select_path(q4)
    qtbot.mouseClick(lib.buttons["compare"], Qt.MouseButton.LeftButton)
    assert window.tabs.currentWidget() is view
    assert view.reference_path() == f16 and view.candidate_path() == q4
    assert "F16" in view.ref_title.text() and "Q4_K_M" in view.cand_title.text()
    view.prompt.setPlainText(PROMPT)
    view.max_tokens.setValue(40)
    streamed = {"ref": 0, "cand": 0}
    qtbot.mouseClick(view.run_button, Qt.MouseButton.LeftButton)
    view._job.stream.connect(lambda name, _t: streamed.__setitem__("ref" if "reference" in name else "cand",
                                                                   streamed["ref" if "reference" in name else
                                                                            "cand"] + 1))
    assert view.is_busy() and view.stop_button.isEnabled() and not view.run_button.isEnabled()
    with qtbot.waitSignal(view.compareFinished, timeout=300000) as sig:
        pass
    r = sig.args[0]
    qtbot.waitUntil(lambda: not view.is_busy(), timeout=10000)
    # both answers streamed into their columns before the figures came
    assert streamed["ref"] >= 5 and streamed["cand"] >= 5
    assert view._ref_stream == r.reference_text and view._cand_stream == r.candidate_text
    # the figures on screen are the comparison's
    kl = [t.kl for t in r.tokens]
    assert len(kl) >= 10 and r.summary.n_tokens == len(kl)
    assert abs(r.summary.mean_kld - sum(kl) / len(kl)) < 1e-9 and r.summary.mean_kld > 0
    for label, value in compare_render.summary_rows(r):
        assert view.summary_labels[label].text() == value
    assert view.summary_labels["Mean KL"].text() == f"{r.summary.mean_kld:.5f}"
    # the Library and the Compare view show the same size, in decimal MB
    mb = {p: f"{p.stat().st_size / 1e6:.1f} MB" for p in (f16, q4)}
    assert view.summary_labels["Sizes"].text().startswith(f"{mb[f16]} → {mb[q4]} (")
    assert lib.select_path(q4) and lib.tree.currentIndex().siblingAtColumn(2).data() == mb[q4]
    assert view.plot._kl == kl and view.plot._divergence == r.first_divergence
    # the reference answer coloured token by token: one span per scored token, in the KL colour
    html = compare_render.reference_html(r.tokens, r.first_divergence)
    assert len(re.findall(r'<span style="background-color: #', html)) == len(r.tokens)
    worst = max(r.tokens, key=lambda t: t.kl)
    assert kl_color(worst.kl).name() in html
    assert view.ref_view.toPlainText().replace("\u2028", "\n").strip() == "".join(t.text for t in r.tokens).strip()
    if r.first_divergence is not None:
        off = compare_render.divergence_offset(r.tokens, r.first_divergence)
        assert r.candidate_text[:off] == r.reference_text[:off]  # same text up to the divergence
        assert 'name="divergence"' in compare_render.candidate_html(r.candidate_text, off)
        assert f"token {r.first_divergence}" in view.summary_labels["First divergence"].text()
    # a click on a bar shows that token's figures
    rect = view.plot._plot_rect()
    x = rect.left() + (len(kl) - 0.5) * rect.width() / len(kl)
    qtbot.mouseClick(view.plot, Qt.MouseButton.LeftButton, pos=QPoint(int(x), int(rect.center().y())))
    last = r.tokens[-1]
    assert view.token_info.text().startswith(f"token {len(kl) - 1} ") and f"KL {last.kl:.5f}" in view.token_info.text()


def test_eval_ladder_plots_each_bit_width_and_feeds_library_and_quantize_dialog(window, library_models,
                                                                                 hf_smollm2, qtbot):
    f16, q8, q4 = library_models("F16", "Q8_0", "Q4_K_M")
    window.library.refresh_now()
    view = window.compare
    view.set_groups(window.library.groups())
    view.set_pair(f16, q4)
    ladder = view.ladder
    assert ladder.run_button.isEnabled() and "2 quantization(s)" in ladder.caption.text()
    ladder.chunks.setValue(1)
    ladder.ctx.setValue(128)
    with qtbot.waitSignal(ladder.qualityMeasured, timeout=300000) as sig:
        qtbot.mouseClick(ladder.run_button, Qt.MouseButton.LeftButton)
    quality = sig.args[0]
    qtbot.waitUntil(lambda: not ladder.is_busy(), timeout=10000)
    rows = {r.file_type: r for r in ladder.rows}
    assert set(rows) == {"F16", "Q8_0", "Q4_K_M"} and rows["F16"].is_reference
    assert 0 < rows["Q8_0"].mean_kld < rows["Q4_K_M"].mean_kld  # more bits, closer to the reference
    assert ladder.table.rowCount() == 3
    pts = {p.label: p for p in ladder.plot.points()}
    assert set(pts) == {"Q8_0", "Q4_K_M"} and pts["Q4_K_M"].size_bytes < pts["Q8_0"].size_bytes
    assert pts["Q4_K_M"].mean_kl == rows["Q4_K_M"].mean_kld
    # the library shows the measured quality of each file
    assert quality[q4] == (rows["Q4_K_M"].mean_kld, rows["Q4_K_M"].top1_agreement)
    lib = window.library
    assert lib.select_path(q4)
    idx = lib.tree.currentIndex()
    assert idx.siblingAtColumn(5).data() == f"{rows['Q4_K_M'].mean_kld:.4f}"
    assert idx.siblingAtColumn(6).data() == f"{rows['Q4_K_M'].top1_agreement:.1%}"
    # ...and so does the quantize dialog, from the saved results
    dlg = window.open_quantize(lib.group("SmolLM2-135M-Instruct"))
    qtbot.waitUntil(lambda: dlg.facts is not None, timeout=60000)
    assert dlg.row_text("Q4_K_M")[4] == f"{rows['Q4_K_M'].mean_kld:.4f}"
    assert dlg.row_text("Q4_K_M")[0] == "Q4_K_M  (on disk)"
    assert dlg.row_text("Q6_K")[4] == "not measured"
    dlg.close()
    # a fresh view of the same model shows the saved ladder without running it again
    view.set_groups(window.library.groups())
    assert {p.label for p in view.ladder.plot.points()} == {"Q8_0", "Q4_K_M"}


# ---- issue 15: results always belong to their files; issue 10: the stored reference -----------------------------
def _pick(combo, path, qtbot):
    """Choose ``path`` in a combo box with the keyboard, as a person does (focus it, arrow keys)."""
    from PySide6.QtTest import QTest

    qtbot.mouseClick(combo, Qt.MouseButton.LeftButton)      # opens the popup: close it, keep the focus
    QTest.keyClick(combo.view() if combo.view().isVisible() else combo, Qt.Key.Key_Escape)
    want = combo.findData(str(path))
    assert want >= 0
    for _ in range(combo.count()):
        if combo.currentIndex() == want:
            return
        QTest.keyClick(combo, Qt.Key.Key_Down if combo.currentIndex() < want else Qt.Key.Key_Up)
    assert combo.currentIndex() == want


def _run(view, qtbot):
    with qtbot.waitSignal(view.compareFinished, timeout=300000) as sig:
        qtbot.mouseClick(view.run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not view.is_busy(), timeout=10000)
    return sig.args[0]


def test_compare_results_stay_with_their_files(window, library_models, qtbot):
    from PySide6.QtTest import QTest

    f16, q8, q4 = library_models("F16", "Q8_0", "Q4_K_M")
    window.settings.context_size = 512
    window.library.refresh_now()
    view = window.compare
    window.tabs.setCurrentWidget(view)
    _pick(view.reference, f16, qtbot)
    _pick(view.candidate, q4, qtbot)
    view.max_tokens.setValue(12)
    qtbot.mouseClick(view.run_button, Qt.MouseButton.LeftButton)
    # while it runs the selection is locked: the keyboard cannot change the candidate
    assert view.is_busy() and not view.candidate.isEnabled() and not view.reference.isEnabled()
    QTest.keyClick(view.candidate, Qt.Key.Key_Up)
    assert view.candidate_path() == q4
    assert not window.open_compare(f16, q8) or view.candidate_path() == q4    # Library -> Compare refused too
    with qtbot.waitSignal(view.compareFinished, timeout=300000) as sig:
        pass
    r = sig.args[0]
    qtbot.waitUntil(lambda: not view.is_busy(), timeout=10000)
    assert view.candidate_path() == q4 and view.candidate.isEnabled()
    # labelled with the files the figures came from, KL figures all with 5 decimals
    assert view.ref_title.text() == f"Reference — {f16.name}" and view.cand_title.text() == f"Candidate — {q4.name}"
    assert f"{f16.name} vs {q4.name}" in view.notice.text() and not r.reference_cached
    for label in ("Mean KL", "Median KL", "99th pct KL", "Max KL"):
        assert re.fullmatch(r"\d+\.\d{5}", view.summary_labels[label].text()), view.summary_labels[label].text()
    rect = view.plot._plot_rect()
    qtbot.mouseClick(view.plot, Qt.MouseButton.LeftButton, pos=QPoint(int(rect.left() + 2), int(rect.center().y())))
    assert view.token_info.text().startswith("token 0 ")
    # another candidate chosen: the old results are cleared, not shown under the new name
    _pick(view.candidate, q8, qtbot)
    assert view.cand_title.text() == f"Candidate — {q8.name}"
    assert view.ref_view.toPlainText() == "" and view.cand_view.toPlainText() == ""
    assert all(v.text() == "–" for v in view.summary_labels.values())
    assert view.plot._kl == [] and view.token_info.text() == compare_view.TOKEN_HINT
    assert "cleared" in view.notice.text() and q4.name in view.notice.text()
    # the same reference and prompt again: its stored answer and distributions are used
    r2 = _run(view, qtbot)
    assert r2.reference_cached and r2.reference_text == r.reference_text
    assert "stored by an earlier comparison" in view.notice.text() and q8.name in view.notice.text()
    # Fresh reference runs it again
    qtbot.mouseClick(view.fresh_reference, Qt.MouseButton.LeftButton)
    assert view.fresh_reference.isChecked()
    r3 = _run(view, qtbot)
    assert not r3.reference_cached and "stored" not in view.notice.text()
    assert r3.summary.mean_kld == r2.summary.mean_kld


def test_compare_with_an_empty_prompt_says_so(window, library_models, qtbot):
    from PySide6.QtTest import QTest

    f16, q4 = library_models("F16", "Q4_K_M")
    window.library.refresh_now()
    view = window.compare
    window.tabs.setCurrentWidget(view)
    qtbot.mouseClick(view.prompt.viewport(), Qt.MouseButton.LeftButton)
    QTest.keySequence(view.prompt, "Ctrl+A")
    QTest.keyClick(view.prompt, Qt.Key.Key_Delete)
    QTest.keyClicks(view.prompt, "   ")
    assert view.prompt.toPlainText() == "   "
    qtbot.mouseClick(view.run_button, Qt.MouseButton.LeftButton)
    assert not view.is_busy() and "Type a prompt first" in view.notice.text()


def test_ladder_keeps_the_reference_row_and_says_when_chunks_are_fewer(window, library_models, qtbot):
    from PySide6.QtTest import QTest

    f16, q8, q4 = library_models("F16", "Q8_0", "Q4_K_M")
    window.library.refresh_now()
    view = window.compare
    window.tabs.setCurrentWidget(view)
    _pick(view.reference, f16, qtbot)
    ladder = view.ladder
    for spin, value in ((ladder.chunks, "1000"), (ladder.ctx, "256")):
        qtbot.mouseClick(spin, Qt.MouseButton.LeftButton)
        QTest.keySequence(spin, "Ctrl+A")
        QTest.keyClicks(spin, value)
        QTest.keyClick(spin, Qt.Key.Key_Return)
    assert ladder.chunks.value() == 1000 and ladder.ctx.value() == 256
    with qtbot.waitSignal(ladder.qualityMeasured, timeout=600000):
        qtbot.mouseClick(ladder.run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not ladder.is_busy(), timeout=10000)
    n = ladder.rows[0].n_chunks
    assert 1 <= n < 1000
    assert f"only {n} chunk(s) of 256 tokens" in ladder.caption.text() and "1000 asked for" in ladder.caption.text()

    def types():
        return [ladder.table.item(i, 0).text() for i in range(ladder.table.rowCount())]

    assert types() == ["F16 (reference)", "Q8_0", "Q4_K_M"]
    # saved results reloaded: after changing the Reference and back, and in a restarted window
    _pick(view.reference, q8, qtbot)
    _pick(view.reference, f16, qtbot)
    assert types() == ["F16 (reference)", "Q8_0", "Q4_K_M"]
    from app.ui.main import create_main_window

    again = create_main_window()
    qtbot.addWidget(again)
    again.show()
    qtbot.waitUntil(lambda: again.library._scan_job is None, timeout=30000)
    again.compare.set_groups(again.library.groups())
    t = again.compare.ladder.table
    assert [t.item(i, 0).text() for i in range(t.rowCount())] == ["F16 (reference)", "Q8_0", "Q4_K_M"]
    again.close()
