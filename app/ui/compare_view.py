"""Compare view: one prompt through the reference and a quantization, two streaming columns, then the answer
coloured token by token by KL divergence, the first divergence marked, a per-token KL plot and the summary.
Below it, the eval ladder over all local quantizations of the model (:mod:`app.ui.ladder_panel`).

The comparison runs in a :class:`~app.ui.workers.Job` (app.core.compare.compare: the reference, then the
candidate, one model in memory at a time; a reference computed earlier comes from the store unless "Fresh
reference" is ticked); streamed text arrives through the job's ``stream`` signal, the result through ``done``.

Results are always labelled with the files they came from: the column titles name the run's files, the
selection is locked while a comparison runs, and changing the Reference or Candidate afterwards clears the
results (answers, plot, token line, summary) instead of showing them under the new names."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from . import compare_render as render
from .job_views import SingleJobView
from .ladder_panel import LadderPanel
from .library_model import ModelGroup
from .plots import KLPlot
from .worker_jobs import job_call
from .workers import Job, ThreadRegistry

DEFAULT_PROMPT = "What is 17 times 24? Explain briefly."
TOKEN_HINT = "Click a bar (or hover) to see one token's figures."


class CompareView(SingleJobView, QWidget):
    compareFinished = Signal(object)  # CompareResult
    busyChanged = Signal(bool)

    def __init__(self, registry: ThreadRegistry, settings_getter, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("compareView")
        self._registry = registry
        self._settings = settings_getter
        self._groups: list[ModelGroup] = []
        self._job: Job | None = None
        self.result: Any = None
        self._ref_stream = ""
        self._cand_stream = ""

        self.reference = QComboBox()
        self.reference.setObjectName("compareReference")
        self.candidate = QComboBox()
        self.candidate.setObjectName("compareCandidate")
        for c in (self.reference, self.candidate):
            c.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.prompt = QPlainTextEdit(DEFAULT_PROMPT)
        self.prompt.setObjectName("comparePrompt")
        self.prompt.setMaximumHeight(64)
        self.max_tokens = QSpinBox()
        self.max_tokens.setRange(1, 8192)
        self.max_tokens.setValue(256)
        self.run_button = QPushButton("Compare")
        self.run_button.setObjectName("compareRun")
        self.run_button.setDefault(True)
        self.run_button.clicked.connect(self.start)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setObjectName("compareStop")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.stop)
        self.fresh_reference = QCheckBox("Fresh reference")
        self.fresh_reference.setObjectName("compareFreshReference")
        self.fresh_reference.setToolTip("Run the reference model again instead of using its stored answer and "
                                        "distributions from an earlier comparison of this prompt")
        self.notice = QLabel("")
        self.notice.setObjectName("compareNotice")
        self.notice.setWordWrap(True)
        self._run_pair: tuple[Path, Path] | None = None
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.setFormat("")
        self.progress.setValue(0)

        form = QFormLayout()
        pick = QHBoxLayout()
        pick.addWidget(QLabel("Reference"))
        pick.addWidget(self.reference, 1)
        pick.addWidget(QLabel("Candidate"))
        pick.addWidget(self.candidate, 1)
        pick.addWidget(QLabel("Max tokens"))
        pick.addWidget(self.max_tokens)
        form.addRow(pick)
        row = QHBoxLayout()
        row.addWidget(self.prompt, 1)
        buttons = QVBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.stop_button)
        buttons.addWidget(self.fresh_reference)
        row.addLayout(buttons)
        form.addRow("Prompt", row)
        form.addRow(self.progress)
        form.addRow(self.notice)

        self.ref_title = QLabel("Reference")
        self.cand_title = QLabel("Candidate")
        for t in (self.ref_title, self.cand_title):
            t.setObjectName("columnTitle")
        self.ref_view = QTextBrowser()
        self.ref_view.setObjectName("compareReferenceText")
        self.cand_view = QTextBrowser()
        self.cand_view.setObjectName("compareCandidateText")
        cols = QGridLayout()
        cols.addWidget(self.ref_title, 0, 0)
        cols.addWidget(self.cand_title, 0, 1)
        cols.addWidget(self.ref_view, 1, 0)
        cols.addWidget(self.cand_view, 1, 1)
        columns = QWidget()
        columns.setLayout(cols)

        self.plot = KLPlot()
        self.plot.setObjectName("klPlot")
        self.plot.tokenClicked.connect(self._on_token_clicked)
        self.token_info = QLabel(TOKEN_HINT)
        self.token_info.setObjectName("hintLabel")
        self.summary_box = QGroupBox("Summary")
        self.summary_grid = QGridLayout(self.summary_box)
        self.summary_labels: dict[str, QLabel] = {}
        for i, (label, _v) in enumerate(render.summary_rows(_EMPTY)):
            value = QLabel("–")
            value.setObjectName("summaryValue")
            value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            self.summary_grid.addWidget(QLabel(label), i, 0)
            self.summary_grid.addWidget(value, i, 1)
            self.summary_labels[label] = value
        plot_box = QWidget()
        pl = QVBoxLayout(plot_box)
        pl.setContentsMargins(0, 0, 0, 0)
        pl.addWidget(self.plot, 1)
        pl.addWidget(self.token_info)
        figures = QSplitter(Qt.Orientation.Horizontal)
        figures.addWidget(plot_box)
        figures.addWidget(self.summary_box)
        figures.setStretchFactor(0, 3)
        figures.setStretchFactor(1, 1)

        self.ladder = LadderPanel(registry, settings_getter)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(columns)
        split.addWidget(figures)
        split.addWidget(self.ladder)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        split.setStretchFactor(2, 2)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(split, 1)
        self.reference.currentIndexChanged.connect(self._on_pick)
        self.candidate.currentIndexChanged.connect(self._on_pick)

    # ---- model choice ---------------------------------------------------------------------------------------
    def set_groups(self, groups: list[ModelGroup]) -> None:
        ref, cand = self.reference_path(), self.candidate_path()
        self._groups = groups
        for combo in (self.reference, self.candidate):
            combo.blockSignals(True)
            combo.clear()
            for g in groups:
                for e in g.ggufs:
                    if e.ok:
                        combo.addItem(f"{g.name} · {e.file_type}", str(e.path))  # str: findData compares
            combo.blockSignals(False)
        if ref is not None and cand is not None:
            self._select(ref, cand)
        else:
            self._default_pair()
        self._on_pick()

    def _default_pair(self) -> None:
        for g in self._groups:
            ref, quant = g.reference(), g.quantized()
            if ref is not None and quant:
                self._select(ref.path, quant[-1].path)
                return

    def set_pair(self, reference: Path, candidate: Path) -> bool:
        """Select the pair (Library → Compare, the demo); refused (False) while a comparison runs."""
        if self._job is not None:
            self.notice.setText("A comparison is running: stop it to compare other files.")
            return False
        self._select(reference, candidate)
        return True

    def _select(self, reference: Path, candidate: Path) -> None:
        for combo, p in ((self.reference, reference), (self.candidate, candidate)):
            i = combo.findData(str(p))
            if i >= 0:
                combo.setCurrentIndex(i)

    def reference_path(self) -> Path | None:
        d = self.reference.currentData()
        return Path(d) if d else None

    def candidate_path(self) -> Path | None:
        d = self.candidate.currentData()
        return Path(d) if d else None

    def _group_of(self, path: Path | None) -> ModelGroup | None:
        return next((g for g in self._groups if any(e.path == path for e in g.ggufs)), None)

    def _on_pick(self, *_: object) -> None:
        if self._job is not None:         # locked while running (a library refresh refills the boxes)
            return
        pair = (self.reference_path(), self.candidate_path())
        if self._run_pair is not None and pair != self._run_pair:
            old = " vs ".join(p.name for p in self._run_pair)
            self.clear_results()
            self.notice.setText(f"The results of {old} were cleared: the selection changed. Press Compare for "
                                "these two files.")
        if self._run_pair is None:
            self._set_titles(*pair)
        self.ladder.set_group(self._group_of(pair[0]))
        self._update_controls()

    def _set_titles(self, ref: Path | None, cand: Path | None) -> None:
        self.ref_title.setText(f"Reference — {ref.name}" if ref else "Reference")
        self.cand_title.setText(f"Candidate — {cand.name}" if cand else "Candidate")

    def clear_results(self) -> None:
        """Forget the shown comparison: answers, plot, token line, summary, titles back to the selection."""
        self.result = None
        self._run_pair = None
        self._ref_stream = self._cand_stream = ""
        self.ref_view.clear()
        self.cand_view.clear()
        self.plot.clear()
        self.token_info.setText(TOKEN_HINT)
        for v in self.summary_labels.values():
            v.setText("–")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("")
        self.notice.setText("")
        self._set_titles(self.reference_path(), self.candidate_path())

    def _update_controls(self) -> None:
        busy = self._job is not None
        ok = self.reference.currentData() is not None and self.candidate.currentData() is not None
        self.run_button.setEnabled(ok and not busy)
        self.stop_button.setEnabled(busy)
        for w in (self.reference, self.candidate, self.prompt, self.max_tokens, self.fresh_reference):
            w.setEnabled(not busy)

    # ---- run ------------------------------------------------------------------------------------------------
    def start(self) -> None:
        from app.core.compare import compare

        ref, cand = self.reference_path(), self.candidate_path()
        prompt = self.prompt.toPlainText().strip()
        if ref is None or cand is None or self._job is not None:
            return
        if not prompt:
            self.notice.setText("Type a prompt first: the message both models answer.")
            self.prompt.setFocus()
            return
        self.clear_results()
        self._run_pair = (ref, cand)
        s = self._settings()
        fn, lead, extra = job_call(compare, "app.core.compare:compare", s.load_options(),
                                   streams=("on_reference_text", "on_candidate_text"))
        job = Job(fn, *lead, ref, cand, prompt, registry=self._registry, name="compare",
                  max_tokens=self.max_tokens.value(), n_ctx=s.context_size, options=s.load_options(),
                  store=s.reference_store(), use_cache=not self.fresh_reference.isChecked(), **extra)
        job.stream.connect(self._on_stream)
        job.failed.connect(lambda _e: self._forget_run())
        job.cancelled.connect(self._forget_run)
        self._launch(job, on_done=self._on_done, on_progress=self._on_progress, busy_text="loading the reference…")

    def _forget_run(self) -> None:
        """A run that failed or was stopped shows no figures: the selection may change freely."""
        if self.result is None:
            self._run_pair = None

    def shutdown(self) -> None:
        self.stop()
        self.ladder.stop()

    def _on_stream(self, name: str, text: str) -> None:
        if name == "on_reference_text":
            self._ref_stream += text
            self._append(self.ref_view, text)
        else:
            self._cand_stream += text
            self._append(self.cand_view, text)

    @staticmethod
    def _append(view: QTextBrowser, text: str) -> None:
        cur = view.textCursor()
        cur.movePosition(cur.MoveOperation.End)
        cur.insertText(text)
        bar = view.verticalScrollBar()
        bar.setValue(bar.maximum())

    def _on_progress(self, p: Any) -> None:
        self.progress.setRange(0, max(1, p.total))
        self.progress.setValue(min(p.done, p.total))
        self.progress.setFormat(render.progress_text(p))

    def _on_done(self, result: Any) -> None:
        self.result = result
        self.show_result(result)
        self.compareFinished.emit(result)

    # ---- result ---------------------------------------------------------------------------------------------
    def show_result(self, result: Any, selected: int | None = None) -> None:
        self._run_pair = (Path(result.reference.path), Path(result.candidate.path))
        self._set_titles(*self._run_pair)
        div = result.first_divergence
        self.ref_view.setHtml(render.reference_html(result.tokens, div, selected))
        self.cand_view.setHtml(render.candidate_html(result.candidate_text,
                                                     render.divergence_offset(result.tokens, div)))
        if div is not None and selected is None:
            self.ref_view.scrollToAnchor("divergence")
            self.cand_view.scrollToAnchor("divergence")
        self.plot.set_data([r.kl for r in result.tokens], [r.text for r in result.tokens], div)
        for label, value in render.summary_rows(result):
            self.summary_labels[label].setText(value)
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.progress.setFormat("identical answers" if div is None else f"answers part at token {div}")
        self.notice.setText(render.reference_note(result))
        if result.warnings:
            self.token_info.setText("Warning: " + "; ".join(result.warnings))

    def _on_token_clicked(self, i: int) -> None:
        if self.result is None or i >= len(self.result.tokens):
            return
        r = self.result.tokens[i]
        self.token_info.setText(f"token {i} {r.text!r}: KL {r.kl:{render.KL_FORMAT}} · p(ref token) "
                                f"{r.p_ref:.3f} under the reference, {r.p_cand:.3f} under the candidate · top-1 "
                                f"{'agrees' if r.top1_match else 'differs'}")
        self.show_result(self.result, selected=i)
        self.ref_view.scrollToAnchor(f"t{i}" if i != self.result.first_divergence else "divergence")


class _Empty:
    """Stand-in result for laying out the summary grid before any comparison."""

    class summary:  # noqa: N801 - mimics the attribute
        n_tokens = 0
        mean_kld = median_kld = p99_kld = max_kld = top1_agreement = top5_overlap = None
        ppl_reference = ppl_candidate = None

    first_divergence = None

    class reference:  # noqa: N801
        size_bytes = 0

    class candidate:  # noqa: N801
        size_bytes = 0
        bits_per_weight = 0.0


_EMPTY = _Empty()
