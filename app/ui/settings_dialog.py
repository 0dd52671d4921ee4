"""Settings dialog: threads, devices (with memory), GPU layers (greyed out with the reason when there is no GPU
device and no worker), RPC workers, context size, and the data folders (where models, history and downloads live,
plus extra folders scanned for GGUFs)."""
from __future__ import annotations

import dataclasses
import os

from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.core import paths

from .settings import AppSettings

NO_GPU_REASON = ("No GPU device and no worker: GPU layers need a GPU backend (build one with `make gpu "
                 "GPU=vulkan`, or cuda / rocm) or an RPC worker (add one below).")
WORKERS_HINT = ("Machines running `distilldesk worker`: the model's layers are spread over their devices. ggml RPC "
                "has no authentication or encryption: use an SSH tunnel or a private network.")


def device_lines() -> list[str]:
    """This machine's devices with their memory (CPU, GPU module devices), for the Settings dialog."""
    from app.core import backends

    try:
        return [d.label() for d in backends.list_devices() if not d.remote]
    except Exception as e:  # noqa: BLE001 - a broken llama.cpp install shows no devices, the app still opens
        return [f"(devices unavailable: {e})"]


def gpu_backend_name() -> str | None:
    from app.core.engine import gpu_backend

    try:
        return gpu_backend()
    except Exception:  # noqa: BLE001 - a broken llama.cpp install shows as "no GPU", the app still opens
        return None


def hf_cache() -> str:
    try:
        from quantizer.checkpoint import hf_cache_dir

        return str(hf_cache_dir())
    except ImportError:
        return os.environ.get("HF_HOME", "~/.cache/huggingface")


