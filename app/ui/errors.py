"""The ONE place where errors from the services become a dialog that says what happened and what to do.

Every view hands exceptions to :func:`show_error`; nothing else in app/ui builds error message boxes.
:func:`describe` maps the typed errors of kernels / quantizer / app.core (and the few builtins that reach the
GUI: MemoryError, a full disk, a missing file) to a title, the service's own message and advice.  Cancellations
are not errors and show nothing.

Tests (and the screenshot tool) set :data:`HOOK` to capture the :class:`ErrorReport` instead of opening a box.
"""
from __future__ import annotations

import errno
import html
import logging
import re
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox, QWidget

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ErrorReport:
    title: str
    message: str  # what happened (the service's own message, which already says what to do)
    advice: str  # what to do next, in the app's terms
    kind: str  # the exception's class name
    detail: str = ""  # traceback, shown under "Show Details..."


UNEXPECTED = "Unexpected error"

# Set by tests / tools: called instead of opening a QMessageBox.
HOOK: Callable[[ErrorReport], None] | None = None


def _cls(module: str, name: str) -> type[BaseException] | None:
    try:
        mod = __import__(module, fromlist=[name])
        return getattr(mod, name)
    except (ImportError, AttributeError):
        return None


def _is(e: BaseException, module: str, name: str) -> bool:
    c = _cls(module, name)
    return c is not None and isinstance(e, c)


def is_cancellation(e: BaseException) -> bool:
    return (_is(e, "app.core.errors", "GenerationCancelled") or _is(e, "app.core.errors", "DownloadCancelled")
            or _is(e, "quantizer.errors", "ConversionCancelled") or isinstance(e, KeyboardInterrupt)
            or "cancel" in type(e).__name__.lower())


# (module, class name, title, advice).  First match wins, so specific classes come before their bases.
_TABLE: list[tuple[str, str, str, str]] = [
    ("app.core.errors", "GpuUnavailableError", "GPU offload is not available",
     "Set GPU layers to 0 in Settings, or give the app a GPU (make gpu GPU=vulkan) or a worker (Settings → "
     "Workers)."),
    ("app.core.errors", "WorkerLostError", "A worker was lost",
     "The conversation is kept. Start the worker again (distilldesk worker) or remove it in Settings → Workers, "
     "then load the model again."),
    ("app.core.errors", "WorkerUnreachableError", "A worker cannot be reached",
     "Start it with `distilldesk worker` on that machine, check the address in Settings → Workers, or remove it."),
    ("app.core.errors", "DeviceError", "That device is not available", "Check the device settings."),
    ("app.core.errors", "ContextOverflowError", "The conversation does not fit in the context",
     "Start a new conversation, shorten the message, or raise the context size in Settings."),
    ("app.core.errors", "ModelLoadError", "This model cannot be opened",
     "Pick a complete GGUF file made by DistillDesk or llama.cpp (Library → Add GGUF…), or quantize the model "
     "again from its checkpoint."),
    ("app.core.errors", "VocabMismatchError", "These two models cannot be compared",
     "Compare a quantization with the reference (F16/BF16/Q8_0) of the same model."),
    ("app.core.errors", "CompareError", "The comparison cannot run",
     "Check that both files are quantizations of the same model and that the prompt fits the context."),
    ("app.core.errors", "HubAuthError", "Access to this repository was refused",
     "Log in with `huggingface-cli login` or set HF_TOKEN, and accept the model's licence on its Hub page."),
    ("app.core.errors", "RepoNotFoundError", "Not found on the Hub",
     "Check the repository id and revision."),
    ("app.core.errors", "OfflineError", "You are offline",
     "Connect to the network, or use a model that is already downloaded."),
    ("app.core.errors", "IntegrityError", "A downloaded file is damaged",
     "Download it again; the damaged file has been set aside."),
    ("app.core.errors", "HubError", "The download failed",
     "Check the network connection and try again; finished files are kept and the download resumes."),
    ("app.core.errors", "DiskSpaceError", "Not enough disk space",
     "Free some disk space (or delete models you no longer use from the Library) and try again."),
    ("app.core.errors", "CorruptHistoryError", "The chat history was damaged",
     "It has been set aside and a new history started; earlier conversations are in the file named."),
    ("app.core.errors", "HistoryError", "The chat history cannot be saved",
     "Check that the data folder (Settings) is writable and not full."),
    ("app.ui.process_job", "ChildProcessError_", "The job stopped unexpectedly",
     "Close other programs (it may have run out of memory) and try again, or pick a smaller bit-width."),
    ("app.core.errors", "EngineError", "The model failed", "Try again, or reload the model from the Library."),
    ("quantizer.errors", "NotEnoughDiskError", "Not enough disk space for the GGUF",
     "Free some disk space or pick a smaller bit-width."),
    ("quantizer.errors", "OutputError", "The GGUF cannot be written",
     "Check that the models folder (Settings) exists and is writable."),
    ("quantizer.errors", "PickleCheckpointError", "Unsafe checkpoint format",
     "DistillDesk loads only safetensors; download the safetensors version of this model."),
    ("quantizer.errors", "UnsupportedArchitectureError", "This architecture is not supported",
     "Pick a Llama, Qwen2 or Qwen3 model (the DeepSeek-R1 distills are all supported)."),
    ("quantizer.errors", "CheckpointError", "This checkpoint cannot be converted",
     "Download the checkpoint again (a file may be incomplete) or pick another one."),
    ("quantizer.errors", "QuantizerError", "Quantization failed", "Check the message, then try again."),
    ("kernels.errors", "KernelError", "Quantization failed in a kernel", "Check the message, then try again."),
]


