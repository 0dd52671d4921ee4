"""The Quantize dialog ("pick a bit-width"): every recipe with its predicted size, bits per weight, RAM needed
and -- once the eval ladder has measured it for this model -- mean KL and top-1; then per-tensor and overall
progress of :func:`quantizer.convert` in a worker, and cancel.  ``quantized(Path)`` fires with the new GGUF."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.core.units import format_params, format_size

from .errors import show_error
from .job_views import StopJobsOnClose
from .library_model import GgufEntry, ModelGroup, make_folders, output_path, remove_empty_folders
from .process_job import run_in_process
from .quantize_plan import CheckpointFacts, checkpoint_facts
from .workers import Job, ThreadRegistry

# Quantize in a child process (see app.ui.process_job); tests that patch the quantizer's environment in this
# process switch it off.
IN_PROCESS = True

COLUMNS = ["Bit-width", "Predicted size", "Bits/weight", "RAM needed", "Mean KL", "Top-1", "What it is"]
DEFAULT_RECIPE = "Q4_K_M"
LOW_BIT = ("Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L")  # where an importance matrix matters (llama.cpp's KL tables)
IMATRIX_NONE, IMATRIX_COMPUTE, IMATRIX_FILE = range(3)
PLACED_FOR = {"Q2_K": "Q2_K_D", "Q3_K_M": "Q3_K_D", "Q4_K_M": "Q4_K_D", "Q5_K_M": "Q5_K_D"}  # app.core.placed


def free_path(out: Path) -> Path:
    """A name beside ``out`` that no file has: ``M-Q4_K_M.gguf`` -> ``M-2-Q4_K_M.gguf`` (the type stays last, where
    the library reads it)."""
    head, sep, tail = out.name.rpartition("-")
    for n in range(2, 1000):
        cand = out.with_name(f"{head}-{n}{sep}{tail}" if sep else f"{out.stem}-{n}{out.suffix}")
        if not cand.exists():
            return cand
    raise FileExistsError(f"no free name beside {out}: remove some of its copies")


def progress_parts(p: Any, types: dict[str, Any] | None = None) -> tuple[str, int, int, float]:
    """(label, tensors done, tensor count, overall fraction by bytes) from :class:`quantizer.convert`'s
    ``ConvertProgress`` (``tensor``, 1-based ``index`` of ``count``, ``bytes_done`` of ``bytes_total``), or from
    a plain ``(done, total)`` pair.  ``types``: the plan's GGML type per tensor, to name what it became."""
    if isinstance(p, tuple) and len(p) >= 2:
        done, total = int(p[0]), int(p[1])
        return f"tensor {done}/{total}", done, total, done / total if total else 0.0
    name = getattr(p, "tensor", "") or ""
    done, total = int(getattr(p, "index", 0)), int(getattr(p, "count", 0))
    bd, bt = getattr(p, "bytes_done", None), getattr(p, "bytes_total", None)
    overall = bd / bt if bd is not None and bt else (done / total if total else 0.0)
    qtype = (types or {}).get(name)
    label = f"{name} → {getattr(qtype, 'name', qtype)}" if qtype is not None else name
    return label, done, total, overall


