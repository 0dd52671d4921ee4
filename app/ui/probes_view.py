"""The Probes tab: run a probe set on several models and see what changed with quantization.

Top: the set (built-in or a file), the models (checkable; the first checked is the reference), a judge, samples,
max tokens, parallel sequences and the overthinking penalty; Run / Stop / Resume, progress with ETA.  Below:
the grid of (template · subject) x model cells (reasoning length, flags, judge score, colour-coded; a click opens
the transcript), the plots, the summary with confidence intervals, and CSV/JSON export.  The run itself is
:class:`app.core.probes.runner.ProbeRun` in a :class:`~app.ui.workers.Job`; results arrive one by one with the
progress reports and are saved by the run as they finish, so Stop (or closing the app) loses nothing finished and
Resume carries on.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from app.core.probes import builtin_sets
from app.core.probes.judge import JUDGE_PROMPT
from app.core.probes.probeset import ProbeSet, load_probe_set
from app.core.probes.runner import ProbeProgress, ProbeRun
from app.core.probes.store import ProbeResult, ProbeStore
from app.core.probes.summary import results_to_csv, results_to_json, summarize, summary_table

from .errors import show_error
from .job_views import SingleJobView
from .probes_plots import ReasoningLengthPlot, SubjectScorePlot, TranscriptDialog, cell_color, cell_text
from .workers import Job, ThreadRegistry


def _run_job(run: ProbeRun, *, progress: Any, cancel: Any) -> bool:
    return run.run(progress=progress, cancel=cancel)


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "estimating…"
    m, s = divmod(int(seconds), 60)
    return f"about {m} min {s:02d} s left" if m else f"about {s} s left"


class ProbesView(SingleJobView, QWidget):
    busyChanged = Signal(bool)

    def __init__(self, registry: ThreadRegistry, settings_getter, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("probesView")
        self._registry, self._settings = registry, settings_getter
        self._job: Job | None = None
        self._run: ProbeRun | None = None
        self._set: ProbeSet | None = None
        self._results: dict[tuple, ProbeResult] = {}
        self._store: ProbeStore | None = None
        self._dialogs: list[QWidget] = []
        self._build()
        for p in builtin_sets():
            self.set_combo.addItem(p.stem, str(p))
        self.set_combo.currentIndexChanged.connect(self._on_set)
        self._on_set()

    # ---- layout ---------------------------------------------------------------------------------------------
    def _build(self) -> None:
        self.set_combo = QComboBox()
        self.set_combo.setObjectName("probeSet")
        self.open_button = QPushButton("Open set…")
        self.open_button.clicked.connect(self._open_set_dialog)
        self.set_info = QLabel()
        self.set_info.setWordWrap(True)
        self.models = QListWidget()
        self.models.setObjectName("probeModels")
        self.models.setMaximumHeight(96)
        self.add_model_button = QPushButton("Add GGUF…")
        self.add_model_button.clicked.connect(self._add_model_dialog)
        self.judge = QComboBox()
        self.judge.setObjectName("probeJudge")
        self.judge.addItem("no judge", "")
        self.judge_prompt_button = QPushButton("Judge prompt…")
        self.judge_prompt_button.clicked.connect(self._show_judge_prompt)
        self.samples, self.max_tokens, self.parallel = QSpinBox(), QSpinBox(), QSpinBox()
        self.samples.setRange(1, 1000)
        self.max_tokens.setRange(1, 131072)
        self.parallel.setRange(1, 16)
        self.parallel.setValue(4)
        self.parallel.setToolTip("probes decoded at once, one sequence each in one context")
        self.penalty = QDoubleSpinBox()
        self.penalty.setRange(0.0, 100.0)
        self.penalty.setSingleStep(1.0)
        self.penalty.setToolTip("overthinking penalty: logit bias taken off ~50 hesitation markers (0 = off)")
        self.run_button, self.stop_button = QPushButton("Run"), QPushButton("Stop")
        self.resume_button = QPushButton("Resume")
        self.run_button.setObjectName("probeRun")
        self.stop_button.setObjectName("probeStop")
        self.resume_button.setObjectName("probeResume")
        self.run_button.clicked.connect(lambda: self.start(resume=False))
        self.resume_button.clicked.connect(lambda: self.start(resume=True))
        self.stop_button.clicked.connect(self.stop)
        self.progress = QProgressBar()
        self.progress.setObjectName("probeProgress")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("")
        self.export_csv, self.export_json = QPushButton("Export CSV…"), QPushButton("Export JSON…")
        self.export_csv.clicked.connect(lambda: self._export("csv"))
        self.export_json.clicked.connect(lambda: self._export("json"))

        form = QFormLayout()
        row = QHBoxLayout()
        row.addWidget(self.set_combo, 1)
        row.addWidget(self.open_button)
        form.addRow("Probe set", row)
        form.addRow("", self.set_info)
        mrow = QHBoxLayout()
        mrow.addWidget(self.models, 1)
        mrow.addWidget(self.add_model_button, 0, Qt.AlignmentFlag.AlignTop)
        form.addRow("Models", mrow)
        opts = QHBoxLayout()
        for label, w in (("Judge", self.judge), ("", self.judge_prompt_button), ("Samples", self.samples),
                         ("Max tokens", self.max_tokens), ("Parallel", self.parallel), ("Penalty", self.penalty)):
            if label:
                opts.addWidget(QLabel(label))
            opts.addWidget(w)
        opts.addStretch(1)
        form.addRow("", opts)
        buttons = QHBoxLayout()
        for b in (self.run_button, self.stop_button, self.resume_button):
            buttons.addWidget(b)
        buttons.addWidget(self.progress, 1)
        buttons.addWidget(self.export_csv)
        buttons.addWidget(self.export_json)

        self.grid = QTableWidget()
        self.grid.setObjectName("probeGrid")
        self.grid.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.grid.cellClicked.connect(self._open_cell)
        self.grid.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.length_plot = ReasoningLengthPlot()
        self.subject_plot = SubjectScorePlot()
        plots = QSplitter(Qt.Orientation.Vertical)
        plots.addWidget(self.length_plot)
        plots.addWidget(self.subject_plot)
        self.summary = QTextBrowser()
        self.summary.setObjectName("probeSummary")
        self.tabs = QTabWidget()
        self.tabs.addTab(self.grid, "Grid")
        self.tabs.addTab(plots, "Plots")
        self.tabs.addTab(self.summary, "What changed")
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addLayout(buttons)
        lay.addWidget(self.tabs, 1)
        self._update_controls()

    # ---- inputs ---------------------------------------------------------------------------------------------
    def set_groups(self, groups: list[Any]) -> None:
        """The library's models (the main window calls this whenever the library is refreshed)."""
        paths = [Path(e.path) for g in groups for e in g.ggufs if getattr(e, "ok", True)]
        self.set_models(paths, keep_checked=True)

    def set_models(self, paths: list[Path], *, keep_checked: bool = False) -> None:
        known = {self.models.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.models.count())}
        checked = set(self.checked_models()) if keep_checked else None
        judge = self.judge.currentData()
        self.models.clear()
        while self.judge.count() > 1:
            self.judge.removeItem(1)
        for p in paths:
            item = QListWidgetItem(p.name)
            item.setData(Qt.ItemDataRole.UserRole, str(p))
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            on = checked is None or str(p) in checked or str(p) not in known      # new models come checked
            item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)
            self.models.addItem(item)
            self.judge.addItem(p.name, str(p))
        if judge:
            self.judge.setCurrentIndex(max(0, self.judge.findData(judge)))
        self._update_controls()

    def checked_models(self) -> list[str]:
        return [self.models.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.models.count())
                if self.models.item(i).checkState() == Qt.CheckState.Checked]

    def open_set(self, path: str | Path) -> None:
        """Add a probe set file to the list and select it (the "Open set…" button)."""
        i = self.set_combo.findData(str(path))
        if i < 0:
            self.set_combo.addItem(Path(path).stem, str(path))
            i = self.set_combo.count() - 1
        self.set_combo.setCurrentIndex(i)

    def _open_set_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a probe set", "", "Probe sets (*.toml)")
        if path:
            self.open_set(path)

    def _add_model_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Add a model", "", "GGUF models (*.gguf)")
        if path:
            current = [Path(self.models.item(i).data(Qt.ItemDataRole.UserRole)) for i in range(self.models.count())]
            self.set_models([*current, Path(path)], keep_checked=True)
            self.models.item(self.models.count() - 1).setCheckState(Qt.CheckState.Checked)

    def _on_set(self, *_: object) -> None:
        path = self.set_combo.currentData()
        self._set = None
        if path:
            try:
                self._set = load_probe_set(path)
            except Exception as e:  # noqa: BLE001 - a bad user file is shown, the view stays usable
                self.set_info.setText("This set cannot be used.")
                show_error(self, e)
        if self._set is not None:
            s = self._set
            self.set_info.setText(f"{s.description or s.name} — {len(s.templates)} templates × {len(s.subjects)} "
                                  f"subjects{' (checkable)' if s.checkable else ''}")
            self.samples.setValue(s.samples)
            self.max_tokens.setValue(s.sampling.max_tokens)
            self.penalty.setValue(s.sampling.overthinking_penalty)
        self._update_controls()

    def _show_judge_prompt(self) -> None:
        box = QMessageBox(QMessageBox.Icon.Information, "The judge's prompt",
                          "The judge model reads this (through its chat template) and may only answer with one "
                          "digit 1-5 (a llama.cpp grammar: root ::= [1-5]).", parent=self)
        box.setDetailedText(JUDGE_PROMPT)
        box.setObjectName("judgePromptBox")
        box.setModal(False)
        self._dialogs.append(box)
        box.finished.connect(lambda _r=0, b=box: self._dialogs.remove(b) if b in self._dialogs else None)
        box.show()

    # ---- running --------------------------------------------------------------------------------------------
    def _update_controls(self) -> None:
        busy = self._job is not None
        ready = self._set is not None and bool(self.checked_models())
        self.run_button.setEnabled(not busy and ready)
        self.resume_button.setEnabled(not busy and ready)
        self.stop_button.setEnabled(busy)
        for w in (self.set_combo, self.open_button, self.models, self.add_model_button, self.judge, self.samples,
                  self.max_tokens, self.parallel, self.penalty):
            w.setEnabled(not busy)
        has = bool(self._results)
        self.export_csv.setEnabled(has)
        self.export_json.setEnabled(has)

    def _make_run(self) -> ProbeRun:
        assert self._set is not None
        s = self._set.with_samples(self.samples.value())
        s = dataclasses.replace(s, sampling=dataclasses.replace(s.sampling, max_tokens=self.max_tokens.value()))
        settings = self._settings()
        load = settings.load_options()
        if self._store is None:
            self._store = ProbeStore()
        return ProbeRun(s, self.checked_models(), judge=self.judge.currentData() or None, store=self._store,
                        parallel=self.parallel.value(), load=load, penalty=self.penalty.value())

    def start(self, *, resume: bool = False) -> None:
        if self._job is not None:
            return
        try:
            run = self._make_run()
            run.start(resume=resume)
        except Exception as e:  # noqa: BLE001 - one dialog, in one place
            show_error(self, e)
            return
        self._run = run
        assert run.run_id is not None
        self._results = {r.key: r for r in run.store.results(run.run_id)}
        self._rebuild()
        job = Job(_run_job, run, registry=self._registry, name="probes")
        self._launch(job, on_done=self._on_done, on_progress=self._on_progress, busy_text="loading the model…")
        self.progress.setRange(0, run.total())
        self.progress.setValue(run.resumed)
        self.progress.setFormat(f"%v/%m probes{' (resumed)' if run.resumed else ''}")

    def _on_progress(self, p: ProbeProgress) -> None:
        self.progress.setRange(0, max(1, p.total))
        self.progress.setValue(p.done)
        what = "judging" if p.stage == "judge" else Path(p.model).name
        self.progress.setFormat(f"{what}: %v/%m · {_eta(p.eta_s)}")
        if p.result is not None:
            self._results[p.result.key] = p.result
            self._update_cell(p.result)
            self._update_controls()

    def _on_done(self, complete: bool) -> None:
        self.progress.setFormat("done: %v/%m" if complete else "stopped: %v/%m")
        self._refresh_figures()

    def _job_finished(self) -> None:
        super()._job_finished()
        self._refresh_figures()

    def shutdown(self) -> None:
        self.stop()
        if self._job is not None:
            self._job.wait()

    # ---- showing --------------------------------------------------------------------------------------------
    def _rows(self) -> list[tuple[str, str]]:
        assert self._run is not None
        s = self._run.set
        return [(t.id, x.name) for t in s.templates for x in s.subjects]

    def _rebuild(self) -> None:
        run = self._run
        if run is None:
            return
        rows, models = self._rows(), run.models
        self.grid.clear()
        self.grid.setRowCount(len(rows))
        self.grid.setColumnCount(len(models))
        self.grid.setHorizontalHeaderLabels([Path(m).name for m in models])
        multi = len(run.set.templates) > 1
        self.grid.setVerticalHeaderLabels([f"{t} · {s}" if multi else s for t, s in rows])
        for r in self._results.values():
            self._update_cell(r)
        self._refresh_figures()
        self._update_controls()

    def cell_results(self, row: int, col: int) -> list[ProbeResult]:
        if self._run is None:
            return []
        t, s = self._rows()[row]
        m = self._run.models[col]
        return sorted((r for r in self._results.values() if (r.model, r.template, r.subject) == (m, t, s)),
                      key=lambda r: r.sample)

    def _update_cell(self, r: ProbeResult) -> None:
        if self._run is None or r.model not in self._run.models:
            return
        try:
            row = self._rows().index((r.template, r.subject))
        except ValueError:
            return
        col = self._run.models.index(r.model)
        rs = self.cell_results(row, col)
        item = QTableWidgetItem(cell_text(rs))
        item.setBackground(cell_color(rs))
        item.setToolTip("click for the transcript")
        self.grid.setItem(row, col, item)

    def _open_cell(self, row: int, col: int) -> None:
        rs = self.cell_results(row, col)
        if not rs:
            return
        dlg = TranscriptDialog(rs, self)
        self._dialogs.append(dlg)
        dlg.finished.connect(lambda _r=0, d=dlg: self._dialogs.remove(d) if d in self._dialogs else None)
        dlg.show()

    def _refresh_figures(self) -> None:
        run = self._run
        if run is None:
            return
        results = list(self._results.values())
        names = [Path(m).name for m in run.models]
        self.length_plot.set_data([(n, [r.reasoning_tokens for r in results if r.model == m])
                                   for n, m in zip(names, run.models, strict=True)])
        subjects = [x.name for x in run.set.subjects]
        judged = any(r.judge_score is not None for r in results)
        values: dict[tuple[str, str], float] = {}
        for m, n in zip(run.models, names, strict=True):
            for s in subjects:
                rs = [r for r in results if r.model == m and r.subject == s]
                if not rs:
                    continue
                if judged:
                    sc = [r.judge_score for r in rs if r.judge_score is not None]
                    if sc:
                        values[(s, n)] = sum(sc) / len(sc)
                elif run.set.checkable:
                    values[(s, n)] = sum(1 for r in rs if r.correct) / len(rs)
                else:
                    values[(s, n)] = sum(r.reasoning_tokens for r in rs) / len(rs)
        what, top = (("judge score (1-5)", 5.0) if judged else ("accuracy", 1.0) if run.set.checkable
                     else ("mean reasoning tokens", max(values.values(), default=1.0)))
        self.subject_plot.set_data(subjects, names, values, what, top)
        text = summary_table(summarize(results, run.models)) if results else "no results yet"
        self.summary.setPlainText(f"{run.set.name}: what changed with quantization (first model = reference; "
                                  f"95% Wilson intervals)\n\n{text}")

    def results(self) -> list[ProbeResult]:
        return list(self._results.values())

    def _export(self, kind: str) -> None:
        path, _ = QFileDialog.getSaveFileName(self, f"Export {kind.upper()}", f"probes.{kind}",
                                              f"{kind.upper()} (*.{kind})")
        if path:
            self.export_to(Path(path), kind)

    def export_to(self, path: Path, kind: str) -> None:
        results = self.results()
        try:
            text = results_to_csv(results) if kind == "csv" else results_to_json(
                results, summarize(results, self._run.models if self._run else []))
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
        except OSError as e:
            show_error(self, e)
