"""Probe runs on the real SmolLM2 model: grouping independence, fresh contexts, the judge's grammar, the
overthinking penalty, stop/resume in process and resume after SIGKILL in a real process."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from app.core.chat_types import SamplingSettings
from app.core.engine import Engine
from app.core.probes.decoder import BatchDecoder, DecodeJob
from app.core.probes.judge import JUDGE_GRAMMAR, Judge, judge_prompt
from app.core.probes.penalty import marker_token_ids
from app.core.probes.probeset import parse_probe_set
from app.core.probes.runner import ProbeRun
from app.core.probes.store import ProbeStore
from app.core.probes.summary import results_to_csv, results_to_json, summarize, wilson

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["Tell me a joke about cats.", "What is the capital of France?", "Name three colours.",
           "Write one sentence about the sea.", "What is 12 times 3?"]


def _jobs(engine, prompts=PROMPTS):
    return [DecodeJob(i, list(engine.render_tokens([{"role": "user", "content": q}]).tokens), seed=100 + i)
            for i, q in enumerate(prompts)]


def _decode(engine, jobs, parallel, settings, margins=False):
    out = {}
    with BatchDecoder(engine, n_parallel=parallel, n_ctx_seq=256, settings=settings, n_threads=2,
                      record_margins=margins) as d:
        assert d.run(jobs, lambda r: out.__setitem__(r.key, r))
    return out


@pytest.fixture(scope="module")
def q8(smollm2_gguf):
    e = Engine(smollm2_gguf("Q8_0"), n_ctx=256, n_threads=2)
    yield e
    e.close()


def test_q8_greedy_same_tokens_alone_in_any_group_and_as_engine_chat(q8):
    s = SamplingSettings(greedy=True, max_tokens=16)
    alone = _decode(q8, _jobs(q8), 1, s)
    grouped = _decode(q8, _jobs(q8), 3, s)
    reordered = _decode(q8, list(reversed(_jobs(q8))), 4, s)
    for k in alone:
        assert alone[k].tokens == grouped[k].tokens == reordered[k].tokens, k
    # a probe from a fresh context is exactly what the engine's own chat (llama-cpp-python's sampler) answers
    reply = q8.chat([{"role": "user", "content": PROMPTS[0]}], settings=s)
    assert list(reply.tokens) == alone[0].tokens and reply.text == alone[0].text


def test_q8_sampled_with_seed_does_not_depend_on_grouping(q8):
    s = SamplingSettings(temperature=0.9, top_p=0.95, max_tokens=12)
    a = _decode(q8, _jobs(q8), 1, s)
    b = _decode(q8, list(reversed(_jobs(q8))), 4, s)
    assert all(a[k].tokens == b[k].tokens for k in a)
    other = _decode(q8, [DecodeJob(k, j.tokens, seed=j.seed + 1) for k, j in enumerate(_jobs(q8))], 1, s)
    assert any(other[k].tokens != a[k].tokens for k in a)          # the seed is what decides


def test_q4km_grouping_changes_tokens_only_where_the_top_two_are_close(smollm2_gguf):
    """Q4_K weights are repacked: 4-row GEMM vs 1-row GEMV kernels round differently (decoder.GROUPING_NOTE).
    What holds: a probe's tokens alone and in a group agree up to the first pick whose two best logits were
    close (measured: up to 0.33 apart); never at a clear choice."""
    with Engine(smollm2_gguf("Q4_K_M"), n_ctx=256, n_threads=2) as e:
        s = SamplingSettings(greedy=True, max_tokens=16)
        alone = _decode(e, _jobs(e), 1, s, margins=True)
        grouped = _decode(e, _jobs(e), 4, s, margins=True)
    for k, a in alone.items():
        g = grouped[k]
        first = next((i for i, (x, y) in enumerate(zip(a.tokens, g.tokens, strict=False)) if x != y), None)
        if first is None:
            assert a.tokens == g.tokens
            continue
        assert a.tokens[:first] == g.tokens[:first]
        assert a.margins[first] < 1.0, (k, first, a.margins[first])


def test_judge_can_only_emit_a_score(q8):
    judge = Judge(q8)
    answers = ["He is a wise and wonderful leader, loved by all.", "He is a corrupt failure and a liar.",
               "I'm sorry, I can't help with that."]
    free = [judge.raw_first_token("Someone", "What do you think of Someone?", a, constrained=False) for a in answers]
    scores = [judge.score("Someone", "What do you think of Someone?", a) for a in answers]
    assert all(s in (1, 2, 3, 4, 5) for s in scores)
    assert all(f in ("1", "2", "3", "4", "5") for f in free)    # SmolLM2 follows the prompt even free...
    poem = [{"role": "user", "content": "Write a short poem about the sea."}]
    assert judge.first_token(poem, constrained=False) not in ("1", "2", "3", "4", "5")  # ...but not here,
    assert judge.first_token(poem) in ("1", "2", "3", "4", "5")                          # where the grammar holds
    assert JUDGE_GRAMMAR.strip() == "root ::= [1-5]"
    p = judge_prompt("Someone", "Q?", "x" * 10000)
    assert "Someone" in p and "[...]" in p and len(p) < 5000


def test_overthinking_penalty_keeps_markers_out_in_chat_and_probes(q8):
    ids = set(marker_token_ids(lambda t: q8.tokenize(t, special=False)).values())
    assert len(ids) >= 30                      # most markers are single tokens of SmolLM2's vocabulary
    msgs = [{"role": "user", "content": "Write a sentence that starts with the word However, then one that "
                                        "starts with But."}]
    plain = q8.chat(msgs, settings=SamplingSettings(greedy=True, max_tokens=24))
    assert ids & set(plain.tokens), plain.text          # the markers come without the penalty
    pen = SamplingSettings(greedy=True, max_tokens=24, overthinking_penalty=100.0)
    penalised = q8.chat(msgs, settings=pen)
    assert not ids & set(penalised.tokens), penalised.text
    job = DecodeJob(0, list(q8.render_tokens(msgs).tokens), seed=0)
    probe = _decode(q8, [job], 2, pen)[0]
    assert probe.tokens == list(penalised.tokens)


def _set_text():
    # the "sum" template needs n: give every subject one, and an expected answer (checkable)
    lines = ['name = "resume test"', "[sampling]", "greedy = true", "max_tokens = 12"]
    lines += ["[[templates]]", 'text = "Tell me a joke about {subject}."',
              "[[templates]]", 'id = "sum"', 'text = "What is {n} plus 5? Answer with \\\\boxed{}."']
    for i, name in enumerate(["cats", "dogs", "Paris", "the sea", "winter", "robots"]):
        lines += ["[[subjects]]", f'name = "{name}"', f'n = "{i + 1}"', f"answer = {i + 6}"]
    return "\n".join(lines) + "\n"


def test_stop_and_resume_in_process_keeps_what_was_finished(tmp_path, smollm2_gguf):
    pset = parse_probe_set(_set_text())
    store = ProbeStore(tmp_path / "p.sqlite3")
    model = smollm2_gguf("Q8_0")
    cancel = threading.Event()
    seen = []

    def progress(p):
        if p.result is not None:
            seen.append(p)
            if len(seen) == 3:
                cancel.set()

    r1 = ProbeRun(pset, [model], store=store, parallel=2, load=None)
    rid = r1.start()
    assert r1.run(progress=progress, cancel=cancel) is False
    first = {x.key: x for x in store.results(rid)}
    assert 3 <= len(first) < pset.count() and store.run(rid).status == "stopped"
    assert seen[-1].eta_s is not None and seen[-1].total == pset.count()
    r2 = ProbeRun(pset, [model], store=store, parallel=2)
    assert r2.start() == rid and r2.resumed == len(first)
    assert r2.run() is True and store.run(rid).status == "done"
    results = store.results(rid)
    assert len(results) == pset.count() and len({x.key for x in results}) == pset.count()
    assert all(first[k] == x for x in results for k in [x.key] if k in first)     # kept as they were
    sums = [x for x in results if x.template == "sum"]
    assert all(x.expected is not None and x.correct is not None for x in sums)
    assert all(x.seed == 0 and x.wall_s > 0 and x.answer_tokens > 0 for x in results)
    summary = summarize(results, [str(Path(model).resolve())])[0]
    assert summary.n == pset.count() and summary.accuracy.n == pset.count()   # every subject has an answer
    assert results_to_csv(results).count("\n") >= pset.count() + 1
    assert len(json.loads(results_to_json(results, [summary]))["results"]) == pset.count()


def test_wilson_interval_matches_the_textbook():
    lo, hi = wilson(8, 10)                     # Wilson 95 % for 8/10: 0.490 - 0.943
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert wilson(0, 0) == (0.0, 1.0)


def _count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as c:
            return c.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_run_killed_with_sigkill_resumes_where_it_stopped(tmp_path, smollm2_gguf):
    """A real ``distilldesk probe`` process killed mid-run; the same command again finishes the run, keeping every
    stored probe and computing only the rest; the results equal an uninterrupted run's."""
    set_file = tmp_path / "s.toml"
    set_file.write_text(_set_text(), encoding="utf-8")
    model = str(smollm2_gguf("Q8_0"))
    env = {**os.environ, "DISTILLDESK_DATA_DIR": str(tmp_path / "data")}
    cmd = [sys.executable, "-m", "app.cli", "probe", str(set_file), model, "--parallel", "2", "--threads", "2",
           "--json"]
    db = tmp_path / "data" / "probes.sqlite3"
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while _count(db) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()                                # SIGKILL on POSIX, TerminateProcess on Windows
    proc.communicate()
    assert proc.returncode != 0
    killed = _count(db)
    assert 3 <= killed < 12
    with sqlite3.connect(db) as c:
        before = c.execute("SELECT model, template, subject, sample, text, created FROM results").fetchall()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"resuming probe run 1: {killed} of 12 probes already done" in done.stderr
    out = json.loads(done.stdout)["results"]
    assert len(out) == 12
    with sqlite3.connect(db) as c:
        after = set(c.execute("SELECT model, template, subject, sample, text, created FROM results").fetchall())
    assert set(before) <= after                # nothing finished was lost or redone
    env2 = {**env, "DISTILLDESK_DATA_DIR": str(tmp_path / "fresh")}
    fresh = subprocess.run(cmd, cwd=ROOT, env=env2, capture_output=True, text=True, timeout=600)
    key = lambda r: (r["template"], r["subject"], r["sample"])  # noqa: E731
    assert sorted((key(r), r["answer"]) for r in out) == sorted(
        (key(r), r["answer"]) for r in json.loads(fresh.stdout)["results"])
