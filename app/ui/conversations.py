"""The conversation list (left of the chat) over the SQLite chat history of :mod:`app.core.history`.

:class:`HistoryStore` is the view's adapter over the history service: it maps :class:`ChatMessage` to what the
service stores and back.  A conversation is created with its first message; every complete message is saved
as soon as it is complete (the service commits it), so a crash loses nothing finished.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .chat_model import ChatMessage, MessageListModel
from .errors import show_error

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConversationSummary:
    id: Any
    title: str
    updated: float
    model: str = ""


# Keys of a stored message's ``stats`` that are the view's bookkeeping rather than ReplyStats timings.
_META = ("finish_reason", "unterminated", "skipped_reasoning", "notice", "context_full", "model")


class HistoryStore:
    """Adapter over :class:`app.core.history.History`.  A message's id here is its position in the conversation
    (what ``History.truncate`` keeps up to); the system prompt lives in the conversation's settings."""

    def __init__(self) -> None:
        from app.core.history import History

        self._h = History()
        self.notice: str | None = self._h.notice  # set when a damaged database was set aside

    def list(self) -> list[ConversationSummary]:
        return [ConversationSummary(c.id, c.title, c.updated, c.model_path or "") for c in self._h.conversations()]

    def create(self, title: str, model_path: str, system_prompt: str, sampling: dict | None = None) -> Any:
        return self._h.create(title=title, model_path=model_path or None,
                              settings={**(sampling or {}), "system_prompt": system_prompt})

    def add(self, conversation: Any, m: ChatMessage) -> Any:
        stats = {**m.stats, "finish_reason": m.finish_reason, "unterminated": m.unterminated,
                 "skipped_reasoning": m.skipped_reasoning, "notice": m.notice, "context_full": m.context_full,
                 "model": m.model}
        return self._h.add_message(conversation, {"role": m.role, "content": m.content, "reasoning": m.reasoning},
                                   stats=stats if m.role == "assistant" else None)

    def load(self, conversation: Any) -> tuple[list[ChatMessage], str, dict]:
        conv = self._h.get(conversation)
        out = []
        for r in conv.messages:
            st = dict(r.stats or {})
            meta = {k: st.pop(k) for k in _META if k in st}
            out.append(ChatMessage(r.role, r.content, r.reasoning or "", model=meta.get("model", ""), stats=st,
                                   finish_reason=meta.get("finish_reason", ""),
                                   unterminated=bool(meta.get("unterminated")),
                                   skipped_reasoning=bool(meta.get("skipped_reasoning")),
                                   notice=meta.get("notice", "") or "",
                                   context_full=bool(meta.get("context_full")), history_id=r.position))
        sampling = {k: v for k, v in conv.settings.items() if k != "system_prompt"}
        return out, str(conv.settings.get("system_prompt", "") or ""), sampling

    def update_settings(self, conversation: Any, model_path: str, system_prompt: str, sampling: dict) -> None:
        """Record the system prompt and sampling the conversation now continues with."""
        self._h.set_model(conversation, model_path or None, {**sampling, "system_prompt": system_prompt})

    def delete_from(self, conversation: Any, message_id: Any) -> None:
        self._h.truncate(conversation, int(message_id))

    def delete(self, conversation: Any) -> None:
        self._h.delete(conversation)

    def close(self) -> None:
        self._h.close()


