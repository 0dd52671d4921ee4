"""The messages of the open conversation as a QAbstractListModel.

Changed ONLY on the GUI thread (every mutator checks it and raises otherwise): workers send text through
signals, the chat view applies it here.  That is the gpt4all lesson -- a worker mutating the model behind the
view's back is a crash waiting to happen.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from PySide6.QtCore import QAbstractListModel, QModelIndex, QObject, QPersistentModelIndex, Qt, QThread


@dataclass
class ChatMessage:
    role: str  # "system" | "user" | "assistant"
    content: str = ""  # the answer (assistant) or the message (user)
    reasoning: str = ""  # assistant only: the chain of thought, shown in the side panel, never re-sent
    streaming: bool = False
    finish_reason: str = ""  # "stop" | "length" | "cancelled" | "error"
    unterminated: bool = False
    skipped_reasoning: bool = False
    notice: str = ""  # e.g. "2 oldest turns were left out to fit the context"
    context_full: bool = False  # finish_reason "length" because the context ended (not max_tokens)
    stats: dict[str, Any] = field(default_factory=dict)  # ReplyStats as a dict
    model: str = ""
    # live bookkeeping while streaming (the final figures come from the reply's stats)
    reasoning_tokens: int = 0
    answer_tokens: int = 0
    reasoning_started: float = 0.0
    reasoning_ended: float = 0.0
    history_id: Any = None  # id of the stored message, when saved

    def thought_seconds(self) -> float:
        if self.stats.get("reasoning_s"):
            return float(self.stats["reasoning_s"])
        if not self.reasoning_started:
            return 0.0
        return (self.reasoning_ended or time.monotonic()) - self.reasoning_started

    def thought_tokens(self) -> int:
        return int(self.stats.get("reasoning_tokens") or self.reasoning_tokens)


MessageRole = Qt.ItemDataRole.UserRole + 1


class MessageListModel(QAbstractListModel):
    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._messages: list[ChatMessage] = []

    # ---- read -----------------------------------------------------------------------------------------------
    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008,N802
        return 0 if parent.isValid() else len(self._messages)

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._messages):
            return None
        m = self._messages[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return m.content
        if role == MessageRole:
            return m
        return None

    def message(self, row: int) -> ChatMessage:
        return self._messages[row]

    def messages(self) -> list[ChatMessage]:
        return list(self._messages)

    def last_row(self, role: str | None = None) -> int:
        for i in range(len(self._messages) - 1, -1, -1):
            if role is None or self._messages[i].role == role:
                return i
        return -1

    # ---- write (GUI thread only) ----------------------------------------------------------------------------
    def _check_thread(self) -> None:
        if QThread.currentThread() is not self.thread():
            raise RuntimeError("MessageListModel may only be changed on the GUI thread; send a signal instead")

    def append(self, msg: ChatMessage) -> int:
        self._check_thread()
        row = len(self._messages)
        self.beginInsertRows(QModelIndex(), row, row)
        self._messages.append(msg)
        self.endInsertRows()
        return row

    def update(self, row: int, **changes: Any) -> None:
        self._check_thread()
        self._messages[row] = replace(self._messages[row], **changes)
        idx = self.index(row)
        self.dataChanged.emit(idx, idx)

    def append_text(self, row: int, kind: str, text: str) -> None:
        """Stream a piece of reasoning or answer into message ``row``."""
        self._check_thread()
        m = self._messages[row]
        now = time.monotonic()
        if kind == "reasoning":
            if not m.reasoning_started:
                m.reasoning_started = now
            m.reasoning += text
            m.reasoning_tokens += 1
        else:
            if m.reasoning_started and not m.reasoning_ended:
                m.reasoning_ended = now
            m.content += text
            m.answer_tokens += 1
        idx = self.index(row)
        self.dataChanged.emit(idx, idx)

    def truncate(self, row: int) -> None:
        """Remove message ``row`` and everything after it (edit-and-resend, regenerate)."""
        self._check_thread()
        if row >= len(self._messages):
            return
        self.beginRemoveRows(QModelIndex(), row, len(self._messages) - 1)
        del self._messages[row:]
        self.endRemoveRows()

    def set_messages(self, messages: list[ChatMessage]) -> None:
        self._check_thread()
        self.beginResetModel()
        self._messages = list(messages)
        self.endResetModel()

    def clear(self) -> None:
        self.set_messages([])
