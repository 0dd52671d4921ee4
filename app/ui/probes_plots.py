"""The Probes view's pieces: the cell colour scale, two QPainter plots (reasoning-length distribution per model,
per-subject scores side by side across models; same style as :mod:`app.ui.plots`), and the transcript dialog."""
from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path

from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QColor, QPainter, QPaintEvent, QPen
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QSizePolicy, QTextBrowser, QVBoxLayout, QWidget

from app.core.probes.judge import judge_prompt
from app.core.probes.store import ProbeResult

from .plots import _axis_font

# one colour per model (first = the reference)
MODEL_COLORS = ("#1e88e5", "#e53935", "#43a047", "#fb8c00", "#8e24aa", "#00897b", "#6d4c41", "#546e7a")
# judge score 1..5: hostile (red) .. glowing (green); pale, behind text
SCORE_COLORS = {1: "#ef9a9a", 2: "#ffcc80", 3: "#eeeeee", 4: "#c5e1a5", 5: "#81c784"}
REFUSAL_COLOR, SKIPPED_COLOR, CUT_COLOR = "#ce93d8", "#b0bec5", "#fff59d"
RIGHT_COLOR, WRONG_COLOR, LOST_COLOR = "#a5d6a7", "#ef9a9a", "#ffcc80"


def cell_color(results: Sequence[ProbeResult]) -> QColor:
    """A cell's background: refusal (purple) > checkable right/wrong/right-answer-lost (green/red/orange) > judge
    score (red..green) > cut at the token limit (yellow) > skipped reasoning (grey) > white."""
    if not results:
        return QColor("#ffffff")
    if any(r.refusal for r in results):
        return QColor(REFUSAL_COLOR)
    if results[0].expected is not None:
        if all(r.correct for r in results):
            return QColor(RIGHT_COLOR)
        return QColor(LOST_COLOR if any(r.lost_answer for r in results) else WRONG_COLOR)
    scores = [r.judge_score for r in results if r.judge_score is not None]
    if scores:
        return QColor(SCORE_COLORS[round(sum(scores) / len(scores))])
    if any(r.unterminated for r in results):
        return QColor(CUT_COLOR)
    if all(r.skipped_reasoning for r in results):
        return QColor(SKIPPED_COLOR)
    return QColor("#ffffff")


def cell_text(results: Sequence[ProbeResult]) -> str:
    """``"412+38 tok · ✓ · J4"``: mean reasoning + answer tokens, then flags (∅ skipped reasoning, ✂ cut at the limit,
    ⛔ refusal, ✓/✗ checkable, ↯ right answer lost), then the mean judge score."""
    if not results:
        return ""
    n = len(results)
    reasoning, answer = sum(r.reasoning_tokens for r in results) / n, sum(r.answer_tokens for r in results) / n
    parts = [f"{reasoning:.0f}+{answer:.0f} tok"]
    flags = ""
    if any(r.skipped_reasoning for r in results):
        flags += "∅"
    if any(r.unterminated for r in results):
        flags += "✂"
    if any(r.refusal for r in results):
        flags += "⛔"
    if results[0].expected is not None:
        right = sum(1 for r in results if r.correct)
        flags += "✓" if right == n else ("✗" if right == 0 else f"{right}/{n}✓")
        if any(r.lost_answer for r in results):
            flags += "↯"
    if flags:
        parts.append(flags)
    scores = [r.judge_score for r in results if r.judge_score is not None]
    if scores:
        parts.append(f"J{sum(scores) / len(scores):.1f}".replace(".0", ""))
    return " · ".join(parts)


