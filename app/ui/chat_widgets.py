"""Widgets of the chat transcript: the prompt box (Enter sends, Shift+Enter new line), a markdown view that
grows with its text, one bubble per message, and the transcript that mirrors a :class:`MessageListModel`.

Streaming text is re-rendered as markdown at most every ``RENDER_INTERVAL_MS`` (a token-by-token
``setMarkdown`` of a long answer would be the one thing stalling the event loop)."""
from __future__ import annotations

from PySide6.QtCore import QModelIndex, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QKeyEvent, QResizeEvent, QTextDocument
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from .chat_model import ChatMessage, MessageListModel

RENDER_INTERVAL_MS = 40
# The model's Markdown, GitHub dialect, with raw HTML shown as text rather than interpreted (a reply quoting
# `<script>` or `<think>` shows it; it never restyles or hides the transcript).
MARKDOWN = QTextDocument.MarkdownFeature.MarkdownDialectGitHub | QTextDocument.MarkdownFeature.MarkdownNoHTML


class PromptEdit(QPlainTextEdit):
    """Enter sends, Shift+Enter inserts a new line."""

    submitted = Signal()

    def keyPressEvent(self, e: QKeyEvent) -> None:  # noqa: N802 - Qt API
        if e.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and not (
                e.modifiers() & Qt.KeyboardModifier.ShiftModifier):
            self.submitted.emit()
            return
        super().keyPressEvent(e)

    def sizeHint(self) -> QSize:
        return QSize(400, 72)


class MarkdownView(QTextBrowser):
    """Read-only markdown (or plain text) that is as tall as its content (the transcript scrolls, not each
    bubble)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setOpenExternalLinks(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.document().documentLayout().documentSizeChanged.connect(self._fit)
        self._markdown = None

    def set_markdown(self, text: str) -> None:
        if ("md", text) != self._markdown:
            self._markdown = ("md", text)
            self.document().setMarkdown(text, MARKDOWN)
            self._fit()

    def set_plain(self, text: str) -> None:
        """Text exactly as typed: no Markdown, no HTML, line breaks kept (the user's messages)."""
        if ("plain", text) != self._markdown:
            self._markdown = ("plain", text)
            self.setPlainText(text)
            self._fit()

    def _fit(self, *_: object) -> None:
        self.document().setTextWidth(self.viewport().width())
        h = int(self.document().size().height()) + 6
        if h != self.height():
            self.setFixedHeight(max(h, 24))

    def resizeEvent(self, e: QResizeEvent) -> None:  # noqa: N802 - Qt API
        super().resizeEvent(e)
        self._fit()


def stats_line(msg: ChatMessage) -> str:
    s = msg.stats
    if msg.streaming:
        n = msg.reasoning_tokens + msg.answer_tokens
        return f"generating… {n} tokens"
    parts = []
    if s.get("time_to_first_token_s") is not None:
        parts.append(f"first token {s['time_to_first_token_s']:.2f} s")
    if s.get("prompt_tokens_per_s"):
        parts.append(f"prompt {s['prompt_tokens_per_s']:.0f} tok/s")
    if s.get("generated_tokens") is not None:
        parts.append(f"{s['generated_tokens']} tokens, {s.get('decode_tokens_per_s', 0):.1f} tok/s")
    if msg.finish_reason == "cancelled":
        parts.append("stopped")
    elif msg.finish_reason == "length":
        parts.append("cut: the context is full" if msg.context_full else "cut at the token limit")
    return " · ".join(parts)


class MessageWidget(QFrame):
    """One message.  Users' bubbles offer Edit; assistants' offer Reasoning (show it in the side panel)."""

    editRequested = Signal(int)
    reasoningRequested = Signal(int)

    def __init__(self, row: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.row = row
        self.role_label = QLabel()
        self.role_label.setObjectName("roleLabel")
        self.stats = QLabel()
        self.stats.setObjectName("statsLabel")
        self.action = QPushButton()
        self.action.setObjectName("bubbleAction")
        self.action.setFlat(True)
        self.action.setCursor(Qt.CursorShape.PointingHandCursor)
        self.action.clicked.connect(self._on_action)
        self.body = MarkdownView()
        self.notice = QLabel()
        self.notice.setObjectName("noticeLabel")
        self.notice.setWordWrap(True)
        self.notice.hide()
        self.stats.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)  # never widens the bubble
        self.role_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.body.setMinimumWidth(80)
        head = QHBoxLayout()
        head.setContentsMargins(0, 0, 0, 0)
        head.addWidget(self.role_label, 1)
        head.addWidget(self.action)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(10, 6, 10, 6)
        lay.setSpacing(2)
        lay.addLayout(head)
        lay.addWidget(self.notice)
        lay.addWidget(self.body)
        lay.addWidget(self.stats)
        self._role = ""
        self._pending: ChatMessage | None = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._render_pending)

    def set_message(self, msg: ChatMessage) -> None:
        if msg.role != self._role:
            self._role = msg.role
            self.setProperty("role", msg.role)
            self.setObjectName(f"bubble_{msg.role}")
            self.role_label.setText({"user": "You", "assistant": msg.model or "Assistant",
                                     "system": "System"}.get(msg.role, msg.role))
            self.action.setText({"user": "Edit", "assistant": "Reasoning"}.get(msg.role, ""))
            self.style().unpolish(self)
            self.style().polish(self)
        # "Reasoning" only where there is some (or may come): past replies keep theirs viewable
        self.action.setVisible(msg.role == "user" or (msg.role == "assistant" and bool(msg.reasoning)))
        self._pending = msg
        if msg.streaming:
            if not self._timer.isActive():
                self._timer.start(RENDER_INTERVAL_MS)
        else:
            self._timer.stop()
            self._render_pending()

    def _render_pending(self) -> None:
        msg = self._pending
        if msg is None:
            return
        text = msg.content
        if msg.role == "assistant" and not text and msg.streaming:
            text = "*thinking…*" if msg.reasoning else "…"
        if msg.role == "user":
            self.body.set_plain(text)
        else:
            self.body.set_markdown(text)
        stats = stats_line(msg)
        self.stats.setText(stats)
        self.stats.setVisible(bool(stats))  # an empty label would still take a line (users' bubbles)
        self.notice.setText(msg.notice)
        self.notice.setVisible(bool(msg.notice))

    def _on_action(self) -> None:
        if self._role == "user":
            self.editRequested.emit(self.row)
        else:
            self.reasoningRequested.emit(self.row)


