"""The chain-of-thought side panel: the reasoning of one assistant message, streaming live beside the answer.

Header: "Thinking… N s, N tokens" while it streams, "Thought for N s, N tokens" when done.  A warning line for
replies whose reasoning was skipped (no or empty ``<think>`` block: a known R1 behaviour, answers are often
worse) or unterminated (no ``</think>``: everything is reasoning).  Collapsible to its header.  Past replies'
reasoning is shown by pointing the panel at them (:meth:`show_message`).
"""
from __future__ import annotations

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QTextCursor
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from .chat_model import ChatMessage

SKIPPED_WARNING = ("The model skipped its reasoning (no or empty <think> block). R1 models answer worse "
                   "without it: try Regenerate.")
UNTERMINATED_WARNING = ("The reasoning never finished (no </think>): the whole reply is reasoning. "
                        "Raise the max tokens setting, or Regenerate.")


def thought_summary(msg: ChatMessage) -> str:
    """The panel's header for ``msg``.  Figures only where there is reasoning: a reply without any (a model that
    does not reason, or R1 skipping it) never reads "Thought for 0.0 s, 0 tokens"."""
    if not msg.reasoning:
        if msg.streaming and not msg.content:
            return "Waiting for the first token…"
        return "No reasoning" + (" (answering directly)" if msg.streaming else "")
    secs, toks = msg.thought_seconds(), msg.thought_tokens()
    if msg.streaming and not msg.content and not msg.reasoning_ended:
        return f"Thinking… {secs:.1f} s, {toks} tokens"
    return f"Thought for {secs:.1f} s, {toks} tokens"


class ReasoningPanel(QFrame):
    collapsedChanged = Signal(bool)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("reasoningPanel")
        self._msg: ChatMessage | None = None
        self._shown_text = ""
        self.toggle = QToolButton()
        self.toggle.setObjectName("reasoningToggle")
        self.toggle.setCheckable(True)
        self.toggle.setChecked(True)
        self.toggle.setArrowType(Qt.ArrowType.DownArrow)
        self.toggle.setText("Reasoning")
        self.toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toggle.toggled.connect(self.set_expanded)
        self.summary = QLabel("No reply selected")
        self.summary.setObjectName("reasoningSummary")
        head = QHBoxLayout()
        head.addWidget(self.toggle)
        head.addWidget(self.summary, 1)
        self.warning = QLabel()
        self.warning.setObjectName("reasoningWarning")
        self.warning.setWordWrap(True)
        self.warning.hide()
        self.text = QPlainTextEdit()
        self.text.setObjectName("reasoningText")
        self.text.setReadOnly(True)
        self.text.setPlaceholderText("The model's chain of thought appears here while it thinks.")
        self.text.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 6, 6, 6)
        lay.addLayout(head)
        lay.addWidget(self.warning)
        lay.addWidget(self.text, 1)
        lay.addStretch(0)  # collapsed (text hidden), the toggle stays at the top
        self._tick = QTimer(self)  # keeps "Thinking… N s" counting while tokens are slow to come
        self._tick.setInterval(250)
        self._tick.timeout.connect(self._refresh_header)

    # ---- public ---------------------------------------------------------------------------------------------
    def is_expanded(self) -> bool:
        return self.toggle.isChecked()

    def set_expanded(self, expanded: bool) -> None:
        if self.toggle.isChecked() != expanded:
            self.toggle.setChecked(expanded)  # re-enters through toggled
            return
        self.toggle.setArrowType(Qt.ArrowType.DownArrow if expanded else Qt.ArrowType.RightArrow)
        # collapsed, the panel is just its toggle (the chat view gives the width to the transcript); the
        # summary is then the toggle's tooltip
        self.summary.setVisible(expanded)
        self.text.setVisible(expanded)
        self.warning.setVisible(expanded and bool(self.warning.text()))
        self.collapsedChanged.emit(not expanded)

    def collapsed_width(self) -> int:
        """The width the panel needs collapsed: its toggle."""
        m = self.layout().contentsMargins()
        return self.toggle.sizeHint().width() + m.left() + m.right() + 2 * self.frameWidth()

    def message(self) -> ChatMessage | None:
        return self._msg

    def show_message(self, msg: ChatMessage | None) -> None:
        """Point the panel at ``msg`` (live or past); shows its reasoning so far and keeps up when called again
        with the same message's newer state (only the new text is appended)."""
        self._msg = msg
        if msg is None:
            self._set_text("")
            self.summary.setText("No reply selected")
            self._set_warning("")
            self._tick.stop()
            return
        self._set_text(msg.reasoning)
        self._refresh_header()
        warn = ""
        if not msg.streaming:
            if msg.unterminated:
                warn = UNTERMINATED_WARNING
            elif msg.skipped_reasoning:
                warn = SKIPPED_WARNING
        self._set_warning(warn)
        if msg.streaming and not self._tick.isActive():
            self._tick.start()
        elif not msg.streaming:
            self._tick.stop()

    def set_reasoning_model(self, reasons: bool) -> None:
        """Say so when the loaded model does not reason at all (no <think> in its chat template)."""
        self.text.setPlaceholderText(
            "The model's chain of thought appears here while it thinks." if reasons else
            "This model's chat template has no <think> block: it answers without a chain of thought. Load a "
            "DeepSeek-R1 distill to see its reasoning here.")

    def plain_text(self) -> str:
        return self.text.toPlainText()

    # ---- internals ------------------------------------------------------------------------------------------
    def _set_text(self, text: str) -> None:
        if text == self._shown_text:
            return
        bar = self.text.verticalScrollBar()
        at_end = bar.value() >= bar.maximum() - 4
        if text.startswith(self._shown_text) and self._shown_text:
            cur = QTextCursor(self.text.document())
            cur.movePosition(QTextCursor.MoveOperation.End)
            cur.insertText(text[len(self._shown_text):])
        else:
            self.text.setPlainText(text)
        self._shown_text = text
        if at_end:
            bar.setValue(bar.maximum())

    def _set_warning(self, text: str) -> None:
        self.warning.setText(text)
        self.warning.setVisible(bool(text) and self.is_expanded())

    def _refresh_header(self) -> None:
        if self._msg is not None:
            self.summary.setText(thought_summary(self._msg))
            self.toggle.setToolTip(self.summary.text())
            if not self._msg.streaming:
                self._tick.stop()
