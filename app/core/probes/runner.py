"""A probe run: every (template x subject x sample) of a set on every model, then the optional judge.

One model in memory at a time.  For each model the probes not yet stored are decoded several at a time
(:class:`~app.core.probes.decoder.BatchDecoder`, one sequence each, each from an empty state), scored by
:mod:`~app.core.probes.heuristics` and committed one by one to the :class:`~app.core.probes.store.ProbeStore`.
Then the judge model (if any) scores every stored answer that has no score yet.  A run stopped (``cancel``) or
killed is resumed by starting it again with the same set, models, judge and settings: finished probes are kept
and skipped.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..chat_types import SamplingSettings
from ..errors import ProbeRunError
from ..load_options import LoadOptions
from .decoder import BatchDecoder, Decoded, DecodeJob
from .heuristics import answer_in_reasoning, detect_refusal, extract_answer, same_number
from .judge import Judge
from .probeset import Probe, ProbeSet
from .store import ProbeResult, ProbeStore, run_key

log = logging.getLogger(__name__)
DEFAULT_PARALLEL = 4


@dataclass(frozen=True)
class ProbeProgress:
    """``stage``: "probes" or "judge"; ``done``/``total`` count this run's probes (judge: its scores);
    ``eta_s``: seconds left at this session's rate (None before the first result); ``result``: the probe just
    finished (None for a model being loaded)."""

    run_id: int
    stage: str
    model: str
    done: int
    total: int
    eta_s: float | None
    result: ProbeResult | None = None


def load_engine(path: str | Path, load: LoadOptions, *, n_ctx: int = 512) -> Any:
    from ..engine import Engine

    return Engine(path, n_ctx=n_ctx, options=load)


def score_probe(model: str, probe: Probe, d: Decoded) -> ProbeResult:
    """The stored record of one decoded probe (flags and heuristics)."""
    th = d.thinking
    refusal = detect_refusal(th.answer if not th.unterminated else "")
    ex = extract_answer(th.answer) if probe.expected is not None and not th.unterminated else None
    value = ex.value if ex else None
    correct = same_number(value, probe.expected) if probe.expected is not None else None
    return ProbeResult(
        model=model, template=probe.template, subject=probe.subject, sample=probe.sample, seed=d.seed,
        prompt=probe.prompt, text=d.text, reasoning=th.reasoning, answer=th.answer, prompt_tokens=d.prompt_tokens,
        reasoning_tokens=th.reasoning_tokens, answer_tokens=len(d.tokens) - th.reasoning_tokens, wall_s=d.wall_s,
        finish=d.finish, skipped_reasoning=th.skipped_reasoning, unterminated=th.unterminated, refusal=refusal,
        expected=probe.expected, extracted=ex.text if ex else None, value=value, correct=correct,
        lost_answer=answer_in_reasoning(th.reasoning, probe.expected, value))


class ProbeRun:
    """``ProbeRun(probe_set, models, judge=..., store=...)``; :meth:`start` (or :meth:`resume_id`) then :meth:`run`.

    ``parallel``: sequences decoded at once.  ``penalty``: the overthinking penalty (0 = off; overrides the set's).
    """

    def __init__(self, probe_set: ProbeSet, models: list[str | Path], *, judge: str | Path | None = None,
                 store: ProbeStore | None = None, parallel: int = DEFAULT_PARALLEL, load: LoadOptions | None = None,
                 penalty: float | None = None) -> None:
        if not models:
            raise ProbeRunError("a probe run needs at least one model: name one or more GGUF files")
        for m in [*models, *([judge] if judge else [])]:
            if not Path(m).is_file():
                raise ProbeRunError(f"{m}: no such model file: check the path")
        self.set = probe_set
        self.models = [str(Path(m).resolve()) for m in models]
        self.judge = str(Path(judge).resolve()) if judge else None
        self.store = store or ProbeStore()
        self.parallel = parallel
        self.load = load or LoadOptions()
        self.settings: SamplingSettings = probe_set.sampling if penalty is None else replace(
            probe_set.sampling, overthinking_penalty=float(penalty))
        self.run_id: int | None = None
        self.resumed = 0

    def key(self) -> str:
        return run_key(self.set.source, self.models, self.judge, self.set.samples, self.settings.to_dict())

    def start(self, *, resume: bool = True) -> int:
        """Open the run: the unfinished run with the same key when ``resume``, else a new one.  Returns its id."""
        rid = self.store.find_unfinished(self.key()) if resume else None
        if rid is None:
            rid = self.store.create_run(key=self.key(), set_name=self.set.name, set_path=self.set.path,
                                        set_source=self.set.source, models=self.models, judge=self.judge,
                                        samples=self.set.samples, settings=self.settings.to_dict())
        self.run_id = rid
        self.resumed = len(self.store.done_keys(rid))
        return rid

    def total(self) -> int:
        return self.set.count() * len(self.models)

    def run(self, *, progress: Callable[[ProbeProgress], None] | None = None,
            cancel: threading.Event | None = None) -> bool:
        """Run what is left.  True when the run is complete, False when ``cancel`` stopped it."""
        if self.run_id is None:
            self.start()
        rid = self.run_id
        assert rid is not None
        self.store.set_status(rid, "running")
        report = progress or (lambda _p: None)
        done_keys = self.store.done_keys(rid)
        counter = _Counter(len(done_keys), self.total())
        for model in self.models:
            todo = [p for p in self.set.probes() if (model, p.template, p.subject, p.sample) not in done_keys]
            if not todo:
                continue
            report(ProbeProgress(rid, "probes", model, counter.done, counter.total, counter.eta()))
            if not self._run_model(model, todo, counter, report, cancel):
                self.store.set_status(rid, "stopped")
                return False
        if self.judge and not self._run_judge(report, cancel):
            self.store.set_status(rid, "stopped")
            return False
        self.store.set_status(rid, "done")
        return True

    def _run_model(self, model: str, todo: list[Probe], counter: _Counter, report: Callable[[ProbeProgress], None],
                   cancel: threading.Event | None) -> bool:
        rid = self.run_id
        assert rid is not None
        engine = load_engine(model, self.load)
        try:
            jobs = []
            for p in todo:
                msgs = ([{"role": "system", "content": self.set.system}] if self.set.system else []) + [
                    {"role": "user", "content": p.prompt}]
                prep = engine.render_tokens(msgs)
                jobs.append(DecodeJob(p, list(prep.tokens), p.seed, prep.starts_in_reasoning))
            n_ctx_seq = max(len(j.tokens) for j in jobs) + self.settings.max_tokens + 1
            with BatchDecoder(engine, n_parallel=min(self.parallel, len(jobs)), n_ctx_seq=n_ctx_seq,
                              settings=self.settings, n_threads=self._threads()) as dec:
                def on_done(d: Decoded) -> None:
                    r = score_probe(model, d.key, d)
                    self.store.add(rid, r)
                    counter.add()
                    report(ProbeProgress(rid, "probes", model, counter.done, counter.total, counter.eta(), r))

                return dec.run(jobs, on_done, cancel)
        finally:
            engine.close()

    def _threads(self) -> int | None:
        return self.load.n_threads

    def _run_judge(self, report: Callable[[ProbeProgress], None], cancel: threading.Event | None) -> bool:
        rid = self.run_id
        assert rid is not None and self.judge is not None
        todo = [r for r in self.store.results(rid) if r.judge_score is None]
        if not todo:
            return True
        counter = _Counter(len(self.store.results(rid)) - len(todo), len(self.store.results(rid)))
        report(ProbeProgress(rid, "judge", self.judge, counter.done, counter.total, None))
        engine = load_engine(self.judge, self.load, n_ctx=4096)
        try:
            judge = Judge(engine)
            for r in todo:
                if cancel is not None and cancel.is_set():
                    return False
                score = judge.score(r.subject, r.prompt, r.answer)
                self.store.set_judge_score(rid, r.key, score)
                counter.add()
                report(ProbeProgress(rid, "judge", self.judge, counter.done, counter.total, counter.eta(),
                                     replace(r, judge_score=score)))
        finally:
            engine.close()
        return True


class _Counter:
    def __init__(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        self._t0, self._n = time.monotonic(), 0

    def add(self) -> None:
        self.done += 1
        self._n += 1

    def eta(self) -> float | None:
        if self._n == 0:
            return None
        return (time.monotonic() - self._t0) / self._n * max(0, self.total - self.done)
