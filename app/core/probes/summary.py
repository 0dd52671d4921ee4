"""What changed with quantization: per-model rates with counts and 95 % Wilson intervals, mean reasoning length
with a normal-approximation interval, and CSV/JSON export of a run's results."""
from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .store import ProbeResult

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion k/n ((0, 1) when n == 0)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class Rate:
    k: int
    n: int
    low: float
    high: float

    @property
    def value(self) -> float | None:
        return self.k / self.n if self.n else None

    def text(self) -> str:
        if not self.n:
            return "–"
        return f"{100 * self.k / self.n:.0f}% ({self.k}/{self.n}, CI {100 * self.low:.0f}–{100 * self.high:.0f}%)"


def rate(k: int, n: int) -> Rate:
    lo, hi = wilson(k, n)
    return Rate(k, n, lo, hi)


@dataclass(frozen=True)
class ModelSummary:
    model: str
    n: int
    accuracy: Rate              # checkable probes only (n = how many were checkable)
    refusal: Rate
    skipped_reasoning: Rate
    unterminated: Rate
    lost_answer: Rate           # among wrong checkable answers
    mean_reasoning: float
    reasoning_ci: tuple[float, float]
    mean_judge: float | None


def summarize(results: Sequence[ProbeResult], models: Sequence[str]) -> list[ModelSummary]:
    out = []
    for m in models:
        rs = [r for r in results if r.model == m]
        checkable = [r for r in rs if r.expected is not None]
        wrong = [r for r in checkable if not r.correct]
        lengths = [r.reasoning_tokens for r in rs]
        mean = sum(lengths) / len(lengths) if lengths else 0.0
        if len(lengths) > 1:
            sd = math.sqrt(sum((x - mean) ** 2 for x in lengths) / (len(lengths) - 1))
            half = Z95 * sd / math.sqrt(len(lengths))
        else:
            half = 0.0
        scores = [r.judge_score for r in rs if r.judge_score is not None]
        out.append(ModelSummary(
            model=m, n=len(rs), accuracy=rate(sum(1 for r in checkable if r.correct), len(checkable)),
            refusal=rate(sum(1 for r in rs if r.refusal), len(rs)),
            skipped_reasoning=rate(sum(1 for r in rs if r.skipped_reasoning), len(rs)),
            unterminated=rate(sum(1 for r in rs if r.unterminated), len(rs)),
            lost_answer=rate(sum(1 for r in wrong if r.lost_answer), len(wrong)),
            mean_reasoning=mean, reasoning_ci=(max(0.0, mean - half), mean + half),
            mean_judge=sum(scores) / len(scores) if scores else None))
    return out


def summary_table(summaries: Sequence[ModelSummary]) -> str:
    """The summary as plain text (first model = the reference the others are compared with)."""
    lines = []
    base = summaries[0] if summaries else None
    for s in summaries:
        delta = ""
        if base is not None and s is not base and base.mean_reasoning:
            delta = f" ({100 * (s.mean_reasoning / base.mean_reasoning - 1):+.0f}% vs {Path(base.model).name})"
        lines.append(f"{Path(s.model).name}: {s.n} probes")
        if s.accuracy.n:
            lines.append(f"  accuracy           {s.accuracy.text()}")
            lines.append(f"  right answer lost  {s.lost_answer.text()} of wrong answers")
        lines.append(f"  reasoning tokens   mean {s.mean_reasoning:.0f} (CI {s.reasoning_ci[0]:.0f}–"
                     f"{s.reasoning_ci[1]:.0f}){delta}")
        lines.append(f"  refusals           {s.refusal.text()}")
        lines.append(f"  skipped reasoning  {s.skipped_reasoning.text()}")
        lines.append(f"  cut at the limit   {s.unterminated.text()}")
        if s.mean_judge is not None:
            lines.append(f"  judge (1-5)        mean {s.mean_judge:.2f}")
    return "\n".join(lines)


EXPORT_FIELDS = ["model", "template", "subject", "sample", "seed", "prompt_tokens", "reasoning_tokens",
                 "answer_tokens", "wall_s", "finish", "skipped_reasoning", "unterminated", "refusal", "expected",
                 "extracted", "value", "correct", "lost_answer", "judge_score", "prompt", "reasoning", "answer"]


def results_to_csv(results: Sequence[ProbeResult]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=EXPORT_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in results:
        w.writerow(r.to_dict())
    return buf.getvalue()


def results_to_json(results: Sequence[ProbeResult], summaries: Sequence[ModelSummary] = (), *,
                    indent: int | None = 1) -> str:
    return json.dumps({"results": [{k: r.to_dict()[k] for k in EXPORT_FIELDS} for r in results],
                       "summary": [asdict(s) for s in summaries]}, indent=indent)