class Transcript(QScrollArea):
    """Mirrors a MessageListModel as a column of MessageWidgets (rows inserted/changed/removed/reset)."""

    editRequested = Signal(int)
    reasoningRequested = Signal(int)

    def __init__(self, model: MessageListModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("transcript")
        self.setWidgetResizable(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self._model = model
        self._inner = QWidget()
        self._inner.setObjectName("transcriptInner")
        self._col = QVBoxLayout(self._inner)
        self._col.setContentsMargins(8, 8, 8, 8)
        self._col.setSpacing(8)
        self._col.addStretch(1)
        self.setWidget(self._inner)
        self._widgets: list[MessageWidget] = []
        model.rowsInserted.connect(self._on_inserted)
        model.rowsRemoved.connect(self._on_removed)
        model.modelReset.connect(self._rebuild)
        model.dataChanged.connect(self._on_changed)
        self.verticalScrollBar().rangeChanged.connect(self._follow)
        self._stick_to_bottom = True
        self.verticalScrollBar().valueChanged.connect(self._on_scrolled)
        self._rebuild()

    def widget_at(self, row: int) -> MessageWidget:
        return self._widgets[row]

    def count(self) -> int:
        return len(self._widgets)

    def _make(self, row: int) -> MessageWidget:
        w = MessageWidget(row)
        w.editRequested.connect(self.editRequested)
        w.reasoningRequested.connect(self.reasoningRequested)
        w.set_message(self._model.message(row))
        return w

    def _on_inserted(self, _parent: QModelIndex, first: int, last: int) -> None:
        for row in range(first, last + 1):
            w = self._make(row)
            self._widgets.insert(row, w)
            self._col.insertWidget(row, w)
        self._renumber()
        self._stick_to_bottom = True

    def _on_removed(self, _parent: QModelIndex, first: int, last: int) -> None:
        for _ in range(first, last + 1):
            w = self._widgets.pop(first)
            self._col.removeWidget(w)
            w.deleteLater()
        self._renumber()

    def _on_changed(self, top: QModelIndex, bottom: QModelIndex, *_: object) -> None:
        for row in range(top.row(), bottom.row() + 1):
            if 0 <= row < len(self._widgets):
                self._widgets[row].set_message(self._model.message(row))

    def _rebuild(self) -> None:
        for w in self._widgets:
            self._col.removeWidget(w)
            w.deleteLater()
        self._widgets = []
        for row in range(self._model.rowCount()):
            w = self._make(row)
            self._widgets.append(w)
            self._col.insertWidget(row, w)
        self._stick_to_bottom = True

    def _renumber(self) -> None:
        for i, w in enumerate(self._widgets):
            w.row = i

    def _on_scrolled(self, value: int) -> None:
        bar = self.verticalScrollBar()
        self._stick_to_bottom = value >= bar.maximum() - 8

    def _follow(self, _lo: int, hi: int) -> None:
        if self._stick_to_bottom:
            self.verticalScrollBar().setValue(hi)
