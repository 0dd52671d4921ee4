"""The main window: Library / Chat / Compare tabs, menus, and the status bar (backend, loaded model, tokens/s,
memory).  It wires the views together and owns the thread registry: closing the window cancels every job and
joins every worker thread before the window goes."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QTimer
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import QLabel, QMainWindow, QMessageBox, QTabWidget, QWidget

from app.core.units import format_size

from .chat_view import ChatView
from .compare_view import CompareView
from .demo_setup import DEMO_PROMPT, DemoDialog, demo_paths
from .library_view import LibraryView
from .probes_view import ProbesView
from .quantize_dialog import QuantizeDialog
from .settings import AppSettings, load_settings, save_settings
from .settings_dialog import SettingsDialog, gpu_backend_name
from .workers import ThreadRegistry

TAB_LIBRARY, TAB_CHAT, TAB_COMPARE, TAB_PROBES = 0, 1, 2, 3


def rss_bytes() -> int:
    """Resident memory of this process now (what the status bar shows), on every OS."""
    from app.core.sysinfo import rss_bytes as current_rss

    return current_rss()


class MainWindow(QMainWindow):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("mainWindow")
        self.setWindowTitle("DistillDesk")
        self.settings: AppSettings = load_settings()
        self.registry = ThreadRegistry(self)
        self._dialogs: list[QWidget] = []
        self._closing = False
        get = lambda: self.settings  # noqa: E731 - views read the current settings when they start work
        self.library = LibraryView(self.registry, get)
        self.chat = ChatView(self.registry, get)
        self.compare = CompareView(self.registry, get)
        self.probes = ProbesView(self.registry, get)
        self.tabs = QTabWidget()
        self.tabs.setObjectName("mainTabs")
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(self.library, "Library")
        self.tabs.addTab(self.chat, "Chat")
        self.tabs.addTab(self.compare, "Compare")
        self.tabs.addTab(self.probes, "Probes")
        self.setCentralWidget(self.tabs)
        self._build_status_bar()
        self._build_menus()
        self.library.chatRequested.connect(self.open_chat)
        self.library.compareRequested.connect(self.open_compare)
        self.library.quantizeRequested.connect(self.open_quantize)
        self.library.demoRequested.connect(lambda: self.start_demo())
        self.library.downloadRequested.connect(self.open_download)
        self.library.refreshed.connect(lambda: self.compare.set_groups(self.library.groups()))
        self.library.refreshed.connect(lambda: self.probes.set_groups(self.library.groups()))
        self.compare.ladder.qualityMeasured.connect(self.library.set_quality)
        self.library.usage_notes = self._usage_notes
        self.chat.modelLoading.connect(lambda p: self.model_status.setText(f"loading {Path(p).name}…"))
        self.chat.modelLoaded.connect(self._on_model_loaded)
        self.chat.modelFailed.connect(lambda _e: self.model_status.setText("no model"))
        self.chat.modelUnloaded.connect(self._on_model_unloaded)
        self.chat.replyFinished.connect(self._on_reply)
        self.resize(1280, 820)
        self.library.refresh()  # in a worker: the window shows at once, the list a moment later
        self.chat.conversations.refresh()

    # ---- chrome ---------------------------------------------------------------------------------------------
    def _build_status_bar(self) -> None:
        sb = self.statusBar()
        gpu = gpu_backend_name()
        self.backend_status = QLabel(f"backend: CPU{f' (GPU: {gpu})' if gpu else ''}")
        self.model_status = QLabel("no model")
        self.speed_status = QLabel("– tok/s")
        self.memory_status = QLabel()
        for w in (self.backend_status, self.model_status, self.speed_status, self.memory_status):
            w.setObjectName("statusField")
            sb.addPermanentWidget(w)
        self._mem_timer = QTimer(self)
        self._mem_timer.timeout.connect(self._update_memory)
        self._mem_timer.start(2000)
        self._update_memory()

    def _build_menus(self) -> None:
        file = self.menuBar().addMenu("&File")
        add = QAction("Add GGUF file…", self)
        add.triggered.connect(self.library._add_file)
        file.addAction(add)
        settings = QAction("Settings…", self)
        settings.setShortcut(QKeySequence.StandardKey.Preferences)
        settings.triggered.connect(self.open_settings)
        file.addAction(settings)
        file.addSeparator()
        quit_ = QAction("Quit", self)
        quit_.setShortcut(QKeySequence.StandardKey.Quit)
        quit_.triggered.connect(self.close)
        file.addAction(quit_)
        models = self.menuBar().addMenu("&Models")
        demo = QAction("Set up the demo model", self)
        demo.triggered.connect(lambda: self.start_demo())
        models.addAction(demo)
        dl = QAction("Download…", self)
        dl.triggered.connect(self.open_download)
        models.addAction(dl)
        help_ = self.menuBar().addMenu("&Help")
        about = QAction("About DistillDesk", self)
        about.triggered.connect(self.show_about)
        help_.addAction(about)

    def show_about(self) -> None:
        from app import __version__

        QMessageBox.about(self, "About DistillDesk", f"<b>DistillDesk {__version__}</b><br><br>Quantize distilled "
                          "reasoning models with DistillDesk's own k-quant kernels, chat with them, and see what "
                          "quantization cost.")

    def _update_memory(self) -> None:
        self.memory_status.setText(f"memory {format_size(rss_bytes())}")

    def _on_model_loaded(self, info: Any) -> None:
        self.model_status.setText(f"{info.name} · {info.file_type}")
        self.backend_status.setText(f"backend: {info.backend}" + (f" · {info.offload}" if info.offload else "")
                                    + (f" · on remote workers {', '.join(info.workers)}" if info.workers else ""))

    def _on_model_unloaded(self) -> None:
        """No model, no speed: the last reply's tok/s belonged to the model that is gone."""
        self.model_status.setText("no model")
        self.speed_status.setText("– tok/s")

    def _on_reply(self, msg: Any) -> None:
        s = msg.stats or {}
        if s:
            self.speed_status.setText(f"{s.get('decode_tokens_per_s', 0):.1f} tok/s")

    # ---- actions --------------------------------------------------------------------------------------------
    def _usage_notes(self, path: Path) -> list[str]:
        """What the Library's Delete… says besides the file itself: where the app is using it now."""
        notes = []
        info = self.chat.loaded_info()
        if info is not None and Path(info.path) == Path(path):
            notes.append("It is loaded in Chat: the chat goes on using it until another model is loaded.")
        if Path(path) in (self.compare.reference_path(), self.compare.candidate_path()):
            notes.append("It is selected in Compare.")
        return notes

    def open_chat(self, path: Path) -> None:
        info = self.chat.loaded_info()
        if info is None or Path(info.path) != Path(path):
            self.chat.load_model(Path(path))
        self.tabs.setCurrentIndex(TAB_CHAT)

    def open_compare(self, reference: Path, candidate: Path) -> None:
        self.compare.set_pair(reference, candidate)
        self.tabs.setCurrentIndex(TAB_COMPARE)

    def open_quantize(self, group: Any) -> QuantizeDialog:
        quality = {Path(p): v for p, v in self._quality_of(group).items()}
        dlg = QuantizeDialog(group, self.registry, lambda: self.settings, quality, self)
        dlg.quantized.connect(self._on_quantized)
        self._keep(dlg)
        dlg.show()
        return dlg

    def _quality_of(self, group: Any) -> dict:
        from .ladder_panel import quality_by_path, saved_rows

        try:
            return quality_by_path(saved_rows(group))
        except Exception:  # noqa: BLE001 - saved results are optional
            return {}

    def _on_quantized(self, path: Path) -> None:
        self.library.refresh(select=path)  # the compare view follows through `refreshed`

    def open_download(self) -> Any:
        from .download_dialog import open_download_dialog

        dlg = open_download_dialog(self.registry, self)
        dlg.downloaded.connect(lambda r: self.library.refresh(then=lambda: self.library.select_group(
            r.repo_id.split("/")[-1])))
        self._keep(dlg)
        return dlg

    def open_settings(self) -> SettingsDialog:
        dlg = SettingsDialog(self.settings, self)

        def apply() -> None:
            self.settings = dlg.result_settings()
            save_settings(self.settings)
            self.library.refresh()

        dlg.accepted.connect(apply)
        self._keep(dlg)
        dlg.open()
        return dlg

    def start_demo(self, chat: bool = True) -> DemoDialog | None:
        """Set up the demo models (reused when present), then open the chat on the quantized one."""
        if all(p.exists() for p in demo_paths()):
            self._on_demo_ready(demo_paths(), chat)
            return None
        dlg = DemoDialog(self.registry, self)
        dlg.ready.connect(lambda paths: self._on_demo_ready(paths, chat))
        self._keep(dlg)
        dlg.start()
        return dlg

    def _on_demo_ready(self, paths: list[Path], chat: bool) -> None:
        self.library.refresh(select=paths[-1], then=lambda: self.compare.set_pair(paths[0], paths[-1]))
        if chat:
            self.open_chat(paths[-1])
            if not self.chat.prompt.toPlainText():
                self.chat.prompt.setPlainText(DEMO_PROMPT)

    def _keep(self, w: QWidget) -> None:
        self._dialogs.append(w)
        w.finished.connect(lambda _r=0, d=w: self._dialogs.remove(d) if d in self._dialogs else None)

    def is_busy(self) -> bool:
        return (self.chat.is_busy() or self.compare.is_busy() or self.compare.ladder.is_busy() or self.probes.is_busy()
                or bool(self.registry.live()))

    # ---- closing --------------------------------------------------------------------------------------------
    def shutdown(self, timeout_ms: int = 60000) -> bool:
        """Cancel all work, free the model, join every worker thread.  Idempotent."""
        self._mem_timer.stop()
        for d in list(self._dialogs):
            if hasattr(d, "cancel_or_close") and getattr(d, "is_running", lambda: False)():
                d.cancel_or_close()
        self.compare.shutdown()
        self.probes.shutdown()
        self.chat.shutdown(timeout_ms)
        return self.registry.shutdown(timeout_ms)

    def closeEvent(self, e: QCloseEvent) -> None:  # noqa: N802 - Qt API
        if not self._closing:
            self._closing = True
            self.shutdown()
        for d in list(self._dialogs):
            d.close()
        super().closeEvent(e)
