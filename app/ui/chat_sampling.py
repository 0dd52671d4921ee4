"""The chat's sampling bar (temperature, top-p, max tokens, greedy, seed, R1 defaults) and the system prompt box.

What the user sets here is the app's setting: every change is written to the settings file (debounced, and
flushed when the window closes), so a restart shows the same values.  A conversation opened from the history
shows its own system prompt without making it the default (:meth:`SamplingBar.show_system_prompt`).
"""
from __future__ import annotations

import logging
from typing import Any

from PySide6.QtCore import QSignalBlocker, QTimer
from PySide6.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QToolButton,
    QWidget,
)

from .settings import R1_TEMPERATURE, R1_TOP_P, save_settings

log = logging.getLogger(__name__)

SAVE_DELAY_MS = 400
SEED_MAX = 2**31 - 1


class SamplingBar(QWidget):
    """One row of sampling controls plus the (separately placed) system prompt editor."""

    def __init__(self, settings_getter, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._settings = settings_getter
        self._showing = False
        s = settings_getter()
        self.system_toggle = QToolButton()
        self.system_toggle.setObjectName("systemPromptToggle")
        self.system_toggle.setText("System prompt")
        self.system_toggle.setCheckable(True)
        self.system_prompt = QPlainTextEdit(s.system_prompt)
        self.system_prompt.setObjectName("systemPrompt")
        self.system_prompt.setPlaceholderText("Optional instructions for the whole conversation. (DeepSeek advises "
                                              "R1 models to get all instructions in the user message instead.)")
        self.system_prompt.setMaximumHeight(70)
        self.system_prompt.setVisible(False)
        self._default_prompt = s.system_prompt  # what the user typed last (saved), not a conversation's own
        self.system_prompt.textChanged.connect(self._on_prompt_edited)
        self.system_toggle.toggled.connect(self.system_prompt.setVisible)
        self.temperature = QDoubleSpinBox()
        self.temperature.setObjectName("temperature")
        self.temperature.setRange(0.0, 2.0)
        self.temperature.setSingleStep(0.05)
        self.temperature.setValue(s.temperature)
        self.top_p = QDoubleSpinBox()
        self.top_p.setObjectName("topP")
        self.top_p.setRange(0.0, 1.0)
        self.top_p.setSingleStep(0.01)
        self.top_p.setValue(s.top_p)
        self.max_tokens = QSpinBox()
        self.max_tokens.setObjectName("maxTokens")
        self.max_tokens.setRange(1, 65536)
        self.max_tokens.setValue(s.max_tokens)
        self.seed = QSpinBox()
        self.seed.setObjectName("seed")
        self.seed.setRange(-1, SEED_MAX)
        self.seed.setSpecialValueText("random")  # shown for -1 (the minimum)
        self.seed.setToolTip("A fixed seed makes sampled replies reproducible; 'random' (-1) draws a new one each "
                             "reply. Greedy replies do not depend on it.")
        self.seed.setValue(s.seed if s.seed >= 0 else -1)
        self.greedy = QCheckBox("Greedy")
        self.greedy.setObjectName("greedy")
        self.greedy.setChecked(s.greedy)
        self.greedy.toggled.connect(self._on_greedy)
        self._on_greedy(s.greedy)
        self.r1_button = QPushButton("R1 defaults")
        self.r1_button.setObjectName("r1Defaults")
        self.r1_button.setToolTip("temperature 0.6, top-p 0.95 (DeepSeek's recommendation for R1 and its distills)")
        self.r1_button.clicked.connect(lambda: self.reset())
        self.seed.setMaximumWidth(110)  # its size hint is made for the widest value; ten digits fit in this
        row = QHBoxLayout(self)  # the system prompt toggle is placed by the chat view (beside the model)
        row.setContentsMargins(0, 0, 0, 0)
        for label, w in (("Temperature", self.temperature), ("Top-p", self.top_p), ("Max tokens", self.max_tokens),
                         ("Seed", self.seed)):
            row.addWidget(QLabel(label))
            row.addWidget(w)
        row.addWidget(self.greedy)
        row.addWidget(self.r1_button)
        row.addStretch(1)
        self._save_timer = QTimer(self)
        self._save_timer.setSingleShot(True)
        self._save_timer.setInterval(SAVE_DELAY_MS)
        self._save_timer.timeout.connect(self.save_now)
        for sig in (self.temperature.valueChanged, self.top_p.valueChanged, self.max_tokens.valueChanged,
                    self.seed.valueChanged, self.greedy.toggled, self.system_prompt.textChanged):
            sig.connect(self._changed)

    def _changed(self, *_: object) -> None:
        if not self._showing:  # a conversation's own values shown on opening it are not the user's new default
            self._save_timer.start()

    def _on_prompt_edited(self) -> None:
        self._default_prompt = self.system_prompt.toPlainText()

    def _on_greedy(self, on: bool) -> None:
        self.temperature.setEnabled(not on)
        self.top_p.setEnabled(not on)

    def reset(self) -> None:
        """DeepSeek's recommended sampling for R1 (temperature 0.6, top-p 0.95, not greedy)."""
        self.temperature.setValue(R1_TEMPERATURE)
        self.top_p.setValue(R1_TOP_P)
        self.greedy.setChecked(False)

    def sampling(self) -> Any:
        from app.core.chat_types import SamplingSettings

        seed = self.seed.value()
        return SamplingSettings(temperature=self.temperature.value(), top_p=self.top_p.value(),
                                max_tokens=self.max_tokens.value(), greedy=self.greedy.isChecked(),
                                seed=None if seed < 0 else seed)

    def show_system_prompt(self, text: str) -> None:
        """Show a conversation's own system prompt without making it the saved default."""
        with QSignalBlocker(self.system_prompt):
            self.system_prompt.setPlainText(text)
        if text and not self.system_toggle.isChecked():
            self.system_toggle.setChecked(True)  # a conversation with a system prompt shows it

    def show_sampling(self, saved: dict) -> None:
        """Show a conversation's own sampling (what its last message was sent with) without making it the saved
        default.  Values a conversation saved by an older version lacks stay as they are."""
        from app.core.chat_types import SamplingSettings

        try:
            s = SamplingSettings.from_dict(saved or {})
        except (TypeError, ValueError):  # a damaged entry: keep what is on screen
            return
        given = set(saved or {})
        self._showing = True
        try:
            if "temperature" in given:
                self.temperature.setValue(s.temperature)
            if "top_p" in given:
                self.top_p.setValue(s.top_p)
            if "max_tokens" in given:
                self.max_tokens.setValue(s.max_tokens)
            if "seed" in given:
                self.seed.setValue(s.seed if s.seed is not None and s.seed >= 0 else -1)
            if "greedy" in given:
                self.greedy.setChecked(bool(s.greedy))
        finally:
            self._showing = False

    def save_now(self) -> None:
        """Write the controls' values to the settings file (the debounce timer ends here; closing flushes)."""
        self._save_timer.stop()
        s = self._settings()
        s.temperature = round(self.temperature.value(), 4)
        s.top_p = round(self.top_p.value(), 4)
        s.max_tokens = self.max_tokens.value()
        s.seed = self.seed.value()
        s.greedy = self.greedy.isChecked()
        s.system_prompt = self._default_prompt
        try:
            save_settings(s)
        except OSError as e:  # the chat keeps working with the values on screen; the next change retries
            log.warning("could not save the chat settings: %s", e)

    def flush(self) -> None:
        if self._save_timer.isActive():
            self.save_now()
