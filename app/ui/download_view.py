"""Download dialog over :mod:`app.core.hub`: the catalog of distilled models (with each one's predicted Q4_K_M
size and RAM from :mod:`app.core.catalog`) and free search of the Hub; what a repo needs (files, bytes); the
download with per-file and total progress, cancel, and resume (run it again: finished bytes are kept).
Search, listing and download each run in a worker."""
from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.core.units import format_params, format_size

from .errors import show_error
from .job_views import StopJobsOnClose
from .workers import Job, ThreadRegistry

RepoRole = Qt.ItemDataRole.UserRole + 20
PREVIEW_RECIPE = "Q4_K_M"


def _table(columns: list[str], name: str) -> QTableWidget:
    t = QTableWidget(0, len(columns))
    t.setObjectName(name)
    t.setHorizontalHeaderLabels(columns)
    t.verticalHeader().hide()
    t.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    t.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    t.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    t.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    t.horizontalHeader().setStretchLastSection(True)
    return t


def _add_row(t: QTableWidget, repo_id: str, cells: list[str]) -> None:
    i = t.rowCount()
    t.insertRow(i)
    for c, text in enumerate(cells):
        it = QTableWidgetItem(text)
        it.setData(RepoRole, repo_id)
        t.setItem(i, c, it)


class DownloadDialog(StopJobsOnClose, QDialog):
    downloaded = Signal(object)  # app.core.hub.DownloadResult

    def __init__(self, registry: ThreadRegistry, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from app.core import hub

        self.setObjectName("downloadDialog")
        self.setWindowTitle("Download a model")
        self._registry = registry
        self._jobs: dict[str, Job] = {}
        self.repo_id: str | None = None
        self.listing: Any = None
        self.result: Any = None
        self.offline = hub.is_offline()
        self.banner = QLabel("Offline (HF_HUB_OFFLINE=1): models already in the cache can be used; searching and "
                             "downloading need the network.")
        self.banner.setObjectName("noticeLabel")
        self.banner.setWordWrap(True)
        self.banner.setVisible(self.offline)
        self.catalog = _table(["Model", "Parameters", "License", f"{PREVIEW_RECIPE} size", "RAM to chat", "On disk"],
                              "catalogTable")
        self.search_edit = QLineEdit()
        self.search_edit.setPlaceholderText("Search the Hub (Llama, Qwen2 and Qwen3 checkpoints in safetensors)")
        self.search_edit.returnPressed.connect(self.search)
        self.search_button = QPushButton("Search")
        self.search_button.clicked.connect(self.search)
        self.results = _table(["Repository", "Architecture", "Parameters", "Downloads"], "searchTable")
        self.info = QLabel("Pick a model.")
        self.info.setObjectName("hintLabel")
        self.info.setWordWrap(True)
        self.file_label = QLabel("")
        self.file_bar = QProgressBar()
        self.file_bar.setObjectName("fileProgress")
        self.total_bar = QProgressBar()
        self.total_bar.setObjectName("totalProgress")
        for b in (self.file_bar, self.total_bar):
            b.setRange(0, 1000)
            b.setValue(0)
        for w in (self.file_label, self.file_bar, self.total_bar):
            w.setVisible(False)  # shown once a download starts: empty bars at 0% look like a stalled one
        self.total_bar.setFormat("total %p%")
        self.buttons = QDialogButtonBox()
        self.download_button = self.buttons.addButton("Download", QDialogButtonBox.ButtonRole.AcceptRole)
        self.download_button.setObjectName("downloadStart")
        self.cancel_button = self.buttons.addButton(QDialogButtonBox.StandardButton.Close)
        self.download_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel_or_close)
        search_row = QHBoxLayout()
        search_row.addWidget(self.search_edit, 1)
        search_row.addWidget(self.search_button)
        lay = QVBoxLayout(self)
        lay.addWidget(self.banner)
        lay.addWidget(QLabel("<b>Distilled reasoning models</b>"))
        lay.addWidget(self.catalog, 2)
        lay.addLayout(search_row)
        lay.addWidget(self.results, 1)
        lay.addWidget(self.info)
        lay.addWidget(self.file_label)
        lay.addWidget(self.file_bar)
        lay.addWidget(self.total_bar)
        lay.addWidget(self.buttons)
        self.catalog.itemSelectionChanged.connect(lambda: self._picked(self.catalog))
        self.results.itemSelectionChanged.connect(lambda: self._picked(self.results))
        self.search_edit.setEnabled(not self.offline)
        self.search_button.setEnabled(not self.offline)
        self.resize(900, 640)
        self._fill_catalog()
        self._update()

    # ---- choosing -------------------------------------------------------------------------------------------
    def _fill_catalog(self) -> None:
        from app.core import catalog, hub

        for m in catalog.load_catalog():
            est = m.estimate(PREVIEW_RECIPE)
            cached = hub.cached_snapshot(m.repo_id) is not None
            _add_row(self.catalog, m.repo_id, [m.name, format_params(m.n_params), m.license,
                                               format_size(est.size_bytes), format_size(est.ram_bytes),
                                               "yes" if cached else ""])

    def _start_job(self, key: str, fn: Any, *args: Any, progress: bool = False, **kwargs: Any) -> Job:
        job = Job(fn, *args, registry=self._registry, with_progress=progress, with_cancel=progress,
                  name=f"hub-{key}", **kwargs)
        job.failed.connect(lambda e: show_error(self, e))
        job.finished.connect(lambda: (self._jobs.pop(key, None), self._update()))
        self._jobs[key] = job
        return job

    def search(self) -> None:
        from app.core import hub

        if "search" in self._jobs:
            return
        job = self._start_job("search", hub.search_models, self.search_edit.text().strip(), limit=30)
        job.done.connect(self._on_results)
        job.start()
        self.info.setText("Searching the Hub…")

    def _on_results(self, models: list[Any]) -> None:
        self.results.setRowCount(0)
        for m in models:
            params = format_params(m.n_params) if m.n_params else ""
            _add_row(self.results, m.repo_id, [m.repo_id + ("  (gated)" if m.gated else ""), m.architecture or "",
                                               params, f"{m.downloads:,}"])
        self.info.setText(f"{len(models)} convertible model(s) found." if models else
                          "No convertible model found (only Llama, Qwen2 and Qwen3 checkpoints in safetensors).")

    def _picked(self, table: QTableWidget) -> None:
        rows = table.selectionModel().selectedRows()
        if not rows:
            return
        other = self.results if table is self.catalog else self.catalog
        other.blockSignals(True)
        other.clearSelection()
        other.blockSignals(False)
        self.select_repo(table.item(rows[0].row(), 0).data(RepoRole))

    def select_repo(self, repo_id: str) -> None:
        """Pick ``repo_id`` and list what downloading it takes (in a worker)."""
        from app.core import catalog, hub

        self.repo_id, self.listing = repo_id, None
        m = catalog.find(repo_id)
        if self.offline and hub.cached_snapshot(repo_id) is None:
            # the banner says it once; a box per click would only repeat it
            self.info.setText((f"{m.summary}\n" if m else "") + f"{repo_id} is not downloaded yet; downloading it "
                              "needs the network (see above).")
            self._update()
            return
        self.info.setText((f"{m.summary} {m.license_note}\n" if m else "") + f"{repo_id}: listing its files…")
        job = self._start_job(f"list-{repo_id}", hub.list_files, repo_id)
        job.done.connect(lambda listing: self._on_listing(repo_id, listing))
        job.failed.connect(lambda e: self._on_listing_failed(repo_id, e))
        job.start()
        self._update()

    def _on_listing(self, repo_id: str, listing: Any) -> None:
        if repo_id != self.repo_id:
            return
        self.listing = listing
        text = (f"{repo_id}: {len(listing.needed)} of {len(listing.files)} files needed, "
                f"up to {format_size(listing.needed_bytes)} to download (safetensors, config, tokenizer; "
                f"nothing else).")
        if listing.gated:
            text += " Gated: accept the licence on the model's Hub page and log in (HF_TOKEN) first."
        if listing.offline:
            text = listing.message
        self.info.setText(text)
        self._update()

    def _on_listing_failed(self, repo_id: str, e: BaseException) -> None:
        if repo_id == self.repo_id:  # the error dialog said why; the label must not keep saying "listing…"
            self.info.setText(f"{repo_id}: its files could not be listed ({e})")

    # ---- downloading ----------------------------------------------------------------------------------------
    def is_running(self) -> bool:
        return "download" in self._jobs

    def start(self) -> None:
        from app.core import hub

        if self.repo_id is None or self.is_running():
            return
        repo = self.repo_id
        job = self._start_job("download", hub.download, repo, progress=True)
        job.progress.connect(self._on_progress)
        job.done.connect(self._on_done)
        job.cancelled.connect(lambda: self.file_label.setText(
            f"Cancelled. The bytes already fetched are kept: Download again resumes {repo} where it stopped."))
        job.start()
        self.file_label.setText(f"Downloading {repo}…")
        for w in (self.file_label, self.file_bar, self.total_bar):
            w.setVisible(True)
        self._update()

    def cancel_or_close(self) -> None:
        job = self._jobs.get("download")
        if job is not None:
            job.cancel()
            self.file_label.setText("Cancelling…")
        else:
            self.reject()

    def _on_progress(self, p: Any) -> None:
        self.file_label.setText(f"{p.file}: {format_size(p.file_done)} of {format_size(p.file_total)}"
                                f"{' (already in the cache)' if p.phase == 'cached' else ''} · "
                                f"fetched {format_size(p.fetched)} this time")
        self.file_bar.setValue(int(1000 * p.file_done / p.file_total) if p.file_total else 1000)
        self.total_bar.setValue(int(1000 * p.done / p.total) if p.total else 0)
        self.total_bar.setFormat(f"total %p% ({format_size(p.done)} of {format_size(p.total)})")

    def _on_done(self, result: Any) -> None:
        self.result = result
        self.total_bar.setValue(1000)
        self.file_bar.setValue(1000)
        self.file_label.setText(result.message if result.offline else
                                f"Done: {result.repo_id} ({format_size(result.bytes_total)}, "
                                f"{format_size(result.bytes_fetched)} fetched now). Quantize it from the Library.")
        self.downloaded.emit(result)

    def _update(self) -> None:
        busy = self.is_running()
        self.download_button.setEnabled(self.listing is not None and not busy)  # what it takes is known
        self.cancel_button.setText("Cancel" if busy else "Close")
        self.catalog.setEnabled(not busy)
        self.results.setEnabled(not busy)

    def _running_jobs(self) -> list[Job]:
        return list(self._jobs.values())
