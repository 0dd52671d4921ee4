"""The Quantize dialog ("pick a bit-width"): every recipe with its predicted size, bits per weight, RAM needed
and -- once the eval ladder has measured it for this model -- mean KL and top-1; then per-tensor and overall
progress of :func:`quantizer.convert` in a worker, and cancel.  ``quantized(Path)`` fires with the new GGUF."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.core.units import format_size

from .errors import show_error
from .job_views import StopJobsOnClose
from .library_model import ModelGroup, make_folders, output_path, remove_empty_folders
from .process_job import run_in_process
from .quantize_plan import CheckpointFacts, checkpoint_facts
from .workers import Job, ThreadRegistry

# Quantize in a child process (see app.ui.process_job); tests that patch the quantizer's environment in this
# process switch it off.
IN_PROCESS = True

COLUMNS = ["Bit-width", "Predicted size", "Bits/weight", "RAM needed", "Mean KL", "Top-1", "What it is"]
DEFAULT_RECIPE = "Q4_K_M"


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
        im_row = QHBoxLayout()
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
        return (f"<b>{f.name}</b>: {f.n_params / 1e9:.2f} B parameters, {f.n_layer} layers. Pick a bit-width: "
                f"smaller files run faster and need less memory, at a cost in quality (mean KL divergence from the "
                f"F16 model, measured by the eval ladder in Compare). RAM needed assumes a {n_ctx}-token context.")

    def _fill(self, quality: dict[Path, tuple[float, float]]) -> None:
        if self.facts is None:
            return
        on_disk = {e.file_type: e for e in self.group.ggufs if e.ok}
        for est in self.facts.estimates:
            i = self.table.rowCount()
            self.table.insertRow(i)
            have = on_disk.get(est.recipe)
            q = quality.get(have.path) if have else None
            if have is not None and have.file_type in ("F16", "BF16", "F32") and q is None:
                q = (0.0, 1.0) if self.group.reference() is have else None
            cells = [est.recipe + ("  (on disk)" if have else ""), "≈ " + format_size(est.size_bytes),
                     f"{est.bits_per_weight:.2f}", "≈ " + format_size(est.ram_bytes),
                     f"{q[0]:.4f}" if q else "not measured", f"{q[1]:.1%}" if q else "", est.description]
            for c, text in enumerate(cells):
                it = QTableWidgetItem(text)
                if c == 0:
                    it.setData(Qt.ItemDataRole.UserRole, est.recipe)
                if q is None and c in (4, 5):
                    it.setForeground(self.palette().placeholderText())
                self.table.setItem(i, c, it)

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
        self.out_label.setText(str(self.output) if self.output else "")
        self.start_button.setEnabled(r is not None and self._job is None and self.facts is not None)

    def _browse_imatrix(self) -> None:
        fn, _ = QFileDialog.getOpenFileName(self, "Importance matrix", "", "imatrix (*.gguf *.dat);;All files (*)")
        if fn:
            self.imatrix.setText(fn)

    # ---- run ------------------------------------------------------------------------------------------------
    def is_running(self) -> bool:
        return self._job is not None

    def start(self) -> None:
        import quantizer

        recipe = self.selected_recipe()
        if recipe is None or self._job is not None or self.group.checkpoint is None:
            return
        out = output_path(self.group.name, recipe)
        self._made = make_folders(out.parent)  # created only now that the GGUF is really written
        self.output = out
        kwargs: dict[str, Any] = {"threads": self.threads.value()}
        if self.imatrix.text().strip():
            kwargs["imatrix"] = Path(self.imatrix.text().strip())
        if IN_PROCESS:  # the kernels get their own GIL: the GUI never waits for them
            job = Job(run_in_process, "quantizer:convert", self.group.checkpoint.path, out, recipe,
                      registry=self._registry, name="quantize", **kwargs)
        else:
            job = Job(quantizer.convert, self.group.checkpoint.path, out, recipe, registry=self._registry,
                      name="quantize", **kwargs)
        job.progress.connect(self._on_progress)
        job.done.connect(self._on_done)
        job.failed.connect(self._on_failed)
        job.cancelled.connect(self._on_cancelled)
        job.finished.connect(self._on_finished)
        self._job = job.start()
        self.table.setEnabled(False)
        self.start_button.setEnabled(False)
        self.tensor_label.setText(f"Quantizing to {recipe}…")

    def cancel_or_close(self) -> None:
        if self._job is not None:
            self._job.cancel()
            self.tensor_label.setText("Cancelling… (no partial file is left behind)")
        else:
            self.reject()

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
        if recipe is not None:
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
        self.table.setEnabled(True)
        self._on_pick()
        self.cancel_button.setText("Close")

    def _running_jobs(self) -> list[Job]:
        return [job for job in (self._job, self._facts_job) if job is not None]
