"""The eval ladder: a reference model and several candidates over one text -- "what does each bit-width cost".

The text (a file, or the built-in ``resources/eval/sample.txt``) is tokenized once with the reference's tokenizer
(BOS added when the vocabulary asks for it, special-token text left as text) and cut into ``n_chunks`` chunks of
``n_ctx`` tokens, exactly as llama.cpp's ``llama-perplexity`` does: the first token of each chunk is replaced by
BOS when the vocabulary adds one, every chunk starts with an empty KV cache, and only the **second half** of each
chunk is scored -- rows ``n_ctx/2 .. n_ctx-2``, predicting tokens ``n_ctx/2 + 1 .. n_ctx - 1`` -- so every scored
token has at least ``n_ctx/2`` tokens of context.

Per candidate (definitions in :mod:`app.core.compare` / :func:`app.core.logits.token_metrics`): file size, bits
per weight (``tensor data bytes * 8 / parameters``, from the GGUF header), perplexity ``exp(mean NLL)``,
``delta_ppl = ppl - ppl_reference``, mean/median/p99/max KL(P_ref || P_cand), top-1 agreement, top-5 overlap.

The reference's logits are computed once per batch of each chunk and every candidate is compared with them in
lockstep (views of llama.cpp's buffers; nothing wider than one batch is kept), so all models are loaded (memory
mapped) at the same time.  Results are saved per (reference, candidate) pair under ``data_dir()/eval/`` -- see
:func:`load_saved_rows`.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from .compare import Progress, ProgressFn, check_comparable
from .errors import CompareError, GenerationCancelled
from .gguf_header import GGUFHeader, file_type_name, read_header
from .logits import LogitSource, token_metrics
from .paths import data_dir, resources_dir
from .units import format_size

log = logging.getLogger(__name__)

SAMPLE_TEXT = "eval/sample.txt"


@dataclass
class EvalRow:
    """One model's line of the ladder (the reference's own line has ``is_reference=True``, KL 0, top-1 1.0)."""

    path: str
    name: str
    file_type: str
    size_bytes: int
    n_params: int
    bits_per_weight: float
    is_reference: bool
    ppl: float
    delta_ppl: float
    mean_kld: float
    median_kld: float
    p99_kld: float
    max_kld: float
    top1_agreement: float
    top5_overlap: float
    n_tokens: int          # scored tokens
    n_chunks: int
    n_ctx: int
    text: str              # file name of the text ("sample.txt" for the built-in one)
    text_sha256: str
    reference: str         # path of the reference
    evaluated_at: float    # unix time

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalRow:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


TABLE_COLUMNS = [("file_type", "type", "{}"), ("size_bytes", "size", "{}"), ("bits_per_weight", "bpw", "{:.3f}"),
                 ("ppl", "PPL", "{:.4f}"), ("delta_ppl", "dPPL", "{:+.4f}"), ("mean_kld", "mean KL", "{:.6f}"),
                 ("median_kld", "med KL", "{:.6f}"), ("max_kld", "max KL", "{:.4f}"),
                 ("top1_agreement", "top-1 %", "{:.2f}"), ("name", "file", "{}")]


def rows_to_table(rows: Sequence[EvalRow]) -> str:
    """A plain-text table of the ladder (sizes in decimal units, top-1 in percent)."""
    out = [[h for _, h, _ in TABLE_COLUMNS]]
    for r in rows:
        vals = {**r.to_dict(), "size_bytes": format_size(r.size_bytes), "top1_agreement": 100 * r.top1_agreement,
                "name": Path(r.path).name}
        out.append([fmt.format(vals[k]) for k, _, fmt in TABLE_COLUMNS])
    widths = [max(len(row[i]) for row in out) for i in range(len(TABLE_COLUMNS))]
    last = len(widths) - 1
    return "\n".join("  ".join(c if i == last else c.rjust(widths[i]) for i, c in enumerate(row)) for row in out)


def rows_to_csv(rows: Sequence[EvalRow]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=[f.name for f in fields(EvalRow)], lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r.to_dict())
    return buf.getvalue()


def rows_to_json(rows: Sequence[EvalRow], **kw: Any) -> str:
    return json.dumps([r.to_dict() for r in rows], ensure_ascii=False, **kw)


def load_text(text: str | Path | None) -> tuple[str, str]:
    """``(content, display name)`` of a text file, or of the built-in sample when ``text`` is ``None``."""
    p = Path(text) if text is not None else resources_dir() / SAMPLE_TEXT
    try:
        return p.read_text(encoding="utf-8"), p.name
    except FileNotFoundError:
        raise FileNotFoundError(f"no text file {p}: give an existing UTF-8 text file") from None
    except UnicodeDecodeError:
        raise CompareError(f"{p} is not UTF-8 text: give a plain text file") from None


def make_chunks(tokens: Sequence[int], n_ctx: int, n_chunks: int | None, bos: int | None) -> list[list[int]]:
    """Cut ``tokens`` into llama-perplexity's chunks (first token of each replaced by ``bos`` when given)."""
    n_max = len(tokens) // n_ctx
    if n_max < 1:
        raise CompareError(f"the text is only {len(tokens)} tokens but one chunk needs {n_ctx}: use a longer text "
                           "or a smaller context (--ctx)")
    n = n_max if n_chunks is None else max(1, min(n_chunks, n_max))
    chunks = [list(tokens[c * n_ctx:(c + 1) * n_ctx]) for c in range(n)]
    if bos is not None:
        for ch in chunks:
            ch[0] = bos
    return chunks


