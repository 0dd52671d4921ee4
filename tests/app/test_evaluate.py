"""app.core.evaluate: the eval ladder on the real SmolLM2-135M, F16 reference vs our Q8_0 / Q4_K_M / Q2_K."""
from __future__ import annotations

import csv
import io
import json
import os
import sys
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
from app.core.refstore import RefStore

N_CTX = 128
N_CHUNKS = 2
THREADS = 1    # one thread: on a busy shared machine, llama.cpp threads spin-waiting on each other cost 10x
RECIPES = ("F16", "Q8_0", "Q4_K_M", "Q2_K")


@pytest.fixture(scope="module")
def ggufs(smollm2_gguf):
    return {r: smollm2_gguf(r) for r in RECIPES}


@pytest.fixture(scope="module")
def ladder(ggufs, tmp_path_factory):
    return eval_ladder(ggufs["F16"], [ggufs[r] for r in RECIPES], n_ctx=N_CTX, n_chunks=N_CHUNKS,
                       threads=THREADS, save=False, store=RefStore(tmp_path_factory.mktemp("refstore")))


def test_ladder_rows(ladder, ggufs):
    ref, same, q8, q4, q2 = ladder
    assert ref.is_reference and not any(r.is_reference for r in ladder[1:])
    assert [r.file_type for r in ladder] == ["F16", "F16", "Q8_0", "Q4_K_M", "Q2_K"]
    for r, path in zip(ladder, [ggufs["F16"]] + [ggufs[x] for x in RECIPES], strict=True):
        info = read_header(path)
        assert r.size_bytes == path.stat().st_size
        assert r.bits_per_weight == pytest.approx(info.data_bytes * 8 / info.n_params, abs=1e-4)
        assert r.n_tokens == N_CHUNKS * (N_CTX - 1 - N_CTX // 2) and r.n_chunks == N_CHUNKS
    # the same file as a candidate: no divergence but that of the base file's 16-bit levels (as llama.cpp)
    assert 0 <= same.mean_kld < 1e-5 and same.max_kld < 1e-4 and same.top1_agreement == 1.0
    assert same.ppl == pytest.approx(ref.ppl, rel=1e-4) and abs(same.delta_ppl) < 1e-3 * ref.ppl
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
    # the reference's side comes from llama-perplexity's 16-bit levels (steps of at most 16/65535 in log p), the
    # candidate's from its float logits: exact float64 figures agree to that precision (the exact oracle of the
    # stored format is llama-perplexity itself: test_base_file_is_byte_identical_to_llama_perplexity)
    assert ref.ppl == pytest.approx(np.exp(np.mean(np.concatenate(nll_ref))), rel=1e-4)
    assert q2.ppl == pytest.approx(np.exp(np.mean(np.concatenate(nll_q2))), rel=1e-6)
    assert q2.mean_kld == pytest.approx(kl.mean(), rel=2e-3)
    assert q2.median_kld == pytest.approx(np.median(kl), rel=2e-3)
    assert q2.max_kld == pytest.approx(kl.max(), rel=2e-3)
    assert abs(q2.top1_agreement - np.concatenate(top1).mean()) <= 1 / len(kl)


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
    # the reference's own row is kept too (the ladder shows it when saved results are reloaded)
    with_ref = load_saved_rows(ggufs["F16"], include_reference=True)
    assert [r for r in with_ref if r.is_reference] == [rows[0]] and len(with_ref) == 3
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
    store = RefStore(tmp_path / "store")
    with pytest.raises(GenerationCancelled):
        eval_ladder(ggufs["F16"], [ggufs["Q8_0"]], n_ctx=N_CTX, threads=THREADS, cancel=cancel, save=False,
                    store=store)
    assert store.entries() == [] and not any(store.root.iterdir())       # no half-written base file kept
    # cancelled in phase 2: the complete reference stays stored, nothing partial
    cancel.clear()
    seen = []

    def stop_in_candidate(p):
        seen.append(p.phase)
        if p.phase == "candidate":
            cancel.set()

    with pytest.raises(GenerationCancelled):
        eval_ladder(ggufs["F16"], [ggufs["Q8_0"]], n_ctx=N_CTX, n_chunks=2, threads=THREADS, cancel=cancel,
                    save=False, store=store, progress=stop_in_candidate)
    assert "reference" in seen and len(store.entries()) == 1
    assert [p.name for p in store.root.iterdir() if p.name.endswith(".partial")] == []


# ---- llama-perplexity's base file: byte-identical, read both ways, refused when bad ------------------------------
def _llama_perplexity(*args):
    import subprocess

    from tests.llama_tools import llama_tool, tool_env

    run = subprocess.run([str(llama_tool("perplexity")), *map(str, args), "-t", str(THREADS), "-fa", "off"],
                         env=tool_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout + run.stderr


def _figure(out, label):
    import re

    m = re.search(re.escape(label) + r"\s*:\s*(-?[0-9.]+)", out)
    assert m, f"{label!r} not in llama-perplexity's output:\n{out[-3000:]}"
    return float(m.group(1))


@pytest.fixture(scope="module")
def base_files(ggufs, tmp_path_factory):
    """Ours (eval --save-base) and llama-perplexity's (--kl-divergence-base) base file of F16 on the same text,
    context (one batch per chunk: -b N_CTX) and chunks, flash attention off."""
    d = tmp_path_factory.mktemp("base")
    text = d / "text.txt"
    text.write_text(load_text(None)[0], encoding="utf-8")
    ours, theirs = d / "ours.kld", d / "theirs.kld"
    rows = eval_ladder(ggufs["F16"], [ggufs["Q4_K_M"]], text, n_ctx=N_CTX, n_chunks=N_CHUNKS, threads=THREADS,
                       save=False, save_base=ours, store=RefStore(d / "store"))
    _llama_perplexity("-m", ggufs["F16"], "-f", text, "-c", N_CTX, "-b", N_CTX, "--chunks", N_CHUNKS,
                      "--kl-divergence-base", theirs)
    return ours, theirs, rows


def test_base_file_is_byte_identical_to_llama_perplexity(base_files):
    ours, theirs, _ = base_files
    a, b = ours.read_bytes(), theirs.read_bytes()
    assert a[:8] == b"_logits_" and len(a) == len(b)
    assert a == b


def test_llama_perplexity_kl_figures_from_our_base_file_equal_ours(base_files, ggufs):
    ours, _, rows = base_files
    out = _llama_perplexity("-m", ggufs["Q4_K_M"], "-c", N_CTX, "-b", N_CTX, "--kl-divergence-base", ours,
                            "--kl-divergence")
    ref, q4 = rows
    assert q4.mean_kld == pytest.approx(_figure(out, "Mean    KLD"), abs=1.5e-6)
    assert q4.max_kld == pytest.approx(_figure(out, "Maximum KLD"), abs=1.5e-6)
    assert q4.median_kld == pytest.approx(_figure(out, "Median  KLD"), abs=1.5e-6)
    assert 100 * q4.top1_agreement == pytest.approx(_figure(out, "Same top p"), abs=1.5e-3)
    assert q4.ppl == pytest.approx(_figure(out, "Mean PPL(Q)"), abs=1.5e-6 * q4.ppl + 1e-6)
    assert ref.ppl == pytest.approx(_figure(out, "Mean PPL(base)"), abs=1.5e-6 * ref.ppl + 1e-6)


def test_eval_reads_the_base_file_llama_perplexity_wrote(base_files, ggufs):
    _, theirs, rows = base_files
    got = eval_ladder(None, [ggufs["Q4_K_M"]], base=theirs, threads=THREADS, save=False)
    assert got[0].is_reference and got[0].file_type == "base file" and got[0].path == str(theirs)
    for a, b in zip(got, rows, strict=True):
        assert (a.ppl, a.mean_kld, a.max_kld, a.top1_agreement, a.n_tokens) == \
            (b.ppl, b.mean_kld, b.max_kld, b.top1_agreement, b.n_tokens)


def test_bad_base_files_are_refused_with_a_message(base_files, ggufs, tmp_path):
    from app.core.refstore import BaseFileError
    from tests.conftest import DATA

    _, theirs, _ = base_files
    data = theirs.read_bytes()
    cases = {"not-one.kld": b"_notlog_" + data[8:], "short.kld": data[:len(data) - 1000],
             "long.kld": data + b"\0\0", "empty.kld": b""}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(BaseFileError) as e:
            eval_ladder(None, [ggufs["Q4_K_M"]], base=tmp_path / name, save=False)
        msg = str(e.value)
        assert name in msg and ("make the base file again" in msg or "llama-perplexity" in msg), msg
    assert "truncated" in str(pytest.raises(BaseFileError, eval_ladder, None, [ggufs["Q4_K_M"]],
                                            base=tmp_path / "short.kld", save=False).value)
    bad_tokens = bytearray(data)
    bad_tokens[20:24] = (10 ** 9).to_bytes(4, "little")
    (tmp_path / "tokens.kld").write_bytes(bad_tokens)
    with pytest.raises(BaseFileError, match="outside its vocabulary"):
        eval_ladder(None, [ggufs["Q4_K_M"]], base=tmp_path / "tokens.kld", save=False)
    qwen = DATA / "deepseek-r1-distill-qwen" / "ggml-vocab-deepseek-r1-qwen.gguf"
    with pytest.raises(BaseFileError, match="vocabulary of 49152 tokens"):
        eval_ladder(None, [qwen], base=theirs, save=False)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_eval_maps_one_model_at_a_time_and_stores_the_reference(ggufs, tmp_path):
    from tests.app.test_compare import MapWatch

    store = RefStore(tmp_path / "store")
    models = [ggufs[r] for r in RECIPES]
    with MapWatch(*models) as w:
        rows = eval_ladder(ggufs["F16"], models[1:], n_ctx=N_CTX, n_chunks=1, threads=THREADS, save=False,
                           store=store, progress=w.progress)
    assert not rows[0].reference_cached and len(rows) == 4
    assert all(sum(s) <= 1 for s in w.seen), "two models were mapped at the same time"
    assert all(any(s[i] for s in w.seen) for i in range(len(models)))
    with MapWatch(ggufs["F16"]) as w2:
        again = eval_ladder(ggufs["F16"], [ggufs["Q2_K"]], n_ctx=N_CTX, n_chunks=1, threads=THREADS,
                            save=False, store=store, progress=w2.progress)
    assert again[0].reference_cached and "reference" not in w2.phases and (True,) not in w2.seen
    assert again[1].mean_kld == rows[3].mean_kld
    fresh = eval_ladder(ggufs["F16"], [ggufs["Q2_K"]], n_ctx=N_CTX, n_chunks=1, threads=THREADS, save=False,
                        store=store, use_cache=False)
    assert not fresh[0].reference_cached and fresh[1].mean_kld == rows[3].mean_kld
    assert fresh[1].flash_attn == "off" and fresh[1].kv_cache_type == "f16"
    # flash attention changes the figures slightly: a reference stored without it is not used with it
    from app.core.load_options import LoadOptions

    fa = eval_ladder(ggufs["F16"], [ggufs["Q2_K"]], n_ctx=N_CTX, n_chunks=1, save=False, store=store,
                     options=LoadOptions(n_threads=THREADS, flash_attn="on"))
    assert not fa[0].reference_cached and fa[1].flash_attn == "on"


def test_base_rows_round_trip_within_one_level():
    """llama-perplexity's 16-bit rows: log p within half a level of the exact log-softmax above max - 16, the
    clamped tail at the bottom level, a flat row (scale 0) as -log(n_vocab) everywhere."""
    from app.core.refstore import decode_rows, encode_rows, row_width

    rng = np.random.default_rng(0)
    z = (rng.standard_normal((4, 1001)) * 6).astype(np.float32)
    z[3] = 1.5                                              # every logit equal
    rows = encode_rows(z)
    assert rows.shape == (4, row_width(1001)) == (4, 1006) and rows.dtype == np.uint16
    lp, mask = decode_rows(rows, 1001)
    exact = z.astype(np.float64) - z.max(1, keepdims=True)
    exact -= np.log(np.exp(exact).sum(1, keepdims=True))
    scale = (z.max(1) - np.maximum(z.min(1), z.max(1) - 16)) / 65535
    live = z > (z.max(1, keepdims=True) - 16)
    err = np.abs(lp - exact)
    assert np.all(err[:3][live[:3]] <= (scale[:3, None] * 0.5 + 1e-5).repeat(1001, 1)[live[:3]])
    assert np.all(lp[:3][~live[:3]] <= exact[:3].max() - 16 + 1e-4)
    np.testing.assert_allclose(lp[3], -np.log(1001), rtol=1e-6)
    assert mask[3].all()
