"""``distilldesk probe SET.toml MODEL.gguf [MODEL.gguf...]``: run a probe set on one or more models.

Every (template x subject x sample x model) runs in a fresh context, several at a time; results are saved as they
finish in the probes database, and running the same command again resumes an unfinished run (``--new`` starts
over).  Progress goes to stderr; the per-probe table (or ``--json``/``--csv``) and the summary to stdout.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from app.commands import _args as A

from .device_flags import add_device_flags, device_fields


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "probe", help="run a probe set (same questions, fresh contexts) on several models",
        description="Run every prompt of a probe set on each model in a fresh context, several sequences at a "
                    "time, recording reasoning length, thinking flags, refusals, answers (checkable sets) and an "
                    "optional judge score. Resumes an unfinished identical run. Built-in sets: "
                    "resources/probes/ (name one by its file name, e.g. 5-checkable-reasoning).")
    p.add_argument("set", metavar="SET.toml", help="probe set file, or the name of a built-in set")
    p.add_argument("models", metavar="MODEL.gguf", nargs="+", help="models (first = the reference, e.g. F16)")
    p.add_argument("--judge", metavar="J.gguf", default=None, help="a model that scores each answer's tone 1-5")
    p.add_argument("--samples", type=int, default=None, metavar="N", help="samples per cell (default: the set's)")
    p.add_argument("--parallel", type=int, default=4, metavar="N", help="sequences decoded at once (default 4)")
    p.add_argument("--penalty", type=float, default=None, metavar="B",
                   help="overthinking penalty: logit bias taken off hesitation markers (default: the set's, 0)")
    p.add_argument("--threads", type=A.threads, default=None, metavar="N",
                   help="CPU threads: a number or 'auto' (default: the physical cores)")
    add_device_flags(p)
    p.add_argument("--new", action="store_true", help="start a new run even if an identical one is unfinished")
    p.add_argument("--show-judge-prompt", action="store_true", help="print the judge's prompt template and exit")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the results and summary as JSON")
    fmt.add_argument("--csv", action="store_true", help="print the results as CSV")
    return p


def resolve_set(name: str) -> Path:
    from app.core.probes import builtin_sets

    p = Path(name)
    if p.exists() or p.suffix == ".toml" and p.parent != Path("."):
        return p
    for b in builtin_sets():
        if name in (b.name, b.stem):
            return b
    return p


def _progress(p: Any) -> None:
    eta = f", about {p.eta_s:.0f} s left" if p.eta_s is not None else ""
    what = "judging" if p.stage == "judge" else Path(p.model).name
    end = "\n" if p.done == p.total else ""
    if sys.stderr.isatty():
        print(f"\r{what}: {p.done}/{p.total}{eta}   ", end=end, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from app.core.load_options import LoadOptions
    from app.core.probes.judge import JUDGE_PROMPT
    from app.core.probes.probeset import load_probe_set
    from app.core.probes.runner import ProbeRun
    from app.core.probes.summary import results_to_csv, results_to_json, summarize, summary_table

    if args.show_judge_prompt:
        print(JUDGE_PROMPT)
        return 0
    pset = load_probe_set(resolve_set(args.set))
    if args.samples is not None:
        pset = pset.with_samples(args.samples)
    run_ = ProbeRun(pset, args.models, judge=args.judge, parallel=args.parallel, penalty=args.penalty,
                    load=LoadOptions(n_threads=args.threads, **device_fields(args)))
    rid = run_.start(resume=not args.new)
    if run_.resumed:
        print(f"resuming probe run {rid}: {run_.resumed} of {run_.total()} probes already done", file=sys.stderr)
    else:
        print(f"probe run {rid}: {run_.total()} probes ({pset.name})", file=sys.stderr)
    run_.run(progress=_progress)
    results = run_.store.results(rid)
    summaries = summarize(results, run_.models)
    if args.json:
        print(results_to_json(results, summaries))
    elif args.csv:
        sys.stdout.write(results_to_csv(results))
    else:
        for r in results:
            flags = ",".join(f for f, on in (("skipped", r.skipped_reasoning), ("cut", r.unterminated),
                                              ("refusal", bool(r.refusal)), ("lost", r.lost_answer)) if on)
            ok = "" if r.correct is None else (" right" if r.correct else f" wrong({r.extracted})")
            judge = f" judge={r.judge_score}" if r.judge_score is not None else ""
            print(f"{Path(r.model).name}\t{r.template}\t{r.subject}\t#{r.sample}\t{r.reasoning_tokens} reasoning "
                  f"+ {r.answer_tokens} answer tokens{ok}{judge}\t{flags}")
        print()
        print(summary_table(summaries))
    return 0
