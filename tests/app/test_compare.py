"""app.core.compare and app.core.logits on the real SmolLM2-135M model, F16 vs our Q8_0 / Q4_K_M / Q2_K.

The oracle for the metrics is an independent float64 numpy computation from logits pulled separately with plain
llama-cpp-python (``Llama(logits_all=True).eval``), written out here from the definitions.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import threading
import time

import numpy as np
import pytest

from app.core.compare import compare, first_divergence
from app.core.errors import ContextOverflowError, GenerationCancelled, ModelLoadError, VocabMismatchError
from app.core.gguf_header import read_header
from app.core.refstore import RefStore

PROMPT = "What is the capital of France? Answer in one sentence."
MAX_TOKENS = 24
N_CTX = 256
THREADS = 1    # one thread: on a busy shared machine, llama.cpp threads spin-waiting on each other cost 10x


@pytest.fixture(scope="module")
def ggufs(smollm2_gguf):
    return {r: smollm2_gguf(r) for r in ("F16", "Q8_0", "Q4_K_M", "Q2_K")}


@pytest.fixture(scope="module")
def results(ggufs, tmp_path_factory):
    store = RefStore(tmp_path_factory.mktemp("refstore"))
    return {r: compare(ggufs["F16"], ggufs[r], PROMPT, max_tokens=MAX_TOKENS, n_ctx=N_CTX, threads=THREADS,
                       store=store)
            for r in ("F16", "Q8_0", "Q4_K_M", "Q2_K")}


def test_identical_files_give_zero_kl_and_full_agreement(results):
    r = results["F16"]
    assert r.summary.n_tokens == len(r.tokens) > 0
    assert r.mean_kld == 0.0 and r.max_kld == 0.0 and r.median_kld == 0.0
    assert all(t.kl == 0.0 and t.top1_match and t.p_ref == t.p_cand for t in r.tokens)
    assert r.top1_agreement == 1.0 and r.top5_overlap == 1.0
    assert r.ppl_reference == r.ppl_candidate
    assert r.first_divergence is None and r.reference_text == r.candidate_text
    assert r.reference_tokens == r.candidate_tokens


def test_kl_grows_as_bits_shrink(results):
    kl = {k: results[k].mean_kld for k in ("Q8_0", "Q4_K_M", "Q2_K")}
    assert 0 < kl["Q8_0"] < kl["Q4_K_M"] < kl["Q2_K"], kl
    assert results["Q8_0"].top1_agreement >= results["Q2_K"].top1_agreement
    # the reference's perplexity of its own greedy answer is the same whatever the candidate
    assert len({results[k].ppl_reference for k in results}) == 1


def test_result_shape_and_json(results):
    r = results["Q4_K_M"]
    d = r.to_dict()
    for key in ("mean_kld", "median_kld", "max_kld", "p99_kld", "top1_agreement", "ppl_reference", "ppl_candidate",
                "first_divergence", "reference_text", "candidate_text", "tokens"):
        assert key in d
    assert d["mean_kld"] == pytest.approx(np.mean([t.kl for t in r.tokens]), rel=1e-12)
    assert d["max_kld"] == max(t.kl for t in r.tokens)
    assert d["median_kld"] == pytest.approx(float(np.median([t.kl for t in r.tokens])), rel=1e-12)
    assert d["top1_agreement"] == pytest.approx(np.mean([t.top1_match for t in r.tokens]))
    import json

    back = json.loads(r.to_json())
    assert back["reference"]["file_type"] == "F16" and back["candidate"]["file_type"] == "Q4_K_M"
    assert back["tokens"][0].keys() >= {"token", "text", "kl", "top1_match", "p_ref", "p_cand"}
    # token texts spell the reference answer (its end-of-generation token, when it stopped, comes last)
    joined = "".join(t.text for t in r.tokens)
    assert joined.startswith(r.reference_text) and r.reference_text
    assert [t.token for t in r.tokens][:len(r.reference_tokens)] == r.reference_tokens
    assert len(r.tokens) <= MAX_TOKENS + 1
    assert r.first_divergence == first_divergence(r.reference_tokens, r.candidate_tokens)
    assert r.reference_finish == "stop" and len(r.tokens) == len(r.reference_tokens) + 1   # + its end token
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None and first_divergence([1, 2], [1, 2, 5]) == 2
    assert first_divergence([1, 2, 3], [1, 4, 3]) == 1


def _rescored(r, ref_path, cand_path, n_batch):
    """``r`` with its metrics recomputed by score_tokens over LogitSources of ``n_batch`` rows."""
    import dataclasses

    from app.core.compare import Summary, score_tokens
    from app.core.engine import Engine
    from app.core.logits import LogitSource

    seq = r.prompt_tokens + [t.token for t in r.tokens]
    first = len(r.prompt_tokens) - 1
    assert first // n_batch < (len(seq) - 2) // n_batch               # the scored rows span batches
    with Engine(ref_path, n_ctx=N_CTX, n_threads=THREADS) as re_, Engine(cand_path, n_ctx=N_CTX,
                                                                           n_threads=THREADS) as ce:
        with LogitSource(re_.llama, n_batch=n_batch) as rs, LogitSource(ce.llama, n_batch=n_batch) as cs:
            m, pos = score_tokens(rs, cs, seq, first)
    assert rs.n_batch == n_batch and list(pos) == list(range(first, len(seq) - 1))
    toks = [dataclasses.replace(t, kl=float(m.kl[k]), top1_match=bool(m.top1[k]), p_ref=float(m.p_ref[k]),
                                p_cand=float(m.p_cand[k])) for k, t in enumerate(r.tokens)]
    return dataclasses.replace(r, tokens=toks, summary=Summary.of(m))


def _pull_logits(path, seq, first, n_batch):
    """Raw logits at positions first..len(seq)-2, pulled with llama.cpp's C API through plain llama-cpp-python:
    batches of n_batch tokens, outputs asked for the rows >= first (llama.cpp's numerics depend on how many
    output rows a batch has, so the oracle asks for the same ones), copied out as float64."""
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=N_CTX, n_batch=512, n_threads=THREADS, verbose=False)
    batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
    rows = []
    for b0 in range(0, len(seq) - 1, n_batch):
        pos = list(range(b0, min(len(seq) - 1, b0 + n_batch)))
        for k, i in enumerate(pos):
            batch.token[k], batch.pos[k], batch.n_seq_id[k], batch.seq_id[k][0] = seq[i], i, 1, 0
            batch.logits[k] = i >= first
        batch.n_tokens = len(pos)
        assert llama_cpp.llama_decode(llm.ctx, batch) == 0
        for i in pos:
            if i >= first:
                ptr = llama_cpp.llama_get_logits_ith(llm.ctx, i - b0)
                rows.append(np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).astype(np.float64))
    llama_cpp.llama_batch_free(batch)
    llm.close()
    return np.stack(rows)


def _independent_metrics(ref_path, cand_path, seq, first, n_batch):
    """Metrics from the definitions, in float64, from separately pulled logits."""
    logits = [_pull_logits(p, seq, first, n_batch) for p in (ref_path, cand_path)]
    r, c = logits
    log_pr = r - np.log(np.sum(np.exp(r - r.max(axis=1, keepdims=True)), axis=1, keepdims=True)) \
        - r.max(axis=1, keepdims=True)
    log_pc = c - np.log(np.sum(np.exp(c - c.max(axis=1, keepdims=True)), axis=1, keepdims=True)) \
        - c.max(axis=1, keepdims=True)
    kl = np.sum(np.exp(log_pr) * (log_pr - log_pc), axis=1)
    tgt = np.array(seq[first + 1:])
    rows = np.arange(len(tgt))
    return dict(kl=kl, top1=r.argmax(1) == c.argmax(1), p_ref=np.exp(log_pr[rows, tgt]),
                p_cand=np.exp(log_pc[rows, tgt]), ppl_ref=np.exp(-np.mean(log_pr[rows, tgt])),
                ppl_cand=np.exp(-np.mean(log_pc[rows, tgt])))


@pytest.mark.parametrize("recipe,n_batch", [("Q8_0", 512), ("Q2_K", 512), ("Q4_K_M", 16)])
def test_metrics_equal_independent_float64_computation(results, ggufs, recipe, n_batch):
    """Per-token KL, top-1, token probabilities and perplexities equal the float64 oracle to 1e-6 relative;
    n_batch=16 consumes the logits in several lockstep batches (16 rows at a time) through score_tokens."""
    r = results[recipe]
    if n_batch != 512:
        r = _rescored(r, ggufs["F16"], ggufs[recipe], n_batch)
    seq = r.prompt_tokens + [t.token for t in r.tokens]
    want = _independent_metrics(ggufs["F16"], ggufs[recipe], seq, len(r.prompt_tokens) - 1, n_batch)
    got_kl = np.array([t.kl for t in r.tokens])
    assert want["kl"].min() > 0
    np.testing.assert_allclose(got_kl, want["kl"], rtol=1e-6, atol=0)
    assert r.mean_kld == pytest.approx(want["kl"].mean(), rel=1e-6)
    np.testing.assert_array_equal([t.top1_match for t in r.tokens], want["top1"])
    np.testing.assert_allclose([t.p_ref for t in r.tokens], want["p_ref"], rtol=1e-6)
    np.testing.assert_allclose([t.p_cand for t in r.tokens], want["p_cand"], rtol=1e-6)
    assert r.ppl_reference == pytest.approx(want["ppl_ref"], rel=1e-6)
    assert r.ppl_candidate == pytest.approx(want["ppl_cand"], rel=1e-6)


def test_different_vocabularies_are_refused(ggufs, tmp_path):
    from tests.conftest import DATA

    qwen_vocab = DATA / "deepseek-r1-distill-qwen" / "ggml-vocab-deepseek-r1-qwen.gguf"
    with pytest.raises(VocabMismatchError, match="vocabulary of"):
        compare(ggufs["F16"], qwen_vocab, PROMPT, max_tokens=4, n_ctx=N_CTX)
    # same size, one token's text changed
    altered = tmp_path / "altered.gguf"
    data = bytearray(ggufs["Q2_K"].read_bytes())
    i = data.index(b"<repo_name>")
    data[i:i + 11] = b"<repo_nama>"
    altered.write_bytes(data)
    assert read_header(altered).n_vocab == read_header(ggufs["Q2_K"]).n_vocab
    with pytest.raises(VocabMismatchError, match="different tokens"):
        compare(ggufs["F16"], altered, PROMPT, max_tokens=4, n_ctx=N_CTX)


def test_prompt_longer_than_context_is_refused(ggufs):
    with pytest.raises(ContextOverflowError) as e:
        compare(ggufs["F16"], ggufs["Q8_0"], "Tell me about bread. " * 80, max_tokens=4, n_ctx=N_CTX)
    assert re.fullmatch(r"the prompt takes \d{3} tokens but the context holds 256: shorten the prompt or raise the "
                        r"context size \(--ctx\)", str(e.value)), str(e.value)


def test_non_gguf_and_truncated_files_are_refused(ggufs, tmp_path):
    text = tmp_path / "notes.gguf"
    text.write_text("these are not model weights\n" * 10)
    with pytest.raises(ModelLoadError, match="not a GGUF"):
        compare(ggufs["F16"], text, PROMPT, max_tokens=4, n_ctx=N_CTX)
    short = tmp_path / "short.gguf"
    with open(ggufs["Q2_K"], "rb") as f:
        short.write_bytes(f.read(20_000_000))
    with pytest.raises(ModelLoadError, match="truncated"):
        compare(short, ggufs["Q2_K"], PROMPT, max_tokens=4, n_ctx=N_CTX)
    header_only = tmp_path / "header.gguf"
    with open(ggufs["Q2_K"], "rb") as f:
        header_only.write_bytes(f.read(4096))
    with pytest.raises(ModelLoadError, match="truncated"):
        compare(ggufs["Q2_K"], header_only, PROMPT, max_tokens=4, n_ctx=N_CTX)
    with pytest.raises(ModelLoadError, match="not found"):
        compare(tmp_path / "missing.gguf", ggufs["Q2_K"], PROMPT, max_tokens=4, n_ctx=N_CTX)


def test_unsupported_architecture_is_refused(ggufs, tmp_path):
    odd = tmp_path / "odd-arch.gguf"
    shutil.copyfile(ggufs["Q2_K"], odd)
    data = bytearray(odd.read_bytes()[:1 << 20])
    key = data.index(b"general.architecture")
    value = key + len(b"general.architecture") + 4 + 8           # value type (u32), string length (u64)
    assert data[value:value + 5] == b"llama"
    with open(odd, "r+b") as f:
        f.seek(value)
        f.write(b"zzzzz")
    assert read_header(odd).architecture == "zzzzz"
    with pytest.raises(ModelLoadError, match="zzzzz"):
        compare(odd, odd, PROMPT, max_tokens=4, n_ctx=N_CTX)


def test_cancel_stops_the_comparison(ggufs):
    cancel = threading.Event()
    pieces = []

    def on_text(t):
        pieces.append(t)
        cancel.set()

    with pytest.raises(GenerationCancelled):
        compare(ggufs["F16"], ggufs["Q8_0"], PROMPT, max_tokens=MAX_TOKENS, n_ctx=N_CTX, threads=THREADS,
                cancel=cancel, on_reference_text=on_text)
    assert 1 <= len(pieces) <= 2


def test_streaming_callbacks_progress_and_length_limit(ggufs):
    """A reference that hits max_tokens: exactly max_tokens answer tokens are scored (no end token)."""
    ref_text, cand_text, prog = [], [], []
    r = compare(ggufs["F16"], ggufs["Q8_0"], "Write a short story about a lighthouse.", max_tokens=12,
                n_ctx=N_CTX, threads=THREADS, on_reference_text=ref_text.append,
                on_candidate_text=cand_text.append, progress=prog.append)
    assert r.reference_finish == "length" and len(r.reference_tokens) == 12 == len(r.tokens)
    assert "".join(ref_text) == r.reference_text and "".join(cand_text) == r.candidate_text
    assert "".join(t.text for t in r.tokens) == r.reference_text
    stages = [p.stage for p in prog]
    assert stages.index("reference answer") < stages.index("candidate answer") < stages.index("scoring")
    assert prog[-1].stage == "scoring" and prog[-1].done == prog[-1].total == len(r.tokens)


# ---- two phases, the reference store -------------------------------------------------------------------------
class MapWatch:
    """Which of the given files this process has mapped, sampled from /proc/self/maps by a thread every few
    milliseconds and at every progress report (the memory-tracking harness of the two-phase proof)."""

    def __init__(self, *paths):
        self.paths = [str(p) for p in paths]
        self.seen: list[tuple[bool, ...]] = []
        self.phases: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            maps = f.read()
        self.seen.append(tuple(p in maps for p in self.paths))

    def progress(self, p) -> None:
        self.phases.append(p.phase)
        self.sample()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(0.003)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_reference_and_candidate_are_never_mapped_together(ggufs, tmp_path):
    store = RefStore(tmp_path / "store")
    with MapWatch(ggufs["F16"], ggufs["Q4_K_M"]) as w:
        r = compare(ggufs["F16"], ggufs["Q4_K_M"], PROMPT, max_tokens=MAX_TOKENS, n_ctx=N_CTX, threads=THREADS,
                    store=store, progress=w.progress)
    assert not r.reference_cached and r.summary.n_tokens > 0
    assert (True, False) in w.seen and (False, True) in w.seen     # each was loaded, on its own
    assert (True, True) not in w.seen, "reference and candidate were mapped at the same time"
    assert {"reference", "candidate"} <= set(w.phases)
    assert w.phases.index("candidate") > max(i for i, ph in enumerate(w.phases) if ph == "reference")


def test_second_compare_uses_the_stored_reference_and_no_cache_does_not(ggufs, results, tmp_path):
    store = RefStore(tmp_path / "store")
    first = compare(ggufs["F16"], ggufs["Q8_0"], PROMPT, max_tokens=MAX_TOKENS, n_ctx=N_CTX, threads=THREADS,
                    store=store)
    assert not first.reference_cached and len(store.entries()) == 1
    streamed, phases = [], []
    with MapWatch(ggufs["F16"]) as w:
        second = compare(ggufs["F16"], ggufs["Q2_K"], PROMPT, max_tokens=MAX_TOKENS, n_ctx=N_CTX, threads=THREADS,
                         store=store, on_reference_text=streamed.append, progress=lambda p: phases.append(p.phase))
    assert second.reference_cached and "reference" not in phases
    assert (True,) not in w.seen                          # the reference model was never loaded
    assert "".join(streamed) == second.reference_text == first.reference_text
    # the same figures as a comparison that computed its reference (module fixture: its own store)
    want = results["Q2_K"]
    assert [t.kl for t in second.tokens] == [t.kl for t in want.tokens]
    assert second.summary == want.summary and second.candidate_text == want.candidate_text
    fresh = compare(ggufs["F16"], ggufs["Q2_K"], PROMPT, max_tokens=MAX_TOKENS, n_ctx=N_CTX, threads=THREADS,
                    store=store, use_cache=False)
    assert not fresh.reference_cached and fresh.summary == want.summary
    # other settings that change logits never share a stored reference
    from app.core.load_options import LoadOptions

    fa = compare(ggufs["F16"], ggufs["Q2_K"], PROMPT, max_tokens=MAX_TOKENS, n_ctx=N_CTX, store=store,
                 options=LoadOptions(n_threads=THREADS, flash_attn="on"))
    assert not fa.reference_cached and fa.load["flash_attn"] == "on" and second.load["flash_attn"] == "off"
    assert len(store.entries()) == 2


@pytest.mark.parametrize("stage", ["reference distributions", "candidate answer"])
def test_cancel_in_either_phase_leaves_no_partial_entry(ggufs, tmp_path, stage):
    store = RefStore(tmp_path / "store")
    cancel = threading.Event()

    def progress(p):
        if p.stage == stage and p.done >= 1:
            cancel.set()

    with pytest.raises(GenerationCancelled):
        compare(ggufs["F16"], ggufs["Q8_0"], "Write a short story about a lighthouse.", max_tokens=40,
                n_ctx=N_CTX, threads=THREADS, store=store, progress=progress, cancel=cancel)
    left = sorted(p.name for p in store.root.iterdir())
    assert not any(name.endswith(".partial") for name in left), left
    # cancelled while storing: nothing stored; cancelled in phase 2: the complete reference stays usable
    assert len(store.entries()) == (0 if stage.startswith("reference") else 1)


def test_store_is_bounded_least_recently_used_first(tmp_path):
    store = RefStore(tmp_path / "s", max_bytes=2500)
    for k in ("a", "b", "c"):
        with store.writing(k, {"n": k}) as folder:
            (folder / "rows.f32").write_bytes(b"x" * 1000)
        os.utime(store.root / k / "meta.json", (time.time() - 100 + ord(k), time.time() - 100 + ord(k)))
    assert sorted(e[2].name for e in store.entries()) == ["b", "c"]     # "a", the oldest, made room for "c"
    assert store.get("b") is not None                                    # used now: "c" is the oldest
    with store.writing("d", {}) as folder:
        (folder / "rows.f32").write_bytes(b"x" * 1000)
    assert sorted(e[2].name for e in store.entries()) == ["b", "d"]
    with pytest.raises(RuntimeError), store.writing("e", {}) as folder:
        (folder / "rows.f32").write_bytes(b"x")
        raise RuntimeError("interrupted")
    assert store.get("e") is None and sorted(p.name for p in store.root.iterdir()) == ["b", "d"]


def test_a_model_too_big_for_the_memory_is_refused_naming_the_ways_out(ggufs, tmp_path, monkeypatch):
    import app.core.llama_runtime as rt

    monkeypatch.setattr(rt, "available_memory", lambda: 100_000_000)     # less than the F16's 271 MB
    with pytest.raises(ModelLoadError) as e:
        compare(ggufs["F16"], ggufs["Q2_K"], PROMPT, max_tokens=4, n_ctx=N_CTX, store=RefStore(tmp_path))
    msg = str(e.value)
    assert "reference smollm2-F16.gguf needs 270.9 MB" in msg and "100.0 MB is available" in msg
    assert "GPU" in msg and "Q8_0" in msg and "smaller context" in msg


def test_empty_prompt_is_refused(ggufs, tmp_path):
    from app.core.errors import CompareError

    with pytest.raises(CompareError, match="prompt is empty"):
        compare(ggufs["F16"], ggufs["Q2_K"], "  \n", max_tokens=4, n_ctx=N_CTX, store=RefStore(tmp_path))
