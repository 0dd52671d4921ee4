"""Library view: checkpoints and their GGUF variants, with actions download, quantize, chat, compare, delete.

The scan runs in a worker (reading GGUF headers of big files must not stall the GUI); the tree model is filled
on the GUI thread from the result.  When there is no model at all, an empty state offers the built-in demo.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QStandardItem, QStandardItemModel
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QStackedWidget,
    QTreeView,
    QVBoxLayout,
    QWidget,
)

from app.core.units import format_size

from . import library_model as lm
from .errors import show_error
from .library_delete import DELETE, REMOVE, ask_delete_checkpoint, ask_delete_gguf
from .settings import save_settings
from .workers import Job, ThreadRegistry

COLUMNS = ["Model / file", "Type", "Size", "Bits/weight", "Role", "Mean KL", "Top-1"]
EntryRole = Qt.ItemDataRole.UserRole + 10


class LibraryView(QWidget):
    chatRequested = Signal(object)  # Path of a GGUF
    compareRequested = Signal(object, object)  # reference Path, candidate Path
    quantizeRequested = Signal(object)  # ModelGroup
    downloadRequested = Signal()
    demoRequested = Signal()
    refreshed = Signal()

    def __init__(self, registry: ThreadRegistry, settings_getter, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("libraryView")
        self._registry = registry
        self._settings = settings_getter
        self._groups: list[lm.ModelGroup] = []
        self._scan_job: Job | None = None
        self._rescan = False
        self._seq = 0  # scans started
        self._applied = 0  # the newest scan shown
        self._pending_select: Path | None = None
        self._pending_then: list[Callable[[], None]] = []
        self._add_jobs: list[Job] = []
        self._open_job: Job | None = None  # checking a GGUF before the chat loads it
        self._delete_job: Job | None = None
        # What else uses a file (the main window: "loaded in Chat"), said before it is deleted.
        self.usage_notes: Callable[[Path], list[str]] = lambda _p: []
        self._quality: dict[Path, tuple[float, float]] = {}
        self.model = QStandardItemModel(0, len(COLUMNS), self)
        self.model.setHorizontalHeaderLabels(COLUMNS)
        self.tree = QTreeView()
        self.tree.setObjectName("libraryTree")
        self.tree.setModel(self.model)
        self.tree.setAlternatingRowColors(True)
        self.tree.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.tree.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.tree.header().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.tree.header().setStretchLastSection(False)
        self.tree.selectionModel().selectionChanged.connect(self._update_buttons)
        self.tree.doubleClicked.connect(lambda _i: self._chat())
        self.buttons: dict[str, QPushButton] = {}
        bar = QHBoxLayout()
        for key, text, slot in [("download", "Download…", self.downloadRequested.emit),
                                ("add", "Add GGUF…", self._add_file),
                                ("quantize", "Quantize…", self._quantize),
                                ("chat", "Chat", self._chat),
                                ("compare", "Compare with reference", self._compare),
                                ("delete", "Delete…", self._delete),
                                ("refresh", "Refresh", self.refresh)]:
            b = QPushButton(text)
            b.setObjectName(f"library_{key}")
            b.clicked.connect(slot)
            bar.addWidget(b)
            self.buttons[key] = b
        bar.addStretch(1)
        self.hint = QLabel()
        self.hint.setObjectName("hintLabel")
        self.hint.setWordWrap(True)
        # partial GGUFs a killed quantize left in the models folder, until the next quantize there removes them
        self.unfinished = QLabel()
        self.unfinished.setObjectName("unfinishedLabel")
        self.unfinished.setWordWrap(True)
        self.unfinished.setVisible(False)
        listing = QWidget()
        ll = QVBoxLayout(listing)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addLayout(bar)
        ll.addWidget(self.tree, 1)
        ll.addWidget(self.hint)
        ll.addWidget(self.unfinished)
        self.stack = QStackedWidget()
        self.stack.addWidget(listing)
        self.stack.addWidget(self._empty_state())
        lay = QVBoxLayout(self)
        lay.addWidget(self.stack)
        self._update_buttons()

    def _empty_state(self) -> QWidget:
        w = QWidget()
        w.setObjectName("emptyState")
        title = QLabel("No models yet")
        title.setObjectName("emptyTitle")
        text = QLabel("Try the built-in demo: SmolLM2-135M-Instruct, a tiny model shipped with DistillDesk. Our own "
                      "quantizer converts it to F16 and Q4_K_M (about a minute, offline), then you can chat "
                      "with it and compare the two.\n\nOr download a DeepSeek-R1 distill from the Hub, or add a "
                      "GGUF file you already have.")
        text.setWordWrap(True)
        self.demo_button = QPushButton("Set up the demo model")
        self.demo_button.setObjectName("demoButton")
        self.demo_button.clicked.connect(self.demoRequested.emit)
        dl = QPushButton("Download a model…")
        dl.clicked.connect(self.downloadRequested.emit)
        add = QPushButton("Add a GGUF file…")
        add.clicked.connect(self._add_file)
        row = QHBoxLayout()
        row.addStretch(1)
        for b in (self.demo_button, dl, add):
            row.addWidget(b)
        row.addStretch(1)
        lay = QVBoxLayout(w)
        lay.addStretch(1)
        lay.addWidget(title, 0, Qt.AlignmentFlag.AlignHCenter)
        lay.addWidget(text)
        lay.addLayout(row)
        lay.addStretch(2)
        return w

    # ---- data -----------------------------------------------------------------------------------------------
    def groups(self) -> list[lm.ModelGroup]:
        return list(self._groups)

    def group(self, name: str) -> lm.ModelGroup | None:
        return next((g for g in self._groups if lm.group_key(g.name) == lm.group_key(name)), None)

    def set_quality(self, quality: dict[Path, tuple[float, float]]) -> None:
        """Measured (mean KL, top-1) per GGUF, from the eval ladder."""
        self._quality.update({Path(p): v for p, v in quality.items()})
        self._fill()

    def refresh(self, *, select: Path | None = None, then: Callable[[], None] | None = None) -> None:
        """Rescan in a worker (reading GGUF headers of big models takes a while); ``refreshed`` fires when the
        tree shows the result, then ``select`` is selected and ``then()`` runs."""
        if select is not None:
            self._pending_select = Path(select)
        if then is not None:
            self._pending_then.append(then)
        if self._scan_job is not None:
            self._rescan = True  # a scan is running: run another when it ends, so the result is current
            return
        self._seq += 1
        seq = self._seq
        s = self._settings()
        job = Job(lm.scan, list(s.extra_model_dirs), list(s.extra_gguf_files), list(s.hidden_gguf_files),
                  registry=self._registry,
                  with_progress=False, with_cancel=False, name="library-scan")
        job.done.connect(lambda groups: self._apply(seq, groups))
        job.failed.connect(lambda e: show_error(self, e, context="Listing the models failed"))
        job.finished.connect(self._on_scan_finished)
        self._scan_job = job.start()

    def refresh_now(self) -> None:
        """Synchronous rescan (tests, tools).  A slower background scan started earlier cannot overwrite it."""
        self._seq += 1
        s = self._settings()
        self._apply(self._seq, lm.scan(s.extra_model_dirs, s.extra_gguf_files, s.hidden_gguf_files))

    def _on_scan_finished(self) -> None:
        self._scan_job = None
        if self._rescan:
            self._rescan = False
            self.refresh()

    def _apply(self, seq: int, groups: list[lm.ModelGroup]) -> None:
        if seq < self._applied:
            return  # an older scan than what is shown
        self._applied = seq
        self._groups = groups
        self._fill()
        if self._scan_job is None or not self._rescan:
            if self._pending_select is not None:
                self.select_path(self._pending_select)
                self._pending_select = None
            then, self._pending_then = self._pending_then, []
            for fn in then:
                fn()
        self.refreshed.emit()

    def _fill(self) -> None:
        selected = self.selected_path()
        self.model.removeRows(0, self.model.rowCount())
        for g in self._groups:
            ref = g.reference()
            top = [QStandardItem(g.name)] + [QStandardItem("") for _ in COLUMNS[1:]]
            top[0].setData(("group", g), EntryRole)
            if g.checkpoint:
                ck = g.checkpoint
                top[1].setText("checkpoint")
                top[2].setText(format_size(ck.size_bytes))
                top[4].setText("source (safetensors)" if ck.complete else "incomplete download")
                top[0].setToolTip("\n".join(x for x in (ck.repo_id, ck.architecture, str(ck.path)) if x))
                if not ck.complete:
                    top[4].setForeground(QColor("#b26a00"))
            f = top[0].font()
            f.setBold(True)
            top[0].setFont(f)
            for e in g.ggufs:
                row = self._gguf_row(e, ref)
                top[0].appendRow(row)
            self.model.appendRow(top)
        self.tree.expandAll()
        for c in range(1, len(COLUMNS)):
            self.tree.resizeColumnToContents(c)
        self._show_unfinished()
        self.stack.setCurrentIndex(0 if self._groups else 1)
        if selected:
            self.select_path(selected)
        self._update_buttons()

    def _show_unfinished(self) -> None:
        from app.core.unfinished import unfinished_outputs

        lines = [f"{f.output_name}: {format_size(f.size_bytes)} "
                 + ("left by a conversion that was killed; the next quantize into that folder removes it"
                    if f.stale else "being written by a conversion in progress") + f" ({f.path})"
                 for f in unfinished_outputs()]
        self.unfinished.setText("Unfinished conversions:\n" + "\n".join(lines) if lines else "")
        self.unfinished.setVisible(bool(lines))

    def _gguf_row(self, e: lm.GgufEntry, ref: lm.GgufEntry | None) -> list[QStandardItem]:
        q = self._quality.get(e.path)
        cells = [e.path.name, e.file_type, format_size(e.size_bytes), f"{e.bpw:.2f}" if e.bpw else "",
                 "reference" if ref is not None and e.path == ref.path else ("unreadable" if e.error else "quantized"),
                 f"{q[0]:.4f}" if q else "", f"{q[1]:.1%}" if q else ""]
        items = [QStandardItem(c) for c in cells]
        items[0].setData(("gguf", e), EntryRole)
        items[0].setToolTip(str(e.path) + (f"\n{e.error}" if e.error else ""))
        if e.error:
            for it in items:
                it.setForeground(QColor("#b71c1c"))
        elif ref is not None and e.path == ref.path:
            f = items[4].font()
            f.setBold(True)
            items[4].setFont(f)
        return items

    # ---- selection ------------------------------------------------------------------------------------------
    def _selected(self) -> tuple[str, object] | None:
        idx = self.tree.selectionModel().currentIndex()
        if not idx.isValid() or not self.tree.selectionModel().hasSelection():
            return None
        idx = idx.siblingAtColumn(0)
        return idx.data(EntryRole)

    def selected_path(self) -> Path | None:
        sel = self._selected()
        return sel[1].path if sel and sel[0] == "gguf" else None

    def selected_group(self) -> lm.ModelGroup | None:
        sel = self._selected()
        if not sel:
            return None
        if sel[0] == "group":
            return sel[1]
        return self.group(sel[1].model)

    def select_path(self, path: Path) -> bool:
        for r in range(self.model.rowCount()):
            top = self.model.item(r, 0)
            for c in range(top.rowCount()):
                it = top.child(c, 0)
                if it.data(EntryRole)[1].path == Path(path):
                    self.tree.setCurrentIndex(it.index())
                    return True
        return False

    def select_group(self, name: str) -> bool:
        for r in range(self.model.rowCount()):
            it = self.model.item(r, 0)
            if lm.group_key(it.text()) == lm.group_key(name):
                self.tree.setCurrentIndex(it.index())
                return True
        return False

    def _update_buttons(self, *_: object) -> None:
        sel = self._selected()
        gguf = sel[1] if sel and sel[0] == "gguf" else None
        group = self.selected_group()
        self.buttons["chat"].setEnabled(gguf is not None and gguf.ok)
        ck = sel[1].checkpoint if sel and sel[0] == "group" else None
        self.buttons["delete"].setEnabled((gguf is not None or (ck is not None and bool(ck.repo_id)))
                                          and self._delete_job is None)
        self.buttons["quantize"].setEnabled(group is not None and group.checkpoint is not None
                                            and group.checkpoint.complete)
        ref = group.reference() if group else None
        self.buttons["compare"].setEnabled(gguf is not None and gguf.ok and ref is not None and gguf.path != ref.path)
        if group is not None and group.checkpoint is not None and not group.checkpoint.complete:
            self.hint.setText(f"{group.name}: the download is incomplete (shards missing). Download it again: it "
                              "resumes where it stopped.")
        elif group is not None and group.checkpoint is None:
            self.hint.setText("This model has no checkpoint on disk, so it cannot be quantized again; download "
                              "its checkpoint to make other bit-widths.")
        elif gguf is not None and ref is None:
            self.hint.setText("No reference (F16/BF16/Q8_0) of this model yet: quantize one to compare against.")
        else:
            self.hint.setText("Double-click a GGUF to chat with it.")

    # ---- actions --------------------------------------------------------------------------------------------
    def _chat(self) -> None:
        """Chat with the selected GGUF (button or double-click).  The file is checked first (its header read
        again, in a worker): an unreadable file says why and the model loaded in the Chat stays."""
        p = self.selected_path()
        if p is None or self._open_job is not None:
            return
        from app.core.gguf_header import read_header

        job = Job(read_header, p, registry=self._registry, with_progress=False, with_cancel=False,
                  name="check-gguf")
        job.done.connect(lambda _h: self.chatRequested.emit(p))
        job.failed.connect(lambda e: self._open_failed(p, e))
        job.finished.connect(lambda: setattr(self, "_open_job", None))
        self._open_job = job.start()

    def _open_failed(self, p: Path, e: BaseException) -> None:
        show_error(self, e, context="Nothing was unloaded")  # the message names the file and what is wrong
        self.refresh()  # the listing marks it

    def _quantize(self) -> None:
        g = self.selected_group()
        if g is not None and g.checkpoint is not None:
            self.quantizeRequested.emit(g)

    def _compare(self) -> None:
        p, g = self.selected_path(), self.selected_group()
        ref = g.reference() if g else None
        if p is not None and ref is not None:
            self.compareRequested.emit(ref.path, p)

    def _delete(self) -> None:
        """Delete… on a GGUF (ours: delete after a question naming the path; the user's own: remove from the
        library, or delete after a second question) or on a checkpoint in the Hugging Face cache."""
        sel = self._selected()
        if sel is None or self._delete_job is not None:
            return
        if sel[0] == "group":
            ck = sel[1].checkpoint
            if ck is not None and ck.repo_id and ask_delete_checkpoint(self, ck):
                self._delete_checkpoint(ck)
            return
        entry: lm.GgufEntry = sel[1]
        p = entry.path
        answer = ask_delete_gguf(self, entry, self.usage_notes(p))
        if answer is None:
            return
        if answer == DELETE:
            try:
                lm.delete_gguf(p)
            except OSError as e:
                show_error(self, e, context=f"Deleting {p.name} failed")
                return
        s = self._settings()
        if str(p) in s.extra_gguf_files:
            s.extra_gguf_files.remove(str(p))
        in_folder = any(p.parent == Path(d).expanduser() for d in s.extra_model_dirs)
        if answer == REMOVE and in_folder and str(p) not in s.hidden_gguf_files:
            s.hidden_gguf_files.append(str(p))  # a file in an extra folder: listed no more, kept on disk
        save_settings(s)
        self.refresh()

    def _delete_checkpoint(self, ck: lm.CheckpointEntry) -> None:
        job = Job(lm.delete_checkpoint, ck.repo_id, ck.commit or None, registry=self._registry,
                  with_progress=False, with_cancel=False, name="delete-checkpoint")
        job.failed.connect(lambda e: show_error(self, e, context=f"Deleting {ck.repo_id} failed"))
        job.finished.connect(self._checkpoint_deleted)
        self._delete_job = job.start()
        self._update_buttons()

    def _checkpoint_deleted(self) -> None:
        self._delete_job = None
        self.refresh()

    def _add_file(self) -> None:
        fn, _ = QFileDialog.getOpenFileName(self, "Add a GGUF model", str(Path.home()), "GGUF models (*.gguf)")
        if fn:
            self.add_file(Path(fn))

    def add_file(self, path: Path) -> Job:
        """Add a GGUF from anywhere on disk.  Its header is checked in a worker; a file that is not a valid GGUF
        is refused with the error dialog.  Returns the checking job (``finished`` when all is done)."""
        from app.core.gguf_header import read_header

        job = Job(read_header, Path(path), registry=self._registry, with_progress=False, with_cancel=False,
                  name="check-gguf")
        job.done.connect(lambda _info: self._added(Path(path)))
        job.failed.connect(lambda e: show_error(self, e))
        job.finished.connect(lambda: self._add_jobs.remove(job) if job in self._add_jobs else None)
        self._add_jobs.append(job)
        return job.start()

    def _added(self, path: Path) -> None:
        s = self._settings()
        if str(path) not in s.extra_gguf_files:
            s.extra_gguf_files.append(str(path))
        if str(path) in s.hidden_gguf_files:
            s.hidden_gguf_files.remove(str(path))  # added again: listed again
        save_settings(s)
        self.refresh(select=path)
