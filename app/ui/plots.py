"""Two small QPainter plots (no plotting dependency): per-token KL divergence, and size vs mean KL of the
eval ladder.  Both are plain widgets fed with plain numbers; colours come from :func:`kl_color` so the
token colouring of the Compare view and the plot agree."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from PySide6.QtCore import QPointF, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QFont, QMouseEvent, QPainter, QPaintEvent, QPen
from PySide6.QtWidgets import QSizePolicy, QToolTip, QWidget

from app.core.units import format_size

# KL thresholds (nats) of the colour scale: below the first a token is "same", above the last "very different".
KL_SCALE = (0.001, 0.01, 0.1, 1.0)
_COLORS = ("#e8f5e9", "#c8e6c9", "#fff59d", "#ffb74d", "#e57373")  # pale: behind text
_BAR_COLORS = ("#81c784", "#43a047", "#fbc02d", "#fb8c00", "#e53935")  # saturated: bars and points


def _bucket(kl: float) -> int:
    for i, threshold in enumerate(KL_SCALE):
        if kl < threshold:
            return i
    return len(KL_SCALE)


def kl_color(kl: float) -> QColor:
    """Background colour of a token with divergence ``kl`` (green = same distribution, red = very different)."""
    return QColor(_COLORS[_bucket(kl)])


def kl_bar_color(kl: float) -> QColor:
    """The same scale, saturated, for bars and points."""
    return QColor(_BAR_COLORS[_bucket(kl)])


def _axis_font(w: QWidget) -> QFont:
    f = QFont(w.font())
    f.setPointSizeF(max(7.0, f.pointSizeF() * 0.85))
    return f


class KLPlot(QWidget):
    """Bars of KL(P_ref || P_cand) per answer token (log scale), the first divergence marked.
    Clicking a bar emits ``tokenClicked(index)``."""

    tokenClicked = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._kl: list[float] = []
        self._labels: list[str] = []
        self._divergence: int | None = None
        self._selected: int | None = None
        self.setMinimumHeight(120)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.setMouseTracking(True)

    def sizeHint(self) -> QSize:
        return QSize(600, 160)

    def set_data(self, kl: Sequence[float], labels: Sequence[str] = (), divergence: int | None = None) -> None:
        self._kl = [max(0.0, float(v)) for v in kl]
        self._labels = list(labels)
        self._divergence = divergence
        self._selected = None
        self.update()

    def clear(self) -> None:
        self.set_data([])

    def select(self, index: int | None) -> None:
        self._selected = index
        self.update()

    # log10 scale between 1e-4 and 10 nats
    _LO, _HI = -4.0, 1.0

    def _plot_rect(self) -> QRectF:
        return QRectF(44, 8, max(10, self.width() - 52), max(10, self.height() - 30))

    def _y(self, r: QRectF, kl: float) -> float:
        v = math.log10(max(kl, 10 ** self._LO))
        frac = (min(v, self._HI) - self._LO) / (self._HI - self._LO)
        return r.bottom() - frac * r.height()

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 - Qt API
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.fillRect(self.rect(), self.palette().base())
        r = self._plot_rect()
        p.setFont(_axis_font(self))
        grid = QPen(QColor("#d0d0d0"))
        for e in range(int(self._LO), int(self._HI) + 1):
            y = self._y(r, 10.0 ** e)
            p.setPen(grid)
            p.drawLine(QPointF(r.left(), y), QPointF(r.right(), y))
            p.setPen(self.palette().text().color())
            p.drawText(QRectF(0, y - 8, 40, 16), Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                       f"1e{e}")
        p.drawText(QRectF(r.left(), r.bottom() + 4, r.width(), 18), Qt.AlignmentFlag.AlignCenter,
                   "answer token  →   (KL divergence, nats, log scale)" if self._kl else "no comparison yet")
        n = len(self._kl)
        if not n:
            return
        bw = r.width() / n
        for i, kl in enumerate(self._kl):
            y = self._y(r, kl)
            bar = QRectF(r.left() + i * bw, y, max(1.0, bw - (1 if bw > 3 else 0)), r.bottom() - y)
            c = kl_bar_color(kl) if i != self._selected else QColor("#263238")
            p.fillRect(bar, c)
        if self._divergence is not None and 0 <= self._divergence < n:
            x = r.left() + (self._divergence + 0.5) * bw
            p.setPen(QPen(QColor("#c62828"), 2, Qt.PenStyle.DashLine))
            p.drawLine(QPointF(x, r.top()), QPointF(x, r.bottom()))
            p.drawText(QPointF(min(x + 4, r.right() - 90), r.top() + 12), "first divergence")
        p.setPen(QPen(self.palette().text().color()))
        p.drawRect(r)

    def _index_at(self, x: float) -> int | None:
        r = self._plot_rect()
        if not self._kl or not (r.left() <= x <= r.right()):
            return None
        return min(len(self._kl) - 1, int((x - r.left()) / (r.width() / len(self._kl))))

    def mouseMoveEvent(self, e: QMouseEvent) -> None:  # noqa: N802 - Qt API
        i = self._index_at(e.position().x())
        if i is None:
            QToolTip.hideText()
            return
        label = self._labels[i] if i < len(self._labels) else ""
        QToolTip.showText(e.globalPosition().toPoint(), f"token {i} {label!r}: KL {self._kl[i]:.4g}", self)

    def mousePressEvent(self, e: QMouseEvent) -> None:  # noqa: N802 - Qt API
        i = self._index_at(e.position().x())
        if i is not None:
            self.select(i)
            self.tokenClicked.emit(i)


@dataclass(frozen=True)
class LadderPoint:
    label: str  # quantization type, e.g. "Q4_K_M"
    size_bytes: int
    mean_kl: float
    bpw: float = 0.0


class LadderPlot(QWidget):
    """Each quantization as a point: file size (x) against mean KL vs the reference (y, log scale)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._points: list[LadderPoint] = []
        self.setMinimumHeight(160)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)

    def sizeHint(self) -> QSize:
        return QSize(420, 220)

    def set_points(self, points: Sequence[LadderPoint]) -> None:
        self._points = sorted(points, key=lambda pt: pt.size_bytes)
        self.update()

    def points(self) -> list[LadderPoint]:
        return list(self._points)

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 - Qt API
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.fillRect(self.rect(), self.palette().base())
        p.setFont(_axis_font(self))
        r = QRectF(52, 22, max(10, self.width() - 66), max(10, self.height() - 52))
        text = self.palette().text().color()
        p.setPen(QPen(text))
        p.drawRect(r)
        p.drawText(QRectF(r.left(), r.bottom() + 18, r.width(), 16), Qt.AlignmentFlag.AlignCenter,
                   "file size" if self._points else "run the eval ladder to see where each bit-width sits")
        pts = [pt for pt in self._points if pt.size_bytes > 0]
        if not pts:
            return
        kls = [max(pt.mean_kl, 1e-6) for pt in pts]
        lo, hi = math.floor(math.log10(min(kls))), math.ceil(math.log10(max(kls)))
        hi = max(hi, lo + 1)
        smin, smax = min(pt.size_bytes for pt in pts), max(pt.size_bytes for pt in pts)
        span = max(1, smax - smin)

        def xy(pt: LadderPoint) -> QPointF:
            fx = 0.5 if smax == smin else (pt.size_bytes - smin) / span
            fy = (math.log10(max(pt.mean_kl, 1e-6)) - lo) / (hi - lo)
            return QPointF(r.left() + 20 + fx * (r.width() - 40), r.bottom() - 10 - fy * (r.height() - 20))

        for e in range(lo, hi + 1):
            y = r.bottom() - 10 - (e - lo) / (hi - lo) * (r.height() - 20)
            p.setPen(QPen(QColor("#d0d0d0")))
            p.drawLine(QPointF(r.left(), y), QPointF(r.right(), y))
            p.setPen(QPen(text))
            p.drawText(QRectF(0, y - 8, 48, 16), Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                       f"1e{e}")
        for v, pt in ((smin, pts[0]), (smax, pts[-1])):
            x = xy(pt).x()
            p.drawText(QRectF(x - 40, r.bottom() + 2, 80, 14), Qt.AlignmentFlag.AlignCenter, format_size(v))
        p.setPen(QPen(QColor("#1565c0"), 1.5))
        for a, b in zip(pts, pts[1:], strict=False):
            p.drawLine(xy(a), xy(b))
        for pt in pts:
            c = xy(pt)
            p.setBrush(kl_bar_color(pt.mean_kl))
            p.setPen(QPen(QColor("#1565c0")))
            p.drawEllipse(c, 5, 5)
            p.setPen(QPen(text))
            label = f"{pt.label} ({pt.bpw:.2f} bpw)" if pt.bpw else pt.label
            w = p.fontMetrics().horizontalAdvance(label)
            x = c.x() + 8 if c.x() + 8 + w < r.right() - 2 else c.x() - 8 - w  # keep labels inside the plot
            p.drawText(QPointF(x, c.y() - 6), label)
        p.drawText(QRectF(4, 2, 200, 16), Qt.AlignmentFlag.AlignLeft, "mean KL vs the reference (log)")