class QuantizeDialog(StopJobsOnClose, QDialog):
    quantized = Signal(object)  # Path of the new GGUF
    factsReady = Signal()  # the predictions are in the table

    def __init__(self, group: ModelGroup, registry: ThreadRegistry, settings_getter,
                 quality: dict[Path, tuple[float, float]] | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("quantizeDialog")
        self.setWindowTitle(f"Quantize {group.name}")
        self.setModal(False)
        self.group = group
        self._registry = registry
        self._settings = settings_getter
        self._job: Job | None = None
        self._what = ""                # "quantizing" / "planning" while self._job runs
        self._stop_agreed = False      # Cancel was pressed, or the user agreed to stop it on closing
        self.output: Path | None = None
        self._made: list[Path] = []  # folders start() created for the output (removed again if it fails)
        self.result: Any = None
        self.facts: CheckpointFacts | None = None
        self.error: BaseException | None = None
        s = settings_getter()
        assert group.checkpoint is not None
        self._n_ctx = s.context_size
        self._quality = quality or {}
        self.head = QLabel(f"Reading {group.name}'s checkpoint…")
        self.head.setObjectName("dialogHeadline")
        self.head.setWordWrap(True)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setObjectName("recipeTable")
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().hide()
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        hh = self.table.horizontalHeader()
        hh.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        hh.setSectionResizeMode(len(COLUMNS) - 1, QHeaderView.ResizeMode.Stretch)
        self.table.itemSelectionChanged.connect(self._on_pick)
        self.table.doubleClicked.connect(lambda _i: self.start())

        self.threads = QSpinBox()
        self.threads.setRange(1, 256)
        self.threads.setValue(s.effective_threads())
        self.imatrix = QLineEdit()
        self.imatrix.setPlaceholderText("optional: an importance matrix (imatrix.gguf / .dat) improves low bit-widths")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse_imatrix)
        self.imatrix_browse = browse
        self.imatrix_mode = QComboBox()
        self.imatrix_mode.setObjectName("imatrixMode")
        self.imatrix_mode.addItems(["none", "compute (built-in calibration text)", "file"])
        self.imatrix_mode.setToolTip("An importance matrix tells the quantizer which weights the model's activations "
                                     "make important; it matters most at 2-3 bits. 'compute' runs the model's "
                                     "F16/BF16/Q8_0 GGUF (made as Q8_0 if missing) over built-in text; cached.")
        self.imatrix_mode.currentIndexChanged.connect(self._on_imatrix_mode)
        self.imatrix.textEdited.connect(lambda t: t.strip() and self.imatrix_mode.setCurrentIndex(IMATRIX_FILE))
        im_row = QHBoxLayout()
        im_row.addWidget(self.imatrix_mode)
        im_row.addWidget(self.imatrix, 1)
        im_row.addWidget(browse)
        self.out_label = QLabel()
        self.out_label.setObjectName("hintLabel")
        self.out_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        form = QFormLayout()
        th_row = QHBoxLayout()
        th_row.addWidget(self.threads)
        th_row.addStretch(1)
        form.addRow("Threads", th_row)
        form.addRow("Importance matrix", im_row)
        self.placed: Any = None  # (PlacedPlan, imatrix path) planned for the selected recipe's size
        self.place_button = QPushButton("Plan by sensitivity…")
        self.place_button.setObjectName("placeButton")
        self.place_button.setToolTip("A *_D recipe: the selected Q2_K/Q3_K_M/Q4_K_M/Q5_K_M's size, the bits placed "
                                     "where this model measures sensitive (needs an importance matrix: the file "
                                     "given, else computed), weighed by the KL divergence each tensor group "
                                     "measures on this model. The plan is shown before quantizing.")
        self.place_button.clicked.connect(self.plan_placed)
        form.addRow("Sensitivity placement", self.place_button)
        self.plan_view = QPlainTextEdit()
        self.plan_view.setObjectName("placedPlan")
        self.plan_view.setReadOnly(True)
        self.plan_view.hide()
        form.addRow("Output", self.out_label)

        self.tensor_label = QLabel("")
        self.tensor_label.setObjectName("tensorLabel")
        self.tensor_bar = QProgressBar()
        self.tensor_bar.setObjectName("tensorProgress")
        self.tensor_bar.setFormat("tensors %v / %m")
        self.tensor_bar.setRange(0, 1)
        self.tensor_bar.setValue(0)
        self.overall_bar = QProgressBar()
        self.overall_bar.setObjectName("overallProgress")
        self.overall_bar.setFormat("overall %p%")
        self.overall_bar.setRange(0, 1000)
        self.overall_bar.setValue(0)

        self.buttons = QDialogButtonBox()
        self.start_button = self.buttons.addButton("Quantize", QDialogButtonBox.ButtonRole.AcceptRole)
        self.start_button.setObjectName("quantizeStart")
        self.cancel_button = self.buttons.addButton(QDialogButtonBox.StandardButton.Cancel)
        self.cancel_button.setObjectName("quantizeCancel")
        self.start_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel_or_close)

        lay = QVBoxLayout(self)
        lay.addWidget(self.head)
        lay.addWidget(self.table, 1)
        lay.addLayout(form)
        lay.addWidget(self.plan_view)
        lay.addWidget(self.tensor_label)
        lay.addWidget(self.tensor_bar)
        lay.addWidget(self.overall_bar)
        lay.addWidget(self.buttons)
        self.resize(980, 640)
        self._on_pick()
        # reading the checkpoint's headers and tokenizer (11 MB for R1) happens in a worker
        self._facts_job: Job | None = Job(checkpoint_facts, group.checkpoint.path, registry=registry,
                                          with_progress=False, with_cancel=False, name="quantize-plan",
                                          n_ctx=self._n_ctx)
        self._facts_job.done.connect(self._on_facts)
        self._facts_job.failed.connect(self._on_facts_failed)
        self._facts_job.finished.connect(lambda: setattr(self, "_facts_job", None))
        self._facts_job.start()

    def _on_facts(self, facts: CheckpointFacts) -> None:
        self.facts = facts
        self.head.setText(self._headline(self._n_ctx))
        self._fill(self._quality)
        self.tensor_bar.setRange(0, max(1, facts.n_tensors))
        from app.core.imatrix import estimate_minutes
        from app.core.imatrix_auto import builtin_chunks

        minutes = estimate_minutes(facts.n_params, builtin_chunks())
        self.imatrix_mode.setItemText(IMATRIX_COMPUTE, f"compute (about {max(1, round(minutes))} min)")
        self.place_button.setText(f"Plan by sensitivity (about {max(1, round(self._placed_minutes()))} min)…")
        self.select_recipe(DEFAULT_RECIPE)
        self.factsReady.emit()

    def _on_facts_failed(self, e: BaseException) -> None:
        self.error = e
        self.head.setText(f"{self.group.name}: the checkpoint cannot be read ({e}).")
        self._on_pick()
        show_error(self, e, context=f"{self.group.name} cannot be quantized")

    def _headline(self, n_ctx: int) -> str:
        f = self.facts
        assert f is not None
        return (f"<b>{f.name}</b>: {format_params(f.n_params)} parameters, {f.n_layer} layers. Pick a bit-width: "
                f"smaller files run faster and need less memory, at a cost in quality (mean KL divergence from the "
                f"F16 model, measured by the eval ladder in Compare). RAM needed assumes a {n_ctx}-token context.")

    def _fill(self, quality: dict[Path, tuple[float, float]]) -> None:
        if self.facts is None:
            return
        for est in self.facts.estimates:
            i = self.table.rowCount()
            self.table.insertRow(i)
            have, q = self._on_disk(est.recipe, quality)
            if have is not None and have.file_type in ("F16", "BF16", "F32") and q is None:
                q = (0.0, 1.0) if self.group.reference() is have else None
            cells = [est.recipe + ("  (on disk)" if have else ""), "≈ " + format_size(est.size_bytes),
                     f"{est.bits_per_weight:.2f}", "≈ " + format_size(est.ram_bytes),
                     f"{q[0]:.4f}" if q else "not measured", f"{q[1]:.1%}" if q else "",
                     est.description + ("; an importance matrix matters here" if est.recipe in LOW_BIT else "")]
            for c, text in enumerate(cells):
                it = QTableWidgetItem(text)
                if c == 0:
                    it.setData(Qt.ItemDataRole.UserRole, est.recipe)
                if q is None and c in (4, 5):
                    it.setForeground(self.palette().placeholderText())
                self.table.setItem(i, c, it)

    def _on_disk(self, recipe: str, quality: dict[Path, tuple[float, float]]
                 ) -> tuple[GgufEntry | None, tuple[float, float] | None]:
        """The library's file of type ``recipe`` and its measured quality.  With several files of one type (one
        we made, one the user added), a measured one wins, then the one this dialog would write."""
        files = [e for e in self.group.ggufs if e.ok and e.file_type == recipe]
        if not files:
            return None, None
        mine = output_path(self.group.name, recipe)
        files.sort(key=lambda e: (Path(e.path) not in quality, Path(e.path) != mine))
        return files[0], quality.get(Path(files[0].path))

    def recipes(self) -> list[str]:
        return [self.table.item(r, 0).data(Qt.ItemDataRole.UserRole) for r in range(self.table.rowCount())]

    def row_text(self, recipe: str) -> list[str]:
        r = self.recipes().index(recipe)
        return [self.table.item(r, c).text() for c in range(self.table.columnCount())]

    def select_recipe(self, recipe: str) -> None:
        if recipe in self.recipes():
            self.table.selectRow(self.recipes().index(recipe))
        self._on_pick()

    def selected_recipe(self) -> str | None:
        rows = self.table.selectionModel().selectedRows()
        return self.table.item(rows[0].row(), 0).data(Qt.ItemDataRole.UserRole) if rows else None

    def _on_pick(self) -> None:
        r = self.selected_recipe()
        self.output = output_path(self.group.name, r) if r else None
        exists = self.output is not None and self.output.exists() and self._job is None
        self.out_label.setText(str(self.output or "") + ("  (exists: you will be asked before it is replaced)"
                                                         if exists else ""))
        self.start_button.setEnabled(r is not None and self._job is None and self.facts is not None)
        if self.placed is not None and self.placed[0].base_recipe != r:  # a plan holds for its recipe only
            self.placed = None
            self.plan_view.hide()
        self.start_button.setText(f"Quantize {self.placed[0].recipe}" if self.placed else "Quantize")
        self.place_button.setEnabled(r in PLACED_FOR and self._job is None and self.facts is not None)

    def plan_placed(self) -> None:
        """Measure and place (reference GGUF, importance matrix, per-tensor costs: made or reused) in a worker;
        the plan is shown and the Quantize button then makes it."""
        from app.core.placed import plan_for_checkpoint

        recipe = self.selected_recipe()
        if recipe not in PLACED_FOR or self._job is not None or self.group.checkpoint is None:
            return
        im = self.imatrix.text().strip() if self.imatrix_mode.currentIndex() == IMATRIX_FILE else ""
        args = (self.group.checkpoint.path, PLACED_FOR[recipe])
        kwargs: dict[str, Any] = {"imatrix": Path(im) if im else None, "threads": self.threads.value()}
        job = Job(run_in_process, "app.core.placed:plan_for_checkpoint", *args, registry=self._registry,
                  name="placement", **kwargs) if IN_PROCESS else \
            Job(plan_for_checkpoint, *args, registry=self._registry, name="placement", **kwargs)
        self._start(job, self._on_planned)
        self.place_button.setEnabled(False)
        self.cancel_button.setText("Cancel planning")
        self._what = "planning"
        self.tensor_label.setText(f"Planning {PLACED_FOR[recipe]}: reference GGUF, importance matrix, per-tensor "
                                  f"costs, then the KL each tensor group costs, measured on the model (about "
                                  f"{max(1, round(self._placed_minutes()))} min the first time; cached after)…")

    def _placed_minutes(self) -> float:
        from app.core.sensitivity_kl import estimate_minutes

        return estimate_minutes(self.facts.n_params, self.facts.n_layer) if self.facts is not None else 0.0

    def _on_planned(self, result: Any) -> None:
        self.placed = result
        self.plan_view.setPlainText(result[0].summary())
        self.plan_view.show()
        self.tensor_label.setText(f"Plan ready: {result[0].recipe} (below). Quantize makes it.")

    def _browse_imatrix(self) -> None:
        fn, _ = QFileDialog.getOpenFileName(self, "Importance matrix", "", "imatrix (*.gguf *.dat);;All files (*)")
        if fn:
            self.imatrix.setText(fn)
            self.imatrix_mode.setCurrentIndex(IMATRIX_FILE)

    def _on_imatrix_mode(self) -> None:
        compute = self.imatrix_mode.currentIndex() == IMATRIX_COMPUTE
        self.imatrix.setEnabled(not compute)
        self.imatrix_browse.setEnabled(not compute)

    # ---- run ------------------------------------------------------------------------------------------------
    def is_running(self) -> bool:
        return self._job is not None

    def start(self) -> None:
        import quantizer

        recipe = self.selected_recipe()
        if recipe is None or self._job is not None or self.group.checkpoint is None:
            return
        placed = self.placed[0] if self.placed is not None and self.placed[0].base_recipe == recipe else None
        out = self._ask_output(output_path(self.group.name, placed.recipe if placed else recipe))
        if out is None:
            return
        self._made = make_folders(out.parent)  # created only now that the GGUF is really written
        self.output = out
        kwargs: dict[str, Any] = {"threads": self.threads.value()}
        target, fn = "quantizer:convert", quantizer.convert
        if self.imatrix_mode.currentIndex() == IMATRIX_COMPUTE:  # the importance matrix first, then convert
            from app.core.imatrix_auto import convert_with_auto_imatrix

            target, fn = "app.core.imatrix_auto:convert_with_auto_imatrix", convert_with_auto_imatrix
        elif self.imatrix.text().strip() and self.imatrix_mode.currentIndex() != IMATRIX_NONE:
            kwargs["imatrix"] = Path(self.imatrix.text().strip())
        if placed is not None:  # the planned types, with the importance matrix they were planned with
            target, fn = "quantizer:convert", quantizer.convert
            kwargs.update(imatrix=self.placed[1], tensor_types=placed.types)
        if IN_PROCESS:  # the kernels get their own GIL: the GUI never waits for them
            job = Job(run_in_process, target, self.group.checkpoint.path, out, recipe,
                      registry=self._registry, name="quantize", **kwargs)
        else:
            job = Job(fn, self.group.checkpoint.path, out, recipe, registry=self._registry,
                      name="quantize", **kwargs)
        self._start(job, self._on_done)
        self.cancel_button.setText("Cancel quantizing")  # not "Close": the button stops the job
        self._what = "quantizing"
        self.tensor_label.setText(f"Quantizing to {placed.recipe if placed else recipe}…")
        self.out_label.setText(str(out))

    def _ask_output(self, out: Path) -> Path | None:
        """``out``, or when a file is there already: replace it, write beside it under a free name, or None."""
        if not out.exists():
            return out
        free = free_path(out)
        box = QMessageBox(QMessageBox.Icon.Question, "The file exists",
                          f"{out.name} exists already ({format_size(out.stat().st_size)}).",
                          QMessageBox.StandardButton.NoButton, self)
        box.setInformativeText(f"{out}\n\nReplace it with the new GGUF, or keep it and write the new one as "
                               f"{free.name}?")
        replace = box.addButton("Replace", QMessageBox.ButtonRole.DestructiveRole)
        keep = box.addButton(f"Keep both ({free.name})", QMessageBox.ButtonRole.AcceptRole)
        cancel = box.addButton(QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(keep)
        box.setEscapeButton(cancel)
        box.exec()
        return {replace: out, keep: free}.get(box.clickedButton())

    def cancel_or_close(self) -> None:
        if self._job is not None:
            self._stop_agreed = True
            self._job.cancel()
            self.tensor_label.setText("Cancelling… (no partial file is left behind)")
        else:
            self.reject()

    def _may_close(self) -> bool:
        """Closing the dialog (its window's X, Escape) stops a running job: ask first.  No question once Cancel
        was pressed, or when the app is quitting (it cancels through :meth:`cancel_or_close` first)."""
        if self._job is None or self._stop_agreed:
            return True
        if self._what == "quantizing":
            text = (f"{self.output.name if self.output else 'The GGUF'} is still being written. Stop quantizing "
                    f"and close? Nothing partial is kept.")
            keep_text = "Keep quantizing"
        else:
            text = "The plan is still being measured. Stop and close? What is measured so far is not kept."
            keep_text = "Keep planning"
        box = QMessageBox(QMessageBox.Icon.Question, "Quantizing is not finished", text,
                          QMessageBox.StandardButton.NoButton, self)
        stop = box.addButton("Stop and close", QMessageBox.ButtonRole.DestructiveRole)
        keep = box.addButton(keep_text, QMessageBox.ButtonRole.RejectRole)
        box.setDefaultButton(keep)
        box.setEscapeButton(keep)
        box.exec()
        if box.clickedButton() is not stop:
            return False
        self._stop_agreed = True
        return True

    def closeEvent(self, e: Any) -> None:  # noqa: N802 - Qt API
        if not self._may_close():
            e.ignore()
            return
        super().closeEvent(e)

    def reject(self) -> None:
        if self._may_close():
            super().reject()

    def _start(self, job, on_done) -> None:
        """Wire a planning or quantize job to the dialog and start it; the recipe table and Start are locked
        while it runs."""
        job.progress.connect(self._on_progress)
        job.done.connect(on_done)
        job.failed.connect(self._on_failed)
        job.cancelled.connect(self._on_cancelled)
        job.finished.connect(self._on_finished)
        self._job = job.start()
        self.table.setEnabled(False)
        self.start_button.setEnabled(False)

    def _on_progress(self, p: Any) -> None:
        recipe = self.selected_recipe()
        types = self.facts.types.get(recipe) if self.facts and recipe else None
        label, done, total, overall = progress_parts(p, types)
        self.tensor_label.setText(f"Written {label}")
        if total:
            self.tensor_bar.setRange(0, total)
        self.tensor_bar.setValue(done)
        self.overall_bar.setValue(int(overall * 1000))

    def _on_done(self, result: Any) -> None:
        self.result = result
        self.tensor_bar.setValue(self.tensor_bar.maximum())
        self.overall_bar.setValue(1000)
        size = self.output.stat().st_size if self.output and self.output.exists() else 0
        self.tensor_label.setText(f"Done: {self.output.name if self.output else ''} ({format_size(size)})")
        recipe = self.selected_recipe()
        if recipe is not None and self.output is not None and self.output.stem.endswith(recipe):  # not a *_D
            item = self.table.item(self.recipes().index(recipe), 0)
            item.setText(f"{recipe}  (on disk)")
        self.quantized.emit(self.output)

    def _on_failed(self, e: BaseException) -> None:
        remove_empty_folders(self._made)  # no empty models/<name>/ left by a failed job
        self.error = e
        self.tensor_label.setText("Failed.")
        show_error(self, e)

    def _on_cancelled(self) -> None:
        remove_empty_folders(self._made)
        self.tensor_label.setText("Cancelled; nothing was written.")
        self.tensor_bar.setValue(0)
        self.overall_bar.setValue(0)

    def _on_finished(self) -> None:
        self._job = None
        self._what, self._stop_agreed = "", False
        self.table.setEnabled(True)
        self._on_pick()
        self.cancel_button.setText("Close")

    def _running_jobs(self) -> list[Job]:
        return [job for job in (self._job, self._facts_job) if job is not None]