def _bos(llm: Any) -> int | None:
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    return int(llama_cpp.llama_vocab_bos(vocab)) if llama_cpp.llama_vocab_get_add_bos(vocab) else None


class _Acc:
    """Per-candidate accumulator of per-token values (floats per token: bounded by the text, not the vocab)."""

    def __init__(self) -> None:
        self.kl: list[np.ndarray] = []
        self.top1: list[np.ndarray] = []
        self.top5: list[np.ndarray] = []
        self.nll: list[np.ndarray] = []

    def cat(self, name: str) -> np.ndarray:
        return np.concatenate(getattr(self, name))


def _row(info: GGUFHeader, acc: _Acc | None, ref_nll: np.ndarray, common: dict[str, Any]) -> EvalRow:
    ppl_ref = float(np.exp(ref_nll.mean()))
    if acc is None:          # the reference itself
        kl, top1, top5, ppl = np.zeros(len(ref_nll)), np.ones(len(ref_nll)), np.ones(len(ref_nll)), ppl_ref
    else:
        kl, top1, top5, ppl = acc.cat("kl"), acc.cat("top1"), acc.cat("top5"), float(np.exp(acc.cat("nll").mean()))
    return EvalRow(path=str(info.path), name=info.name, file_type=file_type_name(info.file_type),
                   size_bytes=info.size_bytes, n_params=info.n_params, bits_per_weight=round(info.bits_per_weight, 4),
                   is_reference=acc is None, ppl=ppl, delta_ppl=ppl - ppl_ref, mean_kld=float(kl.mean()),
                   median_kld=float(np.median(kl)), p99_kld=float(np.percentile(kl, 99)), max_kld=float(kl.max()),
                   top1_agreement=float(top1.mean()), top5_overlap=float(top5.mean()), n_tokens=len(ref_nll),
                   **common)


def _chunks_with_progress(chunks: list[list[int]], progress: ProgressFn | None) -> Iterator[list[int]]:
    for ci, chunk in enumerate(chunks):
        if progress is not None:
            progress(Progress("evaluating", ci, len(chunks)))
        yield chunk


def _score_chunk(srcs: Sequence[LogitSource], accs: Sequence[_Acc], chunk: list[int], first: int,
                 cancel: threading.Event | None) -> list[np.ndarray]:
    """One chunk through the reference (``srcs[0]``) and every candidate in lockstep, batch by batch: the
    reference's logits (a view of its llama.cpp buffer) are computed once and compared with each candidate's.
    Appends to the candidates' accumulators; returns the reference's NLL per batch."""
    ref_nll = []
    gens = [s.rows(chunk, first, cancel=cancel) for s in srcs[1:]]
    for i0, r in srcs[0].rows(chunk, first, cancel=cancel):
        targets = chunk[i0 + 1:i0 + 1 + len(r)]
        for g, acc in zip(gens, accs, strict=True):
            _, c = next(g)
            m = token_metrics(r, c, targets)
            acc.kl.append(m.kl)
            acc.top1.append(m.top1)
            acc.top5.append(m.top5)
            acc.nll.append(m.nll_cand)
        ref_nll.append(m.nll_ref)
    for g in gens:            # exhaust: each generator clears its model's KV cache on exit
        for _ in g:
            pass
    return ref_nll