# Messages of the services are written for both the CLI and the GUI and may name command-line flags; in the GUI
# those read as the control that does the same.  (pattern, replacement), applied in order.
_GUI_WORDS: list[tuple[str, str]] = [
    (r"\s*\(--ctx\)", " (Settings → Context size)"),
    (r"\bquantize without --imatrix\b", "set the Importance matrix to none"),
    (r"\s*\(omit --revision[^)]*\)", ""),
    (r"`distilldesk models` lists them", "the Library lists them"),
    (r"\s*\(--pre-tokenizer [^)]*\)", ""),
    (r"\s*\(--[a-z][^)]*\)", ""),  # any other "(--flag ...)" aside: the GUI has no such flag
]

# Advice that only fits some messages of an error type (the first matching pattern wins).
_ADVICE_BY_MESSAGE: dict[str, list[tuple[str, str]]] = {
    "ModelLoadError": [
        (r"memory|alloc|too large|does not fit", "The model does not fit in memory: close other programs, or pick a "
         "smaller quantization of it in the Library."),
    ],
}


def gui_words(message: str) -> str:
    """``message`` as the GUI says it: command-line flags become the controls that do the same."""
    for pattern, repl in _GUI_WORDS:
        message = re.sub(pattern, repl, message)
    return message


def _advice(kind: str, message: str, default: str) -> str:
    for pattern, advice in _ADVICE_BY_MESSAGE.get(kind, []):
        if re.search(pattern, message, re.IGNORECASE):
            return advice
    return default


def describe(e: BaseException) -> ErrorReport | None:
    """Title, message and advice for ``e``; None for a cancellation (nothing to show)."""
    if is_cancellation(e):
        return None
    detail = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    message = gui_words(str(e) or type(e).__name__)
    kind = type(e).__name__
    for module, name, title, advice in _TABLE:
        if _is(e, module, name):
            return ErrorReport(title, message, _advice(name, message, advice), kind, detail)
    if isinstance(e, MemoryError):
        return ErrorReport("Not enough memory", message or "the job ran out of memory",
                           "Close other programs, or pick a smaller quantization of the model.", kind, detail)
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return ErrorReport("The disk is full", message,
                           "Free some disk space (the Library can delete models you no longer use).", kind, detail)
    if isinstance(e, FileNotFoundError):
        return ErrorReport("File not found", message, "Refresh the Library; the file may have been moved.",
                           kind, detail)
    if isinstance(e, PermissionError):
        return ErrorReport("Permission denied", message, "Check the folder's permissions in Settings.",
                           kind, detail)
    if isinstance(e, (ValueError, OSError)):
        return ErrorReport("The operation failed", message, "Check the input and try again.", kind, detail)
    return ErrorReport(UNEXPECTED, f"{kind}: {message}",
                       "The app keeps running. Please report this with the details below.", kind, detail)


_OPEN_BOXES: list[QMessageBox] = []


def show_error(parent: QWidget | None, e: BaseException, *, context: str = "") -> ErrorReport | None:
    """Show one dialog for ``e`` (non-blocking: the GUI keeps running).  Returns what was shown, or None."""
    report = describe(e)
    if report is None:
        return None
    if context:
        report = ErrorReport(report.title, f"{context}: {report.message}", report.advice, report.kind,
                             report.detail)
    log.warning("%s: %s", report.title, report.message)
    if HOOK is not None:
        HOOK(report)
        return report
    box = QMessageBox(QMessageBox.Icon.Warning, report.title,
                      f"<b>{html.escape(report.title)}</b><br><br>{html.escape(report.message)}",
                      QMessageBox.StandardButton.Ok, parent)
    box.setTextFormat(Qt.TextFormat.RichText)
    box.setInformativeText(html.escape(report.advice))
    if report.detail and report.title == UNEXPECTED:  # a traceback helps a bug report, not a user with a bad file
        box.setDetailedText(report.detail)
    box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    _OPEN_BOXES.append(box)
    box.finished.connect(lambda _=0, b=box: _OPEN_BOXES.remove(b) if b in _OPEN_BOXES else None)
    box.open()
    return report


def install_excepthook(parent_getter: Callable[[], QWidget | None]) -> None:
    """Route exceptions escaping Qt slots to the error dialog instead of a dead app."""
    previous = sys.excepthook

    def hook(etype, value, tb):  # type: ignore[no-untyped-def]
        if value is None or not isinstance(value, Exception):
            previous(etype, value, tb)
            return
        log.error("uncaught", exc_info=(etype, value, tb))
        try:
            show_error(parent_getter(), value)
        except Exception:  # never raise from the hook
            previous(etype, value, tb)

    sys.excepthook = hook
