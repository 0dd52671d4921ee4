"""The eval ladder panel: run :func:`app.core.evaluate.eval_ladder` over all local quantizations of a model
against its reference and plot size vs mean KL -- where each bit-width sits.  Saved results
(:func:`app.core.evaluate.load_saved_rows`) are shown as soon as the model is picked."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.core.units import format_size

from .errors import show_error
from .job_views import SingleJobView
from .library_model import ModelGroup
from .plots import LadderPlot, LadderPoint
from .worker_jobs import job_call
from .workers import Job, ThreadRegistry

COLUMNS = ["Type", "Size", "Bits/weight", "PPL", "ΔPPL", "Mean KL", "Top-1"]


def saved_rows(group: ModelGroup | None) -> list[Any]:
    """Latest saved eval row per candidate of ``group``'s reference, and the reference's own row (current files
    only)."""
    ref = group.reference() if group else None
    if ref is None:
        return []
    from app.core.evaluate import load_saved_rows

    latest: dict[tuple[str, bool], Any] = {}
    for row in load_saved_rows(ref.path, include_reference=True):  # newest first
        latest.setdefault((row.path, row.is_reference), row)
    return list(latest.values())


def quality_by_path(rows: list[Any]) -> dict[Path, tuple[float, float]]:
    return {Path(r.path): (r.mean_kld, r.top1_agreement) for r in rows if not r.is_reference}


class LadderPanel(SingleJobView, QWidget):
    qualityMeasured = Signal(object)  # {Path: (mean KL, top-1)}
    busyChanged = Signal(bool)

    def __init__(self, registry: ThreadRegistry, settings_getter, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("ladderPanel")
        self._registry = registry
        self._settings = settings_getter
        self._group: ModelGroup | None = None
        self._note = ""          # what the last run found out (chunks scored, stored reference)
        self._job: Job | None = None
        self.rows: list[Any] = []
        self.run_button = QPushButton("Run the eval ladder")
        self.run_button.setObjectName("ladderRun")
        self.run_button.clicked.connect(self.start)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.stop)
        self.chunks = QSpinBox()
        self.chunks.setRange(1, 1000)
        self.chunks.setValue(4)
        self.chunks.setToolTip("chunks of the sample text to score (more = slower, steadier figures)")
        self.ctx = QSpinBox()
        self.ctx.setRange(64, 8192)
        self.ctx.setSingleStep(64)
        self.ctx.setValue(512)
        self.fresh_reference = QCheckBox("Fresh reference")
        self.fresh_reference.setObjectName("ladderFreshReference")
        self.fresh_reference.setToolTip("Run the reference model over the text again instead of using its stored "
                                        "distributions")
        self.progress = QProgressBar()
        self.progress.setFormat("")
        self.progress.setValue(0)
        self.caption = QLabel("Pick a model with a reference and quantizations.")
        self.caption.setObjectName("hintLabel")
        self.caption.setWordWrap(True)
        top = QHBoxLayout()
        top.addWidget(self.run_button)
        top.addWidget(self.stop_button)
        top.addWidget(QLabel("chunks"))
        top.addWidget(self.chunks)
        top.addWidget(QLabel("context"))
        top.addWidget(self.ctx)
        top.addWidget(self.fresh_reference)
        top.addWidget(self.progress, 1)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setObjectName("ladderTable")
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.plot = LadderPlot()
        self.plot.setObjectName("ladderPlot")
        split = QSplitter()
        split.addWidget(self.table)
        split.addWidget(self.plot)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(top)
        lay.addWidget(self.caption)
        lay.addWidget(split, 1)
        self._update_controls()

    def set_group(self, group: ModelGroup | None) -> None:
        self._group = group
        self._note = ""
        try:
            rows = saved_rows(group)
        except Exception as e:  # noqa: BLE001 - saved results are a convenience; never fatal
            show_error(self, e, context="Reading saved eval results failed")
            rows = []
        self.show_rows(rows)
        self._update_controls()

    def _update_controls(self) -> None:
        g = self._group
        ref = g.reference() if g else None
        quants = g.quantized() if g else []
        busy = self._job is not None
        self.run_button.setEnabled(ref is not None and bool(quants) and not busy)
        self.stop_button.setEnabled(busy)
        for w in (self.chunks, self.ctx, self.fresh_reference):
            w.setEnabled(not busy)
        if g is None or ref is None:
            self.caption.setText("The eval ladder needs a reference (F16/BF16/Q8_0) and quantizations of one model.")
        elif not busy and self._note:
            self.caption.setText(self._note)
        elif not busy:
            self.caption.setText(f"{g.name}: {len(quants)} quantization(s) against {ref.file_type}, scored on the "
                                 "built-in sample text (llama-perplexity's KL divergence method).")

    def show_rows(self, rows: list[Any]) -> None:
        self.rows = list(rows)
        self.table.setRowCount(0)
        for r in sorted(self.rows, key=lambda r: -r.size_bytes):
            i = self.table.rowCount()
            self.table.insertRow(i)
            cells = [r.file_type + (" (reference)" if r.is_reference else ""), format_size(r.size_bytes),
                     f"{r.bits_per_weight:.2f}", f"{r.ppl:.3f}", f"{r.delta_ppl:+.3f}", f"{r.mean_kld:.5f}",
                     f"{r.top1_agreement:.1%}"]
            for c, text in enumerate(cells):
                self.table.setItem(i, c, QTableWidgetItem(text))
        self.plot.set_points([LadderPoint(r.file_type, r.size_bytes, r.mean_kld, r.bits_per_weight)
                              for r in self.rows if not r.is_reference])

    def start(self) -> None:
        from app.core.evaluate import eval_ladder

        g = self._group
        ref = g.reference() if g else None
        if g is None or ref is None or self._job is not None:
            return
        cands = [e.path for e in g.quantized()]
        s = self._settings()
        self._asked_chunks = self.chunks.value()
        fn, lead, extra = job_call(eval_ladder, "app.core.evaluate:eval_ladder", s.load_options())
        job = Job(fn, *lead, ref.path, cands, registry=self._registry, name="eval-ladder",
                  n_ctx=self.ctx.value(), n_chunks=self._asked_chunks, options=s.load_options(),
                  store=s.reference_store(), use_cache=not self.fresh_reference.isChecked(), **extra)
        self.caption.setText(f"Evaluating {len(cands)} quantization(s) of {g.name}…")
        self._launch(job, on_done=self._on_done, on_progress=self._on_progress, busy_text="loading the models…")

    def _on_progress(self, p: Any) -> None:
        from .compare_render import progress_text

        self.progress.setRange(0, max(1, p.total))
        self.progress.setValue(min(p.done, p.total))
        self.progress.setFormat(progress_text(p))

    def _on_done(self, rows: list[Any]) -> None:
        self.show_rows(rows)
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.progress.setFormat("done")
        self.qualityMeasured.emit(quality_by_path(rows))
        r0 = rows[0]
        notes = [f"Scored {r0.n_chunks} chunk(s) of {r0.n_ctx} tokens of {r0.text}."]
        asked = getattr(self, "_asked_chunks", r0.n_chunks)
        if r0.n_chunks < asked:
            notes.append(f"The text holds only {r0.n_chunks} chunk(s) of {r0.n_ctx} tokens, so {r0.n_chunks} were "
                         f"scored, not the {asked} asked for.")
        if r0.reference_cached:
            notes.append("The reference's distributions were stored by an earlier run (tick Fresh reference to run "
                         "it again).")
        self._note = " ".join(notes)
        self.caption.setText(self._note)