class _Plot(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumHeight(160)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def sizeHint(self) -> QSize:
        return QSize(500, 220)

    def _frame(self, p: QPainter, title: str) -> QRectF:
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.fillRect(self.rect(), self.palette().base())
        p.setFont(_axis_font(self))
        p.setPen(self.palette().text().color())
        p.drawText(QRectF(0, 2, self.width(), 16), Qt.AlignmentFlag.AlignCenter, title)
        return QRectF(44, 22, max(10, self.width() - 52), max(10, self.height() - 62))

    def _legend(self, p: QPainter, r: QRectF, names: Sequence[str]) -> None:
        x = r.left()
        for i, name in enumerate(names):
            p.fillRect(QRectF(x, r.bottom() + 22, 10, 10), QColor(MODEL_COLORS[i % len(MODEL_COLORS)]))
            p.setPen(self.palette().text().color())
            w = p.fontMetrics().horizontalAdvance(name) + 24
            p.drawText(QRectF(x + 14, r.bottom() + 18, w, 18), Qt.AlignmentFlag.AlignVCenter, name)
            x += w


class ReasoningLengthPlot(_Plot):
    """Histogram of reasoning tokens per probe, one colour per model, bars of a bin side by side."""

    BINS = 12

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._series: list[tuple[str, list[int]]] = []

    def set_data(self, series: Sequence[tuple[str, Sequence[int]]]) -> None:
        self._series = [(name, list(v)) for name, v in series]
        self.update()

    def counts(self) -> tuple[float, list[list[int]]]:
        """(bin width, counts per model per bin) -- what is drawn."""
        top = max((max(v) for _, v in self._series if v), default=0)
        width = max(1.0, math.ceil((top + 1) / self.BINS))
        out = []
        for _, v in self._series:
            c = [0] * self.BINS
            for x in v:
                c[min(self.BINS - 1, int(x // width))] += 1
            out.append(c)
        return width, out

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 - Qt API
        p = QPainter(self)
        r = self._frame(p, "reasoning length per probe (tokens) — how many probes")
        if not self._series:
            p.drawText(r, Qt.AlignmentFlag.AlignCenter, "no results yet")
            return
        width, counts = self.counts()
        if all(x == 0 for _, v in self._series for x in v):
            p.drawText(r, Qt.AlignmentFlag.AlignCenter, "no probe reasoned: every answer skipped the <think> block")
            self._legend(p, r, [n for n, _ in self._series])
            return
        peak = max(1, max(max(c) for c in counts))
        bw = r.width() / self.BINS
        m = len(counts)
        for b in range(self.BINS):
            for i, c in enumerate(counts):
                h = r.height() * c[b] / peak
                p.fillRect(QRectF(r.left() + b * bw + i * bw / m + 1, r.bottom() - h, max(1.0, bw / m - 2), h),
                           QColor(MODEL_COLORS[i % len(MODEL_COLORS)]))
            if b % 2 == 0:
                p.setPen(self.palette().text().color())
                p.drawText(QRectF(r.left() + b * bw, r.bottom() + 2, bw * 2, 14), Qt.AlignmentFlag.AlignLeft,
                           f"{b * width:.0f}")
        p.drawText(QRectF(0, r.top() - 4, 40, 14), Qt.AlignmentFlag.AlignRight, str(peak))
        p.setPen(QPen(self.palette().text().color()))
        p.drawRect(r)
        self._legend(p, r, [n for n, _ in self._series])


class SubjectScorePlot(_Plot):
    """Per subject, one bar per model: the judge's mean score, or accuracy (checkable sets), or mean reasoning
    tokens when there is neither (the title says which)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._subjects: list[str] = []
        self._models: list[str] = []
        self._values: dict[tuple[str, str], float] = {}
        self._what, self._top = "", 1.0

    def set_data(self, subjects: Sequence[str], models: Sequence[str], values: dict[tuple[str, str], float],
                 what: str, top: float) -> None:
        self._subjects, self._models, self._values = list(subjects), list(models), dict(values)
        self._what, self._top = what, max(top, 1e-9)
        self.update()

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 - Qt API
        p = QPainter(self)
        r = self._frame(p, f"per subject: {self._what}" if self._what else "per subject")
        if not self._subjects:
            p.drawText(r, Qt.AlignmentFlag.AlignCenter, "no results yet")
            return
        gw = r.width() / len(self._subjects)
        m = max(1, len(self._models))
        for s_i, subject in enumerate(self._subjects):
            for m_i, model in enumerate(self._models):
                v = self._values.get((subject, model))
                if v is None:
                    continue
                h = r.height() * min(1.0, v / self._top)
                p.fillRect(QRectF(r.left() + s_i * gw + m_i * gw / m + 1, r.bottom() - h, max(1.0, gw / m - 2), h),
                           QColor(MODEL_COLORS[m_i % len(MODEL_COLORS)]))
            p.setPen(self.palette().text().color())
            label = subject if len(subject) <= 12 else subject[:11] + "…"
            p.drawText(QRectF(r.left() + s_i * gw, r.bottom() + 2, gw, 14), Qt.AlignmentFlag.AlignCenter, label)
        p.drawText(QRectF(0, r.top() - 4, 40, 14), Qt.AlignmentFlag.AlignRight, f"{self._top:g}")
        p.setPen(QPen(self.palette().text().color()))
        p.drawRect(r)
        self._legend(p, r, self._models)


def transcript_html(results: Sequence[ProbeResult], with_judge_prompt: bool) -> str:
    out = []
    for r in results:
        flags = [f for f, on in (("reasoning skipped", r.skipped_reasoning), ("cut at the token limit",
                                 r.unterminated), (f"refusal ({r.refusal})", bool(r.refusal)),
                                 ("right answer in the reasoning, not in the final answer", r.lost_answer)) if on]
        check = ""
        if r.expected is not None:
            check = (f"<p><b>Expected</b> {r.expected:g} · <b>extracted</b> {html.escape(str(r.extracted))} · "
                     f"{'right' if r.correct else 'wrong'}</p>")
        out.append(
            f"<h3>{html.escape(Path(r.model).name)} — {html.escape(r.template)} · {html.escape(r.subject)} · "
            f"sample {r.sample} (seed {r.seed})</h3>"
            f"<p><b>Prompt</b><br>{html.escape(r.prompt)}</p>"
            f"<p><b>Reasoning</b> ({r.reasoning_tokens} tokens)<br><span style='color:#607d8b'>"
            f"{html.escape(r.reasoning) or '<i>none</i>'}</span></p>"
            f"<p><b>Answer</b> ({r.answer_tokens} tokens, {r.wall_s:.1f} s, {r.finish})<br>"
            f"{html.escape(r.answer)}</p>{check}"
            f"<p><b>Flags</b> {html.escape(', '.join(flags) or 'none')}"
            f"{f' · <b>judge</b> {r.judge_score}/5' if r.judge_score is not None else ''}</p>")
        if with_judge_prompt and r.judge_score is not None:
            out.append(f"<p><b>Judge prompt</b></p><pre>{html.escape(judge_prompt(r.subject, r.prompt, r.answer))}"
                       f"</pre>")
    return "<hr>".join(out)


class TranscriptDialog(QDialog):
    def __init__(self, results: Sequence[ProbeResult], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("probeTranscript")
        r0 = results[0]
        self.setWindowTitle(f"{Path(r0.model).name} — {r0.template} · {r0.subject}")
        self.text = QTextBrowser()
        self.text.setObjectName("transcriptText")
        self.text.setHtml(transcript_html(results, with_judge_prompt=True))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(self.text)
        lay.addWidget(buttons)
        self.resize(760, 620)