class ConversationPanel(QWidget):
    aboutToSwitch = Signal()  # the open conversation is about to change (still ``current`` while this runs)
    conversationOpened = Signal(object, str, object)  # list[ChatMessage], system prompt, sampling dict
    newRequested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("conversationPanel")
        self._store: HistoryStore | None = None
        self._store_failed = False
        self.current: Any = None
        self.new_button = QPushButton("New chat")
        self.new_button.setObjectName("newChatButton")
        self.new_button.clicked.connect(self.newRequested.emit)
        self.delete_button = QPushButton("Delete")
        self.delete_button.setObjectName("deleteChatButton")
        self.delete_button.setToolTip("Delete the selected conversation (asks first)")
        self.delete_button.clicked.connect(lambda: self._delete_selected())
        self.list = QListWidget()
        self.list.setObjectName("conversationList")
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.list.setWordWrap(False)
        self.list.itemActivated.connect(self._open_item)
        self.list.itemClicked.connect(self._open_item)
        row = QHBoxLayout()
        row.addWidget(self.new_button, 1)
        row.addWidget(self.delete_button)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(row)
        lay.addWidget(self.list, 1)

    def store(self) -> HistoryStore | None:
        if self._store is None and not self._store_failed:
            try:
                self._store = HistoryStore()
            except Exception as e:  # noqa: BLE001 - chat still works, unsaved; the dialog says why
                self._store_failed = True
                show_error(self, e, context="The chat history cannot be opened (chats will not be saved)")
            else:
                if self._store.notice:
                    from app.core.errors import CorruptHistoryError

                    show_error(self, CorruptHistoryError(self._store.notice))
        return self._store

    def refresh(self) -> None:
        st = self.store()
        self.list.clear()
        if st is None:
            return
        try:
            convs = st.list()
        except Exception as e:  # noqa: BLE001
            show_error(self, e)
            return
        for c in sorted(convs, key=lambda c: -c.updated):
            it = QListWidgetItem(c.title or "(untitled)")
            it.setToolTip(f"{c.model}\n{time.strftime('%Y-%m-%d %H:%M', time.localtime(c.updated))}")
            it.setData(Qt.ItemDataRole.UserRole, c.id)
            self.list.addItem(it)
            if c.id == self.current:
                it.setSelected(True)

    def start_new(self) -> None:
        self.current = None
        self.list.clearSelection()

    def _open_item(self, item: QListWidgetItem) -> None:
        st = self.store()
        cid = item.data(Qt.ItemDataRole.UserRole)
        if st is None or cid == self.current:
            return
        try:
            messages, system_prompt, sampling = st.load(cid)
        except Exception as e:  # noqa: BLE001
            show_error(self, e)
            return
        self.aboutToSwitch.emit()  # a reply still streaming is saved into the conversation it belongs to
        self.current = cid
        self.conversationOpened.emit(messages, system_prompt, sampling)

    def open(self, conversation: Any) -> bool:
        for i in range(self.list.count()):
            if self.list.item(i).data(Qt.ItemDataRole.UserRole) == conversation:
                self._open_item(self.list.item(i))
                return True
        return False

    def save_message(self, model: MessageListModel, row: int, system_prompt: str, model_path: str,
                     sampling: dict | None = None) -> None:
        """Store message ``row`` (complete), creating the conversation with its first message."""
        st = self.store()
        if st is None:
            return
        m = model.message(row)
        try:
            if self.current is None:
                first_user = next((x.content for x in model.messages() if x.role == "user"), m.content)
                title = " ".join(first_user.split())[:60]
                self.current = st.create(title, model_path, system_prompt.strip(), sampling)
                self.refresh()
            else:  # a system prompt (or sampling) changed mid-conversation is the conversation's from now on
                st.update_settings(self.current, model_path, system_prompt.strip(), sampling or {})
            mid = st.add(self.current, m)
        except Exception as e:  # noqa: BLE001
            show_error(self, e, context="Saving the message failed")
            return
        model.update(row, history_id=mid)

    def truncate(self, model: MessageListModel, row: int) -> None:
        """Forget stored messages from ``row`` on (edit-and-resend, regenerate)."""
        st = self.store()
        if st is None or self.current is None or row >= model.rowCount():
            return
        mid = model.message(row).history_id
        if mid is None:
            return
        try:
            st.delete_from(self.current, mid)
        except Exception as e:  # noqa: BLE001
            show_error(self, e)

    def _delete_selected(self) -> None:
        st = self.store()
        items = self.list.selectedItems()
        if st is None or not items:
            return
        cid = items[0].data(Qt.ItemDataRole.UserRole)
        if not self._confirm_delete(items[0].text()):
            return
        if cid == self.current:
            self.newRequested.emit()  # leaves it first (a reply being generated stops)
        try:
            st.delete(cid)
        except Exception as e:  # noqa: BLE001
            show_error(self, e)
        self.refresh()

    def _confirm_delete(self, title: str) -> bool:
        box = QMessageBox(QMessageBox.Icon.Question, "Delete chat",
                          f"Delete the chat “{title}” and all its messages? This cannot be undone.",
                          QMessageBox.StandardButton.Cancel, self)
        box.setObjectName("deleteChatConfirm")
        delete = box.addButton("Delete", QMessageBox.ButtonRole.DestructiveRole)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        box.exec()
        return box.clickedButton() is delete

    def close_store(self) -> None:
        if self._store is not None:
            try:
                self._store.close()
            except Exception:  # noqa: BLE001
                log.exception("closing the history failed")
            self._store = None
