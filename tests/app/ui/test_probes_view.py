"""The Probes tab on the real SmolLM2 models: run a small set on Q8_0 and Q4_K_M with a judge, stop mid-run,
resume, see the grid, plots and summary fill, open a transcript by clicking a cell, export; a bad set is one
error dialog."""
from __future__ import annotations

import json
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication, QFileDialog

from app.ui.main_window import TAB_PROBES
from app.ui.probes_plots import TranscriptDialog

SET = '''# Purpose: GUI test
name = "gui test"
subjects = ["cats", "the sea"]
[sampling]
greedy = true
max_tokens = 10
[[templates]]
text = "Tell me a joke about {subject}."
[[templates]]
id = "fact"
text = "Tell me one fact about {subject}."
'''


def _click_tab(qtbot, window, index):
    bar = window.tabs.tabBar()
    qtbot.mouseClick(bar, Qt.MouseButton.LeftButton, pos=bar.tabRect(index).center())
    assert window.tabs.currentIndex() == index


def test_probe_run_stop_resume_transcript_export(window, library_models, qtbot, tmp_path, monkeypatch):
    q8, q4 = library_models("Q8_0", "Q4_K_M")
    window.library.refresh_now()
    view = window.probes
    _click_tab(qtbot, window, TAB_PROBES)
    qtbot.waitUntil(lambda: view.models.count() == 2, timeout=10000)
    assert set(view.checked_models()) == {str(q8), str(q4)}
    assert view.set_combo.count() == 5                                   # the built-in sets
    set_file = tmp_path / "gui.toml"
    set_file.write_text(SET, encoding="utf-8")
    view.open_set(set_file)
    assert "2 templates × 2 subjects" in view.set_info.text() and view.max_tokens.value() == 10
    view.judge.setFocus()
    qtbot.keyClick(view.judge, Qt.Key.Key_Down)                          # the first model as judge
    assert view.judge.currentData() in (str(q8), str(q4))
    view.parallel.setValue(2)
    window.settings.threads = 2

    qtbot.mouseClick(view.run_button, Qt.MouseButton.LeftButton)
    assert view.is_busy() and view.stop_button.isEnabled() and not view.run_button.isEnabled()
    qtbot.waitUntil(lambda: len(view.results()) >= 2, timeout=300000)
    qtbot.mouseClick(view.stop_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not view.is_busy(), timeout=120000)
    stopped = len(view.results())
    assert 2 <= stopped < 8 and view.progress.format().startswith("stopped")
    run_id = view._run.run_id

    qtbot.mouseClick(view.resume_button, Qt.MouseButton.LeftButton)
    assert view._run.run_id == run_id and view._run.resumed == stopped
    qtbot.waitUntil(lambda: not view.is_busy(), timeout=600000)
    assert view.progress.format().startswith("done")
    results = view.results()
    assert len(results) == 8 and all(r.judge_score in (1, 2, 3, 4, 5) for r in results)

    # the grid: 4 rows (template · subject) x 2 models, every cell filled and coloured
    assert view.grid.rowCount() == 4 and view.grid.columnCount() == 2
    assert view.grid.horizontalHeaderItem(0).text() == q8.name
    for row in range(4):
        for col in range(2):
            text = view.grid.item(row, col).text()
            assert "tok" in text and "J" in text, text
    # the plots got the numbers, the summary says what changed
    width, counts = view.length_plot.counts()
    assert [sum(c) for c in counts] == [4, 4]
    assert "Wilson" in view.summary.toPlainText() and "refusals" in view.summary.toPlainText()

    # click a cell: the transcript with prompt, answer, flags and the judge's prompt
    item = view.grid.item(1, 1)
    rect = view.grid.visualItemRect(item)
    qtbot.mouseClick(view.grid.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    dialogs = [w for w in QApplication.topLevelWidgets() if isinstance(w, TranscriptDialog) and w.isVisible()]
    assert len(dialogs) == 1
    html = dialogs[0].text.toPlainText()
    cell = view.cell_results(1, 1)[0]
    assert cell.prompt in html and cell.answer[:20] in html and "Judge prompt" in html
    assert "Rate the answer's tone" in html
    dialogs[0].close()

    # export through the buttons (the save dialog answered with a path)
    out = tmp_path / "probes.json"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(out), ""))
    qtbot.mouseClick(view.export_json, Qt.MouseButton.LeftButton)
    data = json.loads(out.read_text(encoding="utf-8"))
    assert len(data["results"]) == 8 and len(data["summary"]) == 2
    out_csv = tmp_path / "probes.csv"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(out_csv), ""))
    qtbot.mouseClick(view.export_csv, Qt.MouseButton.LeftButton)
    assert out_csv.read_text(encoding="utf-8").count("\n") >= 9


def test_bad_set_is_one_error_dialog(window, qtbot, tmp_path, error_reports, monkeypatch):
    bad = tmp_path / "bad.toml"
    bad.write_text('subjects = ["a"]\n[[templates]]\ntext = "q {nothing}"\n', encoding="utf-8")
    view = window.probes
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(bad), ""))
    qtbot.mouseClick(view.open_button, Qt.MouseButton.LeftButton)
    assert len(error_reports) == 1 and "line 3" in error_reports[0].message
    assert not view.run_button.isEnabled()
    assert Path(view.set_combo.currentData()) == bad
