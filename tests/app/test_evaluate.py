"""app.core.evaluate: the eval ladder on the real SmolLM2-135M, F16 reference vs our Q8_0 / Q4_K_M / Q2_K."""
from __future__ import annotations

import csv
import io
import json
import os
import threading

import numpy as np
import pytest

from app.core.errors import CompareError, GenerationCancelled, VocabMismatchError
from app.core.evaluate import (
    EvalRow,
    eval_ladder,
    load_saved_rows,
    load_text,
    make_chunks,
    rows_to_csv,
    rows_to_json,
    rows_to_table,
)
from app.core.gguf_header import read_header

N_CTX = 128
N_CHUNKS = 2
THREADS = 1    # one thread: on a busy shared machine, llama.cpp threads spin-waiting on each other cost 10x
RECIPES = ("F16", "Q8_0", "Q4_K_M", "Q2_K")


@pytest.fixture(scope="module")
def ggufs(smollm2_gguf):
    return {r: smollm2_gguf(r) for r in RECIPES}


@pytest.fixture(scope="module")
def ladder(ggufs):
    return eval_ladder(ggufs["F16"], [ggufs[r] for r in RECIPES], n_ctx=N_CTX, n_chunks=N_CHUNKS,
                       threads=THREADS, save=False)


def test_ladder_rows(ladder, ggufs):
    ref, same, q8, q4, q2 = ladder
    assert ref.is_reference and not any(r.is_reference for r in ladder[1:])
    assert [r.file_type for r in ladder] == ["F16", "F16", "Q8_0", "Q4_K_M", "Q2_K"]
    for r, path in zip(ladder, [ggufs["F16"]] + [ggufs[x] for x in RECIPES], strict=True):
        info = read_header(path)
        assert r.size_bytes == path.stat().st_size
        assert r.bits_per_weight == pytest.approx(info.data_bytes * 8 / info.n_params, abs=1e-4)
        assert r.n_tokens == N_CHUNKS * (N_CTX - 1 - N_CTX // 2) and r.n_chunks == N_CHUNKS
    # the same file as a candidate: exactly no divergence
    assert same.mean_kld == 0.0 and same.max_kld == 0.0 and same.top1_agreement == 1.0
    assert same.ppl == ref.ppl and same.delta_ppl == 0.0
    assert 0 < q8.mean_kld < q4.mean_kld < q2.mean_kld
    assert ref.bits_per_weight > q8.bits_per_weight > q4.bits_per_weight > q2.bits_per_weight
    assert q2.delta_ppl > 0 and q2.top1_agreement < q8.top1_agreement
    assert all(r.delta_ppl == pytest.approx(r.ppl - ref.ppl) for r in ladder)
    assert ref.text == "sample.txt" and len(ref.text_sha256) == 64


def test_perplexity_and_kl_follow_llama_perplexity_chunking(ladder, ggufs):
    """Tokenize with BOS (when the vocabulary adds one), cut n_ctx chunks, score the second half of each; the
    figures equal a float64 computation from separately pulled logits."""
    import llama_cpp

    from tests.app.test_compare import _pull_logits

    tok = llama_cpp.Llama(str(ggufs["F16"]), vocab_only=True, verbose=False)
    tokens = tok.tokenize(load_text(None)[0].encode(), add_bos=True, special=False)
    chunks = make_chunks(tokens, N_CTX, N_CHUNKS, None)     # SmolLM2's vocabulary adds no BOS
    assert chunks[1] == tokens[N_CTX:2 * N_CTX]
    first = N_CTX // 2
    nll_ref, nll_q2, kl, top1 = [], [], [], []
    for ch in chunks:
        zr, zc = (_pull_logits(ggufs[r], ch, first, N_CTX) for r in ("F16", "Q2_K"))
        lr = zr - zr.max(1, keepdims=True)
        lr -= np.log(np.exp(lr).sum(1, keepdims=True))
        lc = zc - zc.max(1, keepdims=True)
        lc -= np.log(np.exp(lc).sum(1, keepdims=True))
        rows, tgt = np.arange(len(lr)), np.array(ch[first + 1:])
        nll_ref.append(-lr[rows, tgt])
        nll_q2.append(-lc[rows, tgt])
        kl.append(np.sum(np.exp(lr) * (lr - lc), axis=1))
        top1.append(zr.argmax(1) == zc.argmax(1))
    ref, q2 = ladder[0], ladder[4]
    kl = np.concatenate(kl)
    assert ref.ppl == pytest.approx(np.exp(np.mean(np.concatenate(nll_ref))), rel=1e-9)
    assert q2.ppl == pytest.approx(np.exp(np.mean(np.concatenate(nll_q2))), rel=1e-9)
    assert q2.mean_kld == pytest.approx(kl.mean(), rel=1e-6)
    assert q2.median_kld == pytest.approx(np.median(kl), rel=1e-6)
    assert q2.max_kld == pytest.approx(kl.max(), rel=1e-6)
    assert q2.top1_agreement == np.concatenate(top1).mean()


def test_make_chunks():
    toks = list(range(10, 30))
    assert make_chunks(toks, 8, None, None) == [toks[:8], toks[8:16]]
    assert make_chunks(toks, 8, 1, 1) == [[1] + toks[1:8]]
    assert make_chunks(toks, 8, 5, None) == [toks[:8], toks[8:16]]
    with pytest.raises(CompareError, match="only 20 tokens"):
        make_chunks(toks, 32, None, None)


def test_outputs_table_csv_json(ladder):
    table = rows_to_table(ladder)
    lines = table.splitlines()
    assert len(lines) == 1 + len(ladder) and "PPL" in lines[0] and "Q4_K_M" in lines[4]
    parsed = list(csv.DictReader(io.StringIO(rows_to_csv(ladder))))
    assert [p["file_type"] for p in parsed] == [r.file_type for r in ladder]
    assert float(parsed[3]["mean_kld"]) == pytest.approx(ladder[3].mean_kld)
    js = json.loads(rows_to_json(ladder))
    assert [EvalRow.from_dict(d) for d in js] == ladder


def test_results_are_saved_and_loaded_per_model(ggufs, tmp_path):
    import shutil

    cand = tmp_path / "cand-Q2_K.gguf"
    shutil.copyfile(ggufs["Q2_K"], cand)
    rows = eval_ladder(ggufs["F16"], [ggufs["Q8_0"], cand], n_ctx=N_CTX, n_chunks=1, threads=THREADS)
    saved = load_saved_rows(ggufs["F16"])
    assert sorted(r.path for r in saved) == sorted([str(ggufs["Q8_0"]), str(cand)])
    assert load_saved_rows(ggufs["F16"], cand) == [rows[2]]
    assert load_saved_rows(ggufs["Q8_0"]) == []
    # a re-made candidate (new mtime) no longer has results
    os.utime(cand, ns=(1_000_000_000, 1_000_000_000))
    assert load_saved_rows(ggufs["F16"], cand) == []
    assert [r.path for r in load_saved_rows(ggufs["F16"])] == [str(ggufs["Q8_0"])]


def test_refusals(ggufs, tmp_path):
    from tests.conftest import DATA

    with pytest.raises(VocabMismatchError):
        eval_ladder(ggufs["F16"], [DATA / "deepseek-r1-distill-qwen" / "ggml-vocab-deepseek-r1-qwen.gguf"],
                    n_ctx=N_CTX, save=False)
    short = tmp_path / "short.txt"
    short.write_text("Too short to make a chunk.")
    with pytest.raises(CompareError, match="one chunk needs"):
        eval_ladder(ggufs["F16"], [ggufs["Q8_0"]], short, n_ctx=N_CTX, threads=THREADS, save=False)
    with pytest.raises(FileNotFoundError):
        eval_ladder(ggufs["F16"], [ggufs["Q8_0"]], tmp_path / "nope.txt", n_ctx=N_CTX, save=False)
    with pytest.raises(CompareError, match="no candidate"):
        eval_ladder(ggufs["F16"], [], n_ctx=N_CTX, save=False)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(GenerationCancelled):
        eval_ladder(ggufs["F16"], [ggufs["Q8_0"]], n_ctx=N_CTX, threads=THREADS, cancel=cancel, save=False)