def eval_ladder(reference: str | Path, candidates: Sequence[str | Path], text: str | Path | None = None, *,
                n_ctx: int = 512, n_chunks: int | None = None, threads: int | None = None,
                progress: ProgressFn | None = None, cancel: threading.Event | None = None,
                save: bool = True) -> list[EvalRow]:
    """Evaluate ``candidates`` against ``reference`` over ``text`` (module docstring).  Returns the reference's
    row first, then one row per candidate in the order given; with ``save`` each candidate's row is stored (see
    :func:`load_saved_rows`).

    Raises :class:`~app.core.errors.VocabMismatchError`, :class:`~app.core.errors.ModelLoadError`,
    :class:`~app.core.errors.CompareError` (text shorter than one chunk), and
    :class:`~app.core.errors.GenerationCancelled` when ``cancel`` is set.
    """
    from .engine import Engine

    if not candidates:
        raise CompareError("no candidate models given: name at least one GGUF to compare with the reference")
    if n_ctx < 8:
        raise CompareError(f"a context of {n_ctx} tokens is too small to evaluate: use at least 8 (512 is usual)")
    content, text_name = load_text(text)
    ref_info = read_header(reference)
    cand_infos = [read_header(c) for c in candidates]
    for ci in cand_infos:
        check_comparable(ref_info, ci)
    first = n_ctx // 2
    with ExitStack() as stack:
        engines = [stack.enter_context(Engine(p, n_ctx=n_ctx, n_threads=threads))
                   for p in [reference, *candidates]]
        ref_llm = engines[0].llama
        tokens = ref_llm.tokenize(content.encode("utf-8"), add_bos=True, special=False)
        chunks = make_chunks(tokens, n_ctx, n_chunks, _bos(ref_llm))
        srcs = [stack.enter_context(LogitSource(e.llama)) for e in engines]
        nb = min(s.n_batch for s in srcs)
        for s in srcs:
            s.n_batch = nb
        accs = [_Acc() for _ in candidates]
        t0 = time.perf_counter()
        ref_nll = [_score_chunk(srcs, accs, chunk, first, cancel) for chunk in _chunks_with_progress(chunks, progress)]
        if cancel is not None and cancel.is_set():
            raise GenerationCancelled("evaluation cancelled")
        log.info("eval: %d chunks x %d models in %.1f s", len(chunks), len(engines), time.perf_counter() - t0)
    if progress is not None:
        progress(Progress("evaluating", len(chunks), len(chunks)))
    common = dict(n_chunks=len(chunks), n_ctx=n_ctx, text=text_name,
                  text_sha256=hashlib.sha256(content.encode("utf-8")).hexdigest(), reference=str(ref_info.path),
                  evaluated_at=time.time())
    nll = np.concatenate([x for chunk in ref_nll for x in chunk])
    rows = [_row(ref_info, None, nll, common)]
    rows += [_row(ci, acc, nll, common) for ci, acc in zip(cand_infos, accs, strict=True)]
    if save:
        for ci, row in zip(cand_infos, rows[1:], strict=True):
            save_row(ref_info, ci, row)
    return rows


# ---- saved results ------------------------------------------------------------------------------------------
def file_key(path: str | Path) -> str:
    """Identity of a model file for saved results: its name, size and modification time (hashing a many-GB file
    would take minutes; a re-made file gets a new mtime, so its old results are not shown as its own)."""
    p = Path(path)
    st = p.stat()
    return hashlib.sha256(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:16]


def eval_dir() -> Path:
    p = data_dir() / "eval"
    p.mkdir(parents=True, exist_ok=True)
    return p


def save_row(ref: GGUFHeader, cand: GGUFHeader, row: EvalRow) -> Path:
    """Store ``row`` as the latest result of (ref, cand) for its settings (text, n_ctx, n_chunks).  The file
    ``eval/<ref key>/<cand key>.json`` holds every settings' latest result for the pair."""
    folder = eval_dir() / file_key(ref.path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{file_key(cand.path)}.json"
    runs = _read_runs(path)
    runs[f"{row.text_sha256[:16]}-{row.n_ctx}-{row.n_chunks}"] = row.to_dict()
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"reference": str(ref.path), "candidate": str(cand.path), "runs": runs}, indent=1),
                   encoding="utf-8")
    tmp.replace(path)
    return path


def _read_runs(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return dict(data.get("runs", {}))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, AttributeError) as e:
        log.warning("ignoring unreadable saved eval results %s: %s", path, e)
        return {}


def load_saved_rows(reference: str | Path, candidate: str | Path | None = None) -> list[EvalRow]:
    """Saved eval rows of the reference's candidates (or of one candidate), newest first.  Only results made
    with the files as they are now count (same name, size and mtime; a candidate that was deleted or re-made is
    left out).  Unreadable files are skipped.  Returns ``[]`` when there is nothing saved."""
    folder = eval_dir() / file_key(reference)
    paths = [folder / f"{file_key(candidate)}.json"] if candidate is not None else sorted(folder.glob("*.json"))
    rows = []
    for p in paths:
        for d in _read_runs(p).values():
            try:
                row = EvalRow.from_dict(d)
                current = file_key(row.path) == p.stem
            except (TypeError, OSError) as e:
                log.debug("skipping a saved eval row in %s: %s", p, e)
                continue
            if current:
                rows.append(row)
    return sorted(rows, key=lambda r: -r.evaluated_at)