class SettingsDialog(QDialog):
    def __init__(self, settings: AppSettings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("settingsDialog")
        self.setWindowTitle("Settings")
        self._initial = settings
        self.threads = QSpinBox()
        self.threads.setRange(0, 256)
        self.threads.setSpecialValueText(f"automatic ({AppSettings(threads=0).effective_threads()})")
        self.threads.setValue(settings.threads)
        self.gpu_layers = QSpinBox()
        self.gpu_layers.setRange(-1, 1000)
        self.gpu_layers.setSpecialValueText("all")
        self.gpu_layers.setValue(settings.gpu_layers)
        self.gpu_reason = QLabel()
        self.gpu_reason.setObjectName("hintLabel")
        self.gpu_reason.setWordWrap(True)
        self._gpu = gpu_backend_name()
        self.devices = QLabel("\n".join(device_lines()))
        self.devices.setObjectName("devicesLabel")
        self.devices.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self._workers_controls(settings)
        self._update_gpu_layers()
        self.context = QSpinBox()
        self.context.setRange(256, 131072)
        self.context.setSingleStep(1024)
        self.context.setValue(settings.context_size)
        self._attention_controls(settings)
        engine = QGroupBox("Inference (applies to the next model loaded)")
        f = QFormLayout(engine)
        f.addRow("CPU threads", self.threads)
        f.addRow("Devices", self.devices)
        f.addRow("GPU layers", self.gpu_layers)
        f.addRow("", self.gpu_reason)
        f.addRow("Workers", self._workers_box)
        f.addRow("Context size (tokens)", self.context)
        f.addRow("Flash attention", self.flash_attn)
        f.addRow("KV cache type", self.kv_cache_type)
        f.addRow("Stored references (GB)", self.reference_cache)

        folders = QGroupBox("Data folders")
        ff = QFormLayout(folders)
        for label, path in (("App data", str(paths.data_dir())), ("Models we made", str(paths.models_dir())),
                            ("Chat history", str(paths.history_db())), ("Hugging Face cache", hf_cache())):
            ff.addRow(label, self._folder_row(path))
        self.extra_dirs = QListWidget()
        self.extra_dirs.addItems(settings.extra_model_dirs)
        self.extra_dirs.setMaximumHeight(80)
        add = QPushButton("Add folder…")
        add.clicked.connect(self._add_dir)
        remove = QPushButton("Remove")
        remove.clicked.connect(lambda: [self.extra_dirs.takeItem(self.extra_dirs.row(i))
                                        for i in self.extra_dirs.selectedItems()])
        row = QHBoxLayout()
        row.addWidget(add)
        row.addWidget(remove)
        row.addStretch(1)
        box = QVBoxLayout()
        box.addWidget(self.extra_dirs)
        box.addLayout(row)
        ff.addRow("More GGUF folders", box)
        self.open_note = QLabel()  # shown when "Open" cannot open a folder
        self.open_note.setObjectName("noticeLabel")
        self.open_note.setWordWrap(True)
        self.open_note.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.open_note.hide()
        ff.addRow("", self.open_note)

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(engine)
        lay.addWidget(folders)
        lay.addWidget(buttons)
        self.resize(640, 480)

    def _attention_controls(self, settings: AppSettings) -> None:
        """Flash attention, KV cache type (both change the figures slightly: compare/eval never mix stored
        references across them) and the bound of the stored references."""
        from app.core.load_options import FLASH_ATTN_CHOICES, KV_CACHE_TYPES

        self.flash_attn = QComboBox()
        self.flash_attn.setObjectName("flashAttn")
        for v in FLASH_ATTN_CHOICES:
            self.flash_attn.addItem({"auto": "auto (on with GPU offload)"}.get(v, v), v)
        self.flash_attn.setCurrentIndex(max(0, self.flash_attn.findData(settings.flash_attn)))
        self.kv_cache_type = QComboBox()
        self.kv_cache_type.setObjectName("kvCacheType")
        for v in KV_CACHE_TYPES:
            self.kv_cache_type.addItem({"q8_0": "q8_0 (half the memory; needs flash attention)"}.get(v, v), v)
        self.kv_cache_type.setCurrentIndex(max(0, self.kv_cache_type.findData(settings.kv_cache_type)))
        self.reference_cache = QDoubleSpinBox()
        self.reference_cache.setObjectName("referenceCacheGb")
        self.reference_cache.setRange(0.0, 1000.0)
        self.reference_cache.setDecimals(1)
        self.reference_cache.setValue(settings.reference_cache_gb)
        self.reference_cache.setToolTip("Compare and the eval ladder keep the reference model's answers and "
                                        "distributions on disk so it need not run again; the oldest go first.")

    def _workers_controls(self, settings: AppSettings) -> None:
        """The list of RPC workers (host:port), an entry to add one (checked as an address, not contacted) and
        Remove; GPU layers are enabled as soon as there is a GPU or a worker."""
        from app.core.backends import DEFAULT_WORKER_PORT

        self.workers = QListWidget()
        self.workers.setObjectName("workersList")
        self.workers.addItems(settings.rpc_workers)
        self.workers.setMaximumHeight(70)
        self.worker_entry = QLineEdit()
        self.worker_entry.setObjectName("workerEntry")
        self.worker_entry.setPlaceholderText(f"host:port, e.g. 127.0.0.1:{DEFAULT_WORKER_PORT}")
        add = QPushButton("Add worker")
        add.setObjectName("addWorker")
        add.clicked.connect(self._add_worker)
        self.worker_entry.returnPressed.connect(self._add_worker)
        remove = QPushButton("Remove")
        remove.setObjectName("removeWorker")
        remove.clicked.connect(self._remove_workers)
        self.workers_hint = QLabel(WORKERS_HINT)
        self.workers_hint.setObjectName("hintLabel")
        self.workers_hint.setWordWrap(True)
        row = QHBoxLayout()
        for w in (self.worker_entry, add, remove):
            row.addWidget(w)
        box = QVBoxLayout()
        box.addWidget(self.workers)
        box.addLayout(row)
        box.addWidget(self.workers_hint)
        self._workers_box = QWidget()
        self._workers_box.setLayout(box)

    def _add_worker(self) -> None:
        from app.core.backends import parse_endpoint
        from app.core.errors import EngineSettingError

        text = self.worker_entry.text().strip()
        try:
            parse_endpoint(text)
        except EngineSettingError as e:
            self.workers_hint.setText(str(e))
            return
        self.workers.addItem(text)
        self.worker_entry.clear()
        self.workers_hint.setText(WORKERS_HINT)
        self._update_gpu_layers()

    def _remove_workers(self) -> None:
        for item in self.workers.selectedItems():
            self.workers.takeItem(self.workers.row(item))
        self._update_gpu_layers()

    def _update_gpu_layers(self) -> None:
        n_workers = self.workers.count()
        if self._gpu is None and not n_workers:
            self.gpu_layers.setEnabled(False)
            self.gpu_layers.setToolTip(NO_GPU_REASON)
            self.gpu_reason.setText(NO_GPU_REASON)
            return
        self.gpu_layers.setEnabled(True)
        self.gpu_layers.setToolTip("")
        via = " and ".join(x for x in (self._gpu, f"{n_workers} remote worker(s)" if n_workers else "") if x)
        self.gpu_reason.setText(f"GPU offload via {via}; -1 (all) offloads every layer.")

    def _folder_row(self, path: str) -> QWidget:
        w = QWidget()
        lay = QHBoxLayout(w)
        lay.setContentsMargins(0, 0, 0, 0)
        label = QLabel(path)
        label.setObjectName("pathLabel")
        label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        b = QPushButton("Open")
        target = path if os.path.isdir(path) else os.path.dirname(path)
        b.clicked.connect(lambda: self._open_folder(target))
        lay.addWidget(label, 1)
        lay.addWidget(b)
        return w

    def _open_folder(self, target: str) -> None:
        """Open ``target`` in the file manager; where none can (no file opener installed, or the folder is not
        there yet) say so under the folders, with the path to copy."""
        if os.path.isdir(target) and QDesktopServices.openUrl(QUrl.fromLocalFile(target)):
            self.open_note.hide()
            return
        why = ("No file manager could be started to open it" if os.path.isdir(target)
               else "It does not exist yet (it is made when first needed)")
        self.open_note.setText(f"{why}. The folder is:\n{target}\n(select the path to copy it)")
        self.open_note.show()

    def _add_dir(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "A folder with GGUF files")
        if d:
            self.extra_dirs.addItem(d)

    def result_settings(self) -> AppSettings:
        return dataclasses.replace(
            self._initial, threads=self.threads.value(),
            gpu_layers=self.gpu_layers.value() if self.gpu_layers.isEnabled() else 0,
            context_size=self.context.value(), flash_attn=self.flash_attn.currentData(),
            kv_cache_type=self.kv_cache_type.currentData(), reference_cache_gb=self.reference_cache.value(),
            extra_model_dirs=[self.extra_dirs.item(i).text() for i in range(self.extra_dirs.count())],
            rpc_workers=[self.workers.item(i).text() for i in range(self.workers.count())])
