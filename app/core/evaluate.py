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

One model in memory at a time, as llama.cpp's ``--kl-divergence`` does it: phase 1 runs the reference alone over
the chunks and writes its distributions in llama-perplexity's ``--kl-divergence-base`` file format to the
reference store (:mod:`app.core.refstore`; keyed by the reference file, the text, the chunking and the settings
that change logits, so a second ladder does not run the reference again); phase 2 loads each candidate alone and
scores it against that file, block by block (:func:`app.core.logits.score_rows`: KL sums skip the terms with
log p_ref <= -16 and the reference's log-probabilities are the file's 16-bit levels, exactly as llama.cpp).  The
base file can be written out (``save_base``) for ``llama-perplexity --kl-divergence``, or one llama-perplexity
wrote can be used instead of a reference model (``base``).  Results are saved per (reference, candidate) pair
under ``data_dir()/eval/`` -- see :func:`load_saved_rows`.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from .compare import ProgressFn, Reporter, _check_cancel, check_comparable, check_fits, load_options, logit_settings
from .errors import CompareError
from .gguf_header import GGUFHeader, file_type_name, read_header
from .load_options import LoadOptions
from .logits import LogitSource, TokenMetrics, merge, score_rows, summarize
from .paths import data_dir, resources_dir
from .refstore import BaseFile, BaseFileError, BaseWriter, Entry, RefStore, decode_rows, file_identity, make_key
from .units import format_size

log = logging.getLogger(__name__)

SAMPLE_TEXT = "eval/sample.txt"
BASE_NAME = "base.kld"


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
    reference: str         # path of the reference (or of the base file used instead)
    evaluated_at: float    # unix time
    reference_cached: bool = False     # the reference's distributions came from the store
    flash_attn: str = ""               # flash attention as used ("on"/"off"; "" = not recorded)
    kv_cache_type: str = ""            # KV cache type as used

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


def _row(info: GGUFHeader | None, base: Path, m: TokenMetrics, nll_ref: np.ndarray,
         common: dict[str, Any]) -> EvalRow:
    """A ladder row: a candidate's (``m`` its metrics) or, with ``m`` None, the reference's own (KL 0, top-1
    1.0, perplexity from the base file's levels: llama-perplexity's "PPL(base)")."""
    ppl_ref = float(np.exp(nll_ref.mean()))
    if m is None:
        n = len(nll_ref)
        figures = dict(mean_kld=0.0, median_kld=0.0, p99_kld=0.0, max_kld=0.0, top1_agreement=1.0, top5_overlap=1.0,
                       ppl_candidate=ppl_ref, n_tokens=n)
    else:
        figures = summarize(m)
    if info is not None:
        facts = dict(path=str(info.path), name=info.name, file_type=file_type_name(info.file_type),
                     size_bytes=info.size_bytes, n_params=info.n_params,
                     bits_per_weight=round(info.bits_per_weight, 4))
    else:                  # a base file without its model (eval --base)
        facts = dict(path=str(base), name=base.name, file_type="base file", size_bytes=base.stat().st_size,
                     n_params=0, bits_per_weight=0.0)
    return EvalRow(**facts, is_reference=m is None, ppl=figures["ppl_candidate"],
                   delta_ppl=figures["ppl_candidate"] - ppl_ref, mean_kld=figures["mean_kld"],
                   median_kld=figures["median_kld"], p99_kld=figures["p99_kld"], max_kld=figures["max_kld"],
                   top1_agreement=figures["top1_agreement"], top5_overlap=figures["top5_overlap"],
                   n_tokens=figures["n_tokens"], **common)


