"""Benchmark: teacher-forced evaluation tokens/s, ours vs plain llama-cpp-python ``Llama.eval``, same run.

The same ``n`` tokens of the built-in sample text are evaluated with logits at every position:

* ``logits``: ours = :class:`app.core.logits.LogitSource` over the model loaded by ``Engine`` (batches of
  ``n_batch``, every row read); anchor = ``Llama(logits_all=True).eval(tokens)`` (which copies every row into
  ``Llama.scores``).  One model.
* ``pair``: ours = :func:`app.core.compare.score_tokens` (the reference's rows, then the candidate scored
  against them by :func:`app.core.logits.score_rows` with float64 KL / top-1 / top-5 / NLL per token: the
  per-token cost of ``compare`` and of each ``eval`` candidate, without the trip through the reference store);
  anchor = ``Llama.eval`` of the reference, then of the candidate (logits only, no metrics).

Runs alternate ours/anchor and the fastest of ``--repeat`` is reported, with the ratio ours/anchor in tokens/s
(goal >= 0.9), by wall clock and by process CPU time (with one llama.cpp thread the CPU time is the work done,
which stays meaningful on a busy machine; with more threads read the wall figures).

Models: the F16 and Q8_0 GGUFs our quantizer makes of SmolLM2-135M-Instruct (made once, cached like the test
fixtures), or ``--ref``/``--cand``.  Usage::

    .venv/bin/python benchmarks/bench_eval.py [--threads N] [--tokens 512] [--repeat 3] [--ref F.gguf --cand C.gguf]
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _default_models() -> tuple[Path, Path]:
    from tests.conftest import smollm2_gguf_path

    return smollm2_gguf_path("F16"), smollm2_gguf_path("Q8_0")


def _anchor(paths: list[Path], tokens: list[int], n_ctx: int, threads: int) -> tuple[float, float]:
    import llama_cpp

    llms = [llama_cpp.Llama(str(p), n_ctx=n_ctx, n_batch=512, logits_all=True, n_threads=threads,
                            n_threads_batch=threads, verbose=False) for p in paths]
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        for llm in llms:
            llm.reset()
            llm.eval(tokens[:-1])            # the positions ours decodes (the last token predicts nothing)
        return time.perf_counter() - t0, time.process_time() - c0
    finally:
        for llm in llms:
            llm.close()


def _ours(paths: list[Path], tokens: list[int], n_ctx: int, threads: int) -> tuple[float, float]:
    from app.core.compare import score_tokens
    from app.core.engine import Engine
    from app.core.logits import LogitSource

    engines = [Engine(p, n_ctx=n_ctx, n_threads=threads) for p in paths]
    srcs = [LogitSource(e.llama) for e in engines]
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        if len(srcs) == 1:
            for _, rows in srcs[0].rows(tokens, 0):
                rows.sum()                   # read every row (the anchor copies them)
        else:
            score_tokens(srcs[0], srcs[1], tokens, 0)
        return time.perf_counter() - t0, time.process_time() - c0
    finally:
        for s, e in zip(srcs, engines, strict=True):
            s.close()
            e.close()


def report(ref: Path, cand: Path, *, n_tokens: int = 512, threads: int = 1, repeat: int = 3) -> None:
    """Measure and print both sections (also run by ``bench_engine.py --only eval``)."""
    from app.core.engine import Engine
    from app.core.evaluate import load_text

    with Engine(ref, n_ctx=n_tokens, n_threads=threads) as e:
        tokens = e.llama.tokenize(load_text(None)[0].encode(), add_bos=True, special=False)[:n_tokens]
    n = len(tokens) - 1
    print(f"models: {ref.name} (reference), {cand.name} (candidate); {n} positions, threads={threads}")
    for label, paths in (("logits", [ref]), ("pair", [ref, cand])):
        ours, anchor = [float("inf")] * 2, [float("inf")] * 2
        for _ in range(repeat):
            ours = [min(a, b) for a, b in zip(ours, _ours(paths, tokens, n_tokens, threads), strict=True)]
            anchor = [min(a, b) for a, b in zip(anchor, _anchor(paths, tokens, n_tokens, threads), strict=True)]
        for k, clock in enumerate(("wall", "cpu")):
            t_ours, t_anchor = n / ours[k], n / anchor[k]
            print(f"teacher-forced eval [{label:6s}] ({clock:4s})  ours {t_ours:8.1f} tok/s   Llama.eval "
                  f"{t_anchor:8.1f} tok/s   ratio {t_ours / t_anchor:.3f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads (default 1)")
    ap.add_argument("--tokens", type=int, default=512, help="tokens evaluated (default 512)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per side; the fastest is reported")
    ap.add_argument("--ref", type=Path, default=None)
    ap.add_argument("--cand", type=Path, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    ref, cand = (args.ref, args.cand) if args.ref and args.cand else _default_models()

    report(ref, cand, n_tokens=args.tokens, threads=args.threads, repeat=args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
