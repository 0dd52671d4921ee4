"""HTML for the Compare view's columns: the reference answer coloured token by token by KL divergence, and the
first divergence marked in both answers.  Pure functions of the comparison result (tested without a window)."""
from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.core.units import format_size

from .plots import kl_color

_STYLE = "white-space: pre-wrap;"
KL_FORMAT = ".5f"        # every KL figure the Compare view shows: one format
DIVERGENCE_STYLE = "text-decoration: underline; color: #b71c1c; font-weight: bold;"


def _esc(text: str) -> str:
    return html.escape(text).replace("\n", "<br>")


def reference_html(tokens: Sequence[Any], divergence: int | None, selected: int | None = None) -> str:
    """One span per scored token (``TokenRecord``: .text, .kl), background by KL; the divergence token
    underlined in red and anchored as ``#divergence``; each token anchored ``#t<index>``."""
    parts = [f'<div style="{_STYLE}">']
    for r in tokens:
        style = f"background-color: {kl_color(r.kl).name()};"
        if divergence is not None and r.index == divergence:
            style += DIVERGENCE_STYLE
        if selected is not None and r.index == selected:
            style += "border: 1px solid #000; font-weight: bold;"
        title = html.escape(f"token {r.index}: KL {r.kl:.4g}, p_ref {r.p_ref:.3f}, p_cand {r.p_cand:.3f}"
                            f"{', top-1 differs' if not r.top1_match else ''}", quote=True)
        name = "divergence" if divergence is not None and r.index == divergence else f"t{r.index}"
        parts.append(f'<a name="{name}"></a><span style="{style}" title="{title}">{_esc(r.text)}</span>')
    parts.append("</div>")
    return "".join(parts)


def divergence_offset(tokens: Sequence[Any], divergence: int | None) -> int | None:
    """Character offset where the answers part: the text of the reference tokens before the divergence (the
    two answers share those tokens, so both texts agree up to there)."""
    if divergence is None:
        return None
    return sum(len(r.text) for r in tokens[:divergence])


def candidate_html(text: str, offset: int | None) -> str:
    """The candidate's answer; from the divergence on, tinted, its first character marked like the reference's."""
    if offset is None or offset >= len(text):
        return f'<div style="{_STYLE}">{_esc(text)}</div>'
    same, rest = text[:offset], text[offset:]
    return (f'<div style="{_STYLE}">{_esc(same)}<a name="divergence"></a>'
            f'<span style="background-color: #ffebee;"><span style="{DIVERGENCE_STYLE}">{_esc(rest[:1])}</span>'
            f"{_esc(rest[1:])}</span></div>")


def summary_rows(result: Any) -> list[tuple[str, str]]:
    """(label, value) pairs of the summary figures."""
    s = result.summary

    def f(v: float | None, fmt: str) -> str:
        return "–" if v is None else format(v, fmt)

    div = result.first_divergence
    return [
        ("Scored tokens", str(s.n_tokens)),
        ("Mean KL", f(s.mean_kld, KL_FORMAT)),
        ("Median KL", f(s.median_kld, KL_FORMAT)),
        ("99th pct KL", f(s.p99_kld, KL_FORMAT)),
        ("Max KL", f(s.max_kld, KL_FORMAT)),
        ("Same top-1", "–" if s.top1_agreement is None else f"{s.top1_agreement:.1%}"),
        ("Top-5 overlap", "–" if s.top5_overlap is None else f"{s.top5_overlap:.1%}"),
        ("PPL reference", f(s.ppl_reference, ".3f")),
        ("PPL candidate", f(s.ppl_candidate, ".3f")),
        ("First divergence", "none (identical)" if div is None else f"token {div}"),
        ("Sizes", f"{format_size(result.reference.size_bytes)} → {format_size(result.candidate.size_bytes)} "
                  f"({result.candidate.bits_per_weight:.2f} bpw)"),
    ]


def progress_text(p: Any) -> str:
    """A progress report in words: the phase (which model is in memory), the stage, and the time left."""
    phase = f"{p.phase}: " if getattr(p, "phase", "") else ""
    eta = getattr(p, "eta_s", None)
    left = f" · about {eta:.0f} s left" if eta is not None and p.done < p.total else ""
    return f"{phase}{p.stage} {p.done}/{p.total}{left}"


def reference_note(result: Any) -> str:
    """Where the reference's side of a result came from, naming both files."""
    ref, cand = Path(result.reference.path).name, Path(result.candidate.path).name
    if getattr(result, "reference_cached", False):
        return (f"{ref} vs {cand}. The reference's answer and distributions were stored by an earlier comparison "
                "of this prompt (tick Fresh reference to run it again).")
    return f"{ref} vs {cand}."