def _reference_phase(path: Path, content: str, n_ctx: int, n_chunks: int | None, options: LoadOptions,
                     store: RefStore, key: str, report: Reporter, cancel: threading.Event | None) -> Entry:
    """Phase 1: the reference alone over the chunks, its rows written as llama-perplexity's base file into a
    store entry (a temporary folder until complete: cancel leaves nothing)."""
    from .engine import Engine

    with Engine(path, n_ctx=n_ctx, options=options) as eng:
        llm = eng.llama
        tokens = llm.tokenize(content.encode("utf-8"), add_bos=True, special=False)
        chunks = make_chunks(tokens, n_ctx, n_chunks, _bos(llm))
        meta: dict[str, Any] = {"kind": "eval", "reference": str(path)}
        with store.writing(key, meta) as folder, LogitSource(eng.llama) as src:
            with open(folder / BASE_NAME, "wb") as fh:
                w = BaseWriter(fh, n_ctx, src.n_vocab, np.asarray(tokens[:len(chunks) * n_ctx]))
                for ci, chunk in enumerate(chunks):
                    report("chunk", ci, len(chunks))
                    for _, r in src.rows(chunk, n_ctx // 2, cancel=cancel, decode_last=True):
                        w.write_rows(r)
                _check_cancel(cancel)
                report("chunk", len(chunks), len(chunks))
            meta.update(n_chunks=len(chunks), n_ctx=n_ctx)
    return store.get(key) or Entry(folder, meta)


def _base_nll(bf: BaseFile) -> np.ndarray:
    """The reference's NLL of each scored token, from the base file (llama.cpp's ``nll_base``)."""
    out, info = [], bf.info
    for c in range(info.n_chunk):
        toks = bf.tokens[c * info.n_ctx + info.first + 1:(c + 1) * info.n_ctx]
        for a in range(0, info.rows_per_chunk, 64):
            rows = bf.rows(c, a, min(64, info.rows_per_chunk - a))
            lp, _ = decode_rows(rows, info.n_vocab)
            out.append(-lp[np.arange(len(rows)), toks[a:a + len(rows)]].astype(np.float64))
    return np.concatenate(out)


def _check_vocab(bf: BaseFile, path: Path, n_vocab: int) -> None:
    if n_vocab != bf.info.n_vocab:
        raise BaseFileError(f"{bf.path.name} was made with a vocabulary of {bf.info.n_vocab} tokens and "
                            f"{path.name} has {n_vocab}: they are different models; use the base file of the "
                            "model the candidate was made from")


def _candidate_phase(path: Path, bf: BaseFile, options: LoadOptions, report: Reporter,
                     cancel: threading.Event | None) -> TokenMetrics:
    """Phase 2: one candidate alone over the base file's chunks, scored against its rows."""
    from .engine import Engine

    info = bf.info
    with Engine(path, n_ctx=info.n_ctx, options=options) as eng, LogitSource(eng.llama) as src:
        _check_vocab(bf, path, src.n_vocab)
        bos, parts = _bos(eng.llama), []
        for c in range(info.n_chunk):
            report(f"{path.name}, chunk", c, info.n_chunk)
            chunk = bf.chunk_tokens(c)
            if bos is not None:
                chunk[0] = bos
            parts.append(score_rows(lambda k0, n, c=c: bf.rows(c, k0, n), src, chunk, info.first,
                                    n_vocab=info.n_vocab, cancel=cancel, decode_last=True))
        report(f"{path.name}, chunk", info.n_chunk, info.n_chunk)
    return merge(parts)


def eval_ladder(reference: str | Path | None, candidates: Sequence[str | Path], text: str | Path | None = None,
                *, n_ctx: int = 512, n_chunks: int | None = None, threads: int | None = None,
                options: LoadOptions | None = None, use_cache: bool = True, store: RefStore | None = None,
                base: str | Path | None = None, save_base: str | Path | None = None,
                progress: ProgressFn | None = None, cancel: threading.Event | None = None,
                save: bool = True) -> list[EvalRow]:
    """Evaluate ``candidates`` against ``reference`` over ``text`` (module docstring).  Returns the reference's
    row first, then one row per candidate in the order given; with ``save`` every row is stored (see
    :func:`load_saved_rows`).  ``base``: a llama-perplexity base file used instead of running a reference
    (``reference`` may then be None; its text and chunking are the file's).  ``save_base``: also write the
    reference's base file there.  ``use_cache=False`` runs the reference afresh.  ``options``: the load settings
    of every model (``threads`` replaces its thread count).

    Raises :class:`~app.core.errors.VocabMismatchError`, :class:`~app.core.errors.ModelLoadError`,
    :class:`~app.core.errors.CompareError` (text shorter than one chunk; :class:`~app.core.refstore.BaseFileError`
    for an unreadable base file), and :class:`~app.core.errors.GenerationCancelled` when ``cancel`` is set.
    """
    if not candidates and save_base is None:
        raise CompareError("no candidate models given: name at least one GGUF to compare with the reference")
    if n_ctx < 8:
        raise CompareError(f"a context of {n_ctx} tokens is too small to evaluate: use at least 8 (512 is usual)")
    options = load_options(options, threads)
    ref_info = read_header(reference) if reference is not None else None
    cand_infos = [read_header(c) for c in candidates]
    if ref_info is not None:
        for ci in cand_infos:
            check_comparable(ref_info, ci)
    t0 = time.perf_counter()
    cached = False
    if base is not None:
        base_path, text_name, text_sha = Path(base), Path(base).name, ""
        with BaseFile(base_path) as bf:             # refuse a bad file, or other models, before loading any
            for info in cand_infos:
                _check_vocab(bf, info.path, info.n_vocab)
    else:
        if ref_info is None:
            raise CompareError("no reference: give the reference GGUF, or a base file (--base)")
        content, text_name = load_text(text)
        text_sha = hashlib.sha256(content.encode("utf-8")).hexdigest()
        content = content[:-1] if content.endswith("\n") else content     # as llama-perplexity -f reads it
        store = store or RefStore()
        key = make_key(kind="eval", ref=file_identity(ref_info.path), text=text_sha, n_ctx=n_ctx, n_chunks=n_chunks,
                       load=logit_settings(options), version=1)
        entry = store.get(key) if use_cache else None
        cached = entry is not None and entry.file(BASE_NAME).exists()
        if not cached:
            check_fits(ref_info, "reference", options)
            entry = _reference_phase(ref_info.path, content, n_ctx, n_chunks, options, store, key,
                                     Reporter(progress, "reference"), cancel)
        base_path = entry.file(BASE_NAME)
        if save_base is not None:
            _copy_atomic(base_path, Path(save_base))
    rows, ref_nll = [], None
    with BaseFile(base_path) as bf:
        for info in cand_infos:
            check_fits(info, "candidate", options)
            m = _candidate_phase(info.path, bf, options, Reporter(progress, "candidate"), cancel)
            rows.append((info, m))
        ref_nll = _base_nll(bf)
        n_chunk, n_ctx = bf.info.n_chunk, bf.info.n_ctx
    log.info("eval: %d chunks x %d candidates in %.1f s (reference %s)", n_chunk, len(cand_infos),
             time.perf_counter() - t0, "stored" if cached else "computed")
    load = logit_settings(options)
    common = dict(n_chunks=n_chunk, n_ctx=n_ctx, text=text_name, text_sha256=text_sha,
                  reference=str(ref_info.path if ref_info is not None else base_path), evaluated_at=time.time(),
                  reference_cached=cached, flash_attn=load["flash_attn"], kv_cache_type=load["kv_cache_type"])
    out = [_row(ref_info, base_path, None, ref_nll, common)]
    out += [_row(info, base_path, m, ref_nll, common) for info, m in rows]
    if save and ref_info is not None:
        save_row(ref_info, ref_info, out[0])
        for info, row in zip(cand_infos, out[1:], strict=True):
            save_row(ref_info, info, row)
    return out


def _copy_atomic(src: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.partial")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
    role = "ref-" if row.is_reference else ""          # the reference's own row next to it as a candidate
    runs[f"{role}{row.text_sha256[:16]}-{row.n_ctx}-{row.n_chunks}"] = row.to_dict()
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


def load_saved_rows(reference: str | Path, candidate: str | Path | None = None, *,
                    include_reference: bool = False) -> list[EvalRow]:
    """Saved eval rows of the reference's candidates (or of one candidate), newest first; with
    ``include_reference`` the reference's own rows too (``is_reference``).  Only results made with the files as
    they are now count (same name, size and mtime; a candidate that was deleted or re-made is left out).
    Unreadable files are skipped.  Returns ``[]`` when there is nothing saved."""
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
            if current and (include_reference or not row.is_reference):
                rows.append(row)
    return sorted(rows, key=lambda r: -r.evaluated_at)
