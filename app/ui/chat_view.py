"""Chat view: conversation list (SQLite history), transcript with streaming markdown, the prompt box, sampling
settings with R1 defaults, system prompt, and the chain-of-thought side panel.

One :class:`~app.ui.model_worker.ModelHost` per loaded model (its worker owns the engine in its own thread).
Segments stream in through signals and are applied to the :class:`MessageListModel` here, on the GUI thread.
Keys: Enter sends, Shift+Enter new line, Esc stops (or leaves edit mode).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QSplitter, QVBoxLayout, QWidget

from app.core.units import format_size

from .chat_model import ChatMessage, MessageListModel
from .chat_sampling import SamplingBar
from .chat_widgets import PromptEdit, Transcript
from .conversations import ConversationPanel
from .errors import show_error
from .model_worker import ModelHost
from .reasoning_panel import ReasoningPanel
from .workers import ThreadRegistry

NO_MODEL = "No model loaded: pick one in the Library."


class ChatView(QWidget):
    modelLoaded = Signal(object)  # ModelInfo
    modelLoading = Signal(object)  # Path
    modelFailed = Signal(object)  # exception
    modelUnloaded = Signal()
    replyFinished = Signal(object)  # ChatMessage (with stats)
    busyChanged = Signal(bool)

    def __init__(self, registry: ThreadRegistry, settings_getter, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("chatView")
        self._registry = registry
        self._settings = settings_getter
        self.host: ModelHost | None = None
        self._retiring: list[ModelHost] = []
        self._request: int | None = None
        self._row: int | None = None  # the assistant message being generated
        self._edit_row: int | None = None
        self._reasoning_model = True
        self.model = MessageListModel(self)
        self.conversations = ConversationPanel(self)
        self.conversations.aboutToSwitch.connect(self._detach_stream)
        self.conversations.conversationOpened.connect(self._open_conversation)
        self.conversations.newRequested.connect(self.new_conversation)
        self._build()
        for sig in (self.model.rowsInserted, self.model.rowsRemoved, self.model.modelReset):
            sig.connect(lambda *_: self._update_controls())
        self.transcript.reasoningRequested.connect(self.show_reasoning)
        self.transcript.editRequested.connect(self.edit_message)
        self.model.dataChanged.connect(self._on_model_changed)
        QShortcut(QKeySequence(Qt.Key.Key_Escape), self, self.escape,
                  context=Qt.ShortcutContext.WidgetWithChildrenShortcut)
        self._update_controls()

    # ---- layout ---------------------------------------------------------------------------------------------
    def _build(self) -> None:
        self.model_label = QLabel(NO_MODEL)
        self.model_label.setObjectName("modelLabel")
        self.unload_button = QPushButton("Unload")
        self.unload_button.setObjectName("unloadButton")
        self.unload_button.setToolTip("Free the model's memory (the conversation stays)")
        self.unload_button.clicked.connect(lambda: self.unload_model())
        self.sampling_bar = SamplingBar(self._settings)
        b = self.sampling_bar  # its controls are the view's (tests and the main window reach them here)
        self.system_toggle, self.system_prompt = b.system_toggle, b.system_prompt
        self.temperature, self.top_p, self.max_tokens, self.seed, self.greedy = (b.temperature, b.top_p,
                                                                                 b.max_tokens, b.seed, b.greedy)
        top = QVBoxLayout()
        row1 = QHBoxLayout()
        row1.addWidget(self.model_label, 1)
        row1.addWidget(self.system_toggle)
        row1.addWidget(self.unload_button)
        top.addLayout(row1)
        top.addWidget(self.sampling_bar)

        self.transcript = Transcript(self.model)
        self.edit_banner = QLabel("Editing an earlier message: Enter resends it (later messages are replaced), "
                                  "Esc cancels.")
        self.edit_banner.setObjectName("editBanner")
        self.edit_banner.hide()
        self.prompt = PromptEdit()
        self.prompt.setObjectName("promptEdit")
        self.prompt.setPlaceholderText("Ask something… (Enter sends, Shift+Enter new line, Esc stops)")
        self.prompt.submitted.connect(lambda: self.send())
        # clicked(bool) would pass `checked` as send's text: every button goes through a lambda without arguments
        self.send_button = QPushButton("Send")
        self.send_button.setObjectName("sendButton")
        self.send_button.clicked.connect(lambda: self.send())
        self.stop_button = QPushButton("Stop")
        self.stop_button.setObjectName("stopButton")
        self.stop_button.clicked.connect(lambda: self.stop())
        self.regen_button = QPushButton("Regenerate")
        self.regen_button.setObjectName("regenerateButton")
        self.regen_button.clicked.connect(lambda: self.regenerate())
        buttons = QVBoxLayout()
        for btn in (self.send_button, self.stop_button, self.regen_button):
            buttons.addWidget(btn)
        buttons.addStretch(1)
        bottom = QHBoxLayout()
        bottom.addWidget(self.prompt, 1)
        bottom.addLayout(buttons)

        center = QWidget()
        center.setObjectName("chatCenter")
        cl = QVBoxLayout(center)
        cl.setContentsMargins(0, 0, 0, 0)
        cl.addLayout(top)
        cl.addWidget(self.system_prompt)
        cl.addWidget(self.transcript, 1)
        cl.addWidget(self.edit_banner)
        cl.addLayout(bottom)
        self.center = center
        self.reasoning = ReasoningPanel()
        self.reasoning.collapsedChanged.connect(self._on_reasoning_collapsed)
        self._reasoning_width = 380
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(self.conversations)
        self.splitter.addWidget(center)
        self.splitter.addWidget(self.reasoning)
        self.splitter.setStretchFactor(0, 0)
        self.splitter.setStretchFactor(1, 3)
        self.splitter.setStretchFactor(2, 2)
        self.splitter.setSizes([200, 640, 380])
        lay = QVBoxLayout(self)
        lay.addWidget(self.splitter)

    def _on_reasoning_collapsed(self, collapsed: bool) -> None:
        """A collapsed reasoning panel gives its width to the transcript (and takes it back when opened)."""
        sizes = self.splitter.sizes()
        if collapsed:
            self._reasoning_width = max(sizes[2], 200)
            narrow = self.reasoning.collapsed_width()
            self.reasoning.setMaximumWidth(narrow)
            self.splitter.setSizes([sizes[0], sizes[1] + sizes[2] - narrow, narrow])
        else:
            self.reasoning.setMaximumWidth(16777215)
            give = min(self._reasoning_width, max(sizes[1] - 300, 0) + sizes[2])
            self.splitter.setSizes([sizes[0], sizes[1] + sizes[2] - give, give])

    # ---- model ----------------------------------------------------------------------------------------------
    def load_model(self, path: Path) -> None:
        """Load ``path`` in a fresh worker thread; the previous model's worker is retired (stopped and freed in
        its own thread, without blocking the GUI)."""
        self._retire_host()
        s = self._settings()
        host = ModelHost(self._registry, self)
        host.loaded.connect(self._on_loaded)
        host.loadFailed.connect(self._on_load_failed)
        host.segment.connect(self._on_segment)
        host.replied.connect(self._on_replied)
        host.failed.connect(self._on_failed)
        host.busyChanged.connect(lambda _b: self._update_controls())
        self.host = host
        self.model_label.setText(f"Loading {Path(path).name}…")
        self.modelLoading.emit(Path(path))
        host.load(path, n_ctx=s.context_size, options=s.load_options())   # devices, workers, threads, ...
        self._update_controls()

    def unload_model(self) -> None:
        """Free the loaded model (a reply being generated stops and is saved as stopped)."""
        if self.host is None:
            return
        self._retire_host()
        self.model_label.setText(NO_MODEL)
        self._update_controls()

    def _retire_host(self) -> None:
        old = self.host
        if old is None:
            return
        self._detach_stream()  # the partial reply is saved, marked stopped, before its model goes
        self.host = None
        old.cancel_all()
        self._retiring.append(old)
        old.retire(lambda h=old: self._retiring.remove(h) if h in self._retiring else None)
        self.modelUnloaded.emit()

    def _on_loaded(self, info: Any) -> None:
        # A model whose template never mentions <think> is not a reasoning model: a reply without reasoning is
        # then normal, not R1's "skipped reasoning" failure worth a warning.
        self._reasoning_model = "<think>" in (info.chat_template or "")
        self.reasoning.set_reasoning_model(self._reasoning_model)
        self.model_label.setText(f"<b>{info.name}</b> · {info.file_type} · {format_size(info.size_bytes)} · "
                                 f"context {info.n_ctx} · {info.backend}")
        self.modelLoaded.emit(info)
        self._update_controls()
        self.prompt.setFocus()

    def _on_load_failed(self, e: BaseException) -> None:
        self.model_label.setText(NO_MODEL)
        if self.host is not None:
            self._retire_host()
        self.modelFailed.emit(e)
        show_error(self, e)
        self._update_controls()

    def loaded_info(self) -> Any:
        return self.host.info if self.host is not None else None

    # ---- conversation ---------------------------------------------------------------------------------------
    def new_conversation(self) -> None:
        self._detach_stream()
        self._cancel_edit()
        self.model.clear()
        self.conversations.start_new()
        self.reasoning.show_message(None)
        self.prompt.setFocus()

    def _open_conversation(self, messages: list[ChatMessage], system_prompt: str, sampling: dict) -> None:
        self._detach_stream()  # normally done already (aboutToSwitch), before the panel changed conversation
        self._cancel_edit()
        self.model.set_messages(messages)
        self.sampling_bar.show_system_prompt(system_prompt)
        self.sampling_bar.show_sampling(sampling)  # it continues with the values it was last answered with
        last = self.model.last_row("assistant")
        self.reasoning.show_message(self.model.message(last) if last >= 0 else None)

    def sampling(self) -> Any:
        return self.sampling_bar.sampling()

    def reset_sampling(self) -> None:
        self.sampling_bar.reset()

    def _history_messages(self) -> list[dict[str, str]]:
        out = []
        sp = self.system_prompt.toPlainText().strip()
        if sp:
            out.append({"role": "system", "content": sp})
        for m in self.model.messages():
            if m.role in ("user", "assistant") and not m.streaming:
                out.append({"role": m.role, "content": m.content})
        return out

    # ---- sending --------------------------------------------------------------------------------------------
    def is_busy(self) -> bool:
        return self._request is not None

    def send(self, text: str | None = None) -> bool:
        """Send the prompt box's text (or ``text``).  Returns False when nothing could be sent."""
        if not isinstance(text, str | None):  # a signal's argument (e.g. clicked's `checked`) is not a prompt
            raise TypeError(f"send() takes the text to send, not {type(text).__name__}")
        text = (self.prompt.toPlainText() if text is None else text).strip()
        if not text or self.is_busy():
            return False
        if self.host is None or not self.host.is_loaded():
            from app.core.errors import EngineError

            show_error(self, EngineError("no model is loaded: pick a GGUF in the Library and press Chat"))
            return False
        if self._edit_row is not None:
            self.conversations.truncate(self.model, self._edit_row)
            self.model.truncate(self._edit_row)
            self._cancel_edit()
        self.prompt.clear()
        user = ChatMessage("user", text)
        self.model.append(user)
        self._save(self.model.rowCount() - 1)
        self._generate()
        return True

    def _save(self, row: int) -> None:
        path = str(self.host.path) if self.host is not None and self.host.path else ""
        self.conversations.save_message(self.model, row, self.system_prompt.toPlainText(), path,
                                        self.sampling().to_dict())

    def _model_name(self) -> str:
        info = self.loaded_info()
        return f"{info.name} · {info.file_type}" if info is not None else ""

    def _generate(self) -> None:
        assert self.host is not None
        messages = self._history_messages()
        self._row = self.model.append(ChatMessage("assistant", streaming=True, model=self._model_name()))
        self.reasoning.show_message(self.model.message(self._row))
        self._request = self.host.chat(messages, self.sampling())
        self._update_controls()
        self.busyChanged.emit(True)

    def regenerate(self) -> None:
        """Replace the last reply with a new one."""
        if self.is_busy() or self.host is None or not self.host.is_loaded():
            return
        last = self.model.rowCount() - 1
        if last < 0:
            return
        if self.model.message(last).role == "assistant":
            self.conversations.truncate(self.model, last)
            self.model.truncate(last)
        self._generate()  # after a failed reply the last message is the user's: this retries it

    def edit_message(self, row: int) -> None:
        """Put an earlier user message back into the prompt box; sending replaces it and everything after."""
        if self.is_busy() or self.model.message(row).role != "user":
            return
        self._edit_row = row
        self.prompt.setPlainText(self.model.message(row).content)
        self.edit_banner.show()
        self.prompt.setFocus()

    def _cancel_edit(self) -> None:
        self._edit_row = None
        self.edit_banner.hide()

    def stop(self) -> None:
        if self.host is not None and self._request is not None:
            self.host.stop(self._request)

    def escape(self) -> None:
        if self.is_busy():
            self.stop()
        elif self._edit_row is not None:
            self._cancel_edit()
            self.prompt.clear()

    def show_reasoning(self, row: int) -> None:
        self.reasoning.show_message(self.model.message(row))
        self.reasoning.set_expanded(True)

    # ---- results (GUI thread) -------------------------------------------------------------------------------
    def _detach_stream(self) -> None:
        """Leave the reply being generated (switching conversation, New chat, Delete, another model, closing):
        stop it and save what came so far into its own conversation, marked stopped.  The view is idle at once;
        the stopped request's late segments and reply are ignored (request ids are unique per app)."""
        if self._request is None:
            return
        rid, row = self._request, self._row
        if self.host is not None:
            self.host.stop(rid)
        self._request = self._row = None
        if row is not None and row < self.model.rowCount() and self.model.message(row).streaming:
            self.model.update(row, streaming=False, finish_reason="cancelled")
            if self.model.message(row).content or self.model.message(row).reasoning:
                self._save(row)
            else:  # nothing came: no empty bubble (Regenerate asks again)
                self.model.truncate(row)
            if self.reasoning.message() is not None and self.reasoning.message().streaming:
                self.reasoning.show_message(self.model.message(row))
        self._update_controls()
        self.busyChanged.emit(False)

    def _on_segment(self, rid: int, kind: str, text: str) -> None:
        if rid == self._request and self._row is not None:
            self.model.append_text(self._row, kind, text)

    def _on_model_changed(self, top: Any, bottom: Any, *_: object) -> None:
        shown = self.reasoning.message()
        for row in range(top.row(), bottom.row() + 1):
            m = self.model.message(row)
            if shown is m or (row == self._row and shown is not None and shown.streaming):
                self.reasoning.show_message(m)

    def _on_replied(self, rid: int, reply: Any) -> None:
        if rid != self._request or self._row is None:
            return
        row = self._row
        self.model.update(row, content=reply.answer, reasoning=reply.reasoning, streaming=False,
                          finish_reason=reply.finish_reason, unterminated=reply.unterminated,
                          skipped_reasoning=reply.skipped_reasoning and self._reasoning_model,
                          notice=reply.notice or "", context_full=reply.context_full,
                          stats=reply.stats.to_dict())
        self.reasoning.show_message(self.model.message(row))
        self._save(row)
        self._done()
        self.replyFinished.emit(self.model.message(row))

    def _on_failed(self, rid: int, e: BaseException) -> None:
        if rid != self._request:
            return
        row = self._row
        self._finish_streaming("error")
        if row is not None and row < self.model.rowCount():
            m = self.model.message(row)
            if not m.content and not m.reasoning:  # nothing came: drop the empty bubble (Regenerate retries)
                self.model.truncate(row)
                self.reasoning.show_message(None)
        self._update_controls()
        show_error(self, e)

    def _finish_streaming(self, reason: str) -> None:
        if self._row is not None and self._row < self.model.rowCount() and self.model.message(self._row).streaming:
            self.model.update(self._row, streaming=False, finish_reason=reason)
            self.reasoning.show_message(self.model.message(self._row))
        self._done()

    def _done(self) -> None:
        was = self._request is not None
        self._request = None
        self._row = None
        self._update_controls()
        if was:
            self.busyChanged.emit(False)

    def _update_controls(self) -> None:
        loaded = self.host is not None and self.host.is_loaded()
        busy = self.is_busy()
        self.send_button.setEnabled(loaded and not busy)
        self.stop_button.setEnabled(busy)
        self.regen_button.setEnabled(loaded and not busy and self.model.rowCount() > 0)
        self.unload_button.setEnabled(self.host is not None)

    def shutdown(self, timeout_ms: int = 60000) -> None:
        """Stop generating (the partial reply is saved), free the model and join its thread (window closing)."""
        self._detach_stream()
        self.sampling_bar.flush()
        if self.host is not None:
            self.host.close(timeout_ms)
        for h in list(self._retiring):
            h.close(timeout_ms)
        self._retiring.clear()
        self.conversations.close_store()
