"""Benchmark: the engine's chat path against plain llama-cpp-python, same model, same prompt, same run.

Sections (``--only NAME`` runs one):

* ``decode``: greedy decode tokens/s of ``Engine.chat`` (chat template, streaming, incremental UTF-8 decoding,
  the ``<think>`` parser, an ``on_text`` callback per piece, a cancel event as the GUI passes one) vs
  ``Llama.create_completion`` of the same prompt tokens (``temperature=0``, streamed so the first token's time
  is known).  Both evaluate the whole prompt each run (KV cache reset), on the same thread count; runs alternate
  ours/anchor.  Decode rate = (tokens after the first) / (time from the first to the last token).
  Goal: ours/anchor >= 0.97.

* ``eval``: teacher-forced evaluation tokens/s, ours vs ``Llama.eval`` (runs ``benchmarks/bench_eval.py``).

A section is a function ``(args, models) -> None`` registered in ``SECTIONS``.  On a busy machine wall-clock
rates are noisy: the best of ``--repeat`` runs is the figure to quote; the CPU-time row is a cross-check.

Models: the F16 and Q8_0 GGUFs our quantizer makes of SmolLM2-135M-Instruct (built once, cached like the test
fixtures), or ``--model PATH`` (repeatable).  Usage::

    .venv/bin/python benchmarks/bench_engine.py [--threads 2] [--tokens 128] [--repeat 5] [--model M.gguf]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PROMPT = "Write a long, detailed story about a lighthouse keeper and a storm."


def default_models() -> list[Path]:
    """SmolLM2 F16 and Q8_0 made by quantizer.convert (cached in the test-fixture folder)."""
    from tests.conftest import smollm2_gguf_path

    return [smollm2_gguf_path("F16"), smollm2_gguf_path("Q8_0")]


# ---- decode -----------------------------------------------------------------------------------------------------
def _ours(engine, n_tokens: int) -> tuple[float, float, str, float]:
    """(decode tok/s, end-to-end s, text, CPU s) of one Engine.chat run with an on_text consumer."""
    from app.core.engine import SamplingSettings

    pieces: list[str] = []
    engine.llama.reset()                                  # evaluate the whole prompt, like the anchor
    c0 = time.process_time()
    r = engine.chat([{"role": "user", "content": PROMPT}],
                    settings=SamplingSettings(greedy=True, max_tokens=n_tokens),
                    on_text=lambda seg: pieces.append(seg.text), cancel=threading.Event())
    return r.stats.decode_tokens_per_s, r.stats.total_s, r.text, time.process_time() - c0


def _anchor(llm, tokens: list[int], n_tokens: int) -> tuple[float, float, str, int, float]:
    """(decode tok/s, end-to-end s, text, timed chunks, CPU s) of plain llama-cpp-python create_completion, streamed
    (one chunk per token, except that text is held back while a UTF-8 character is incomplete, and a last empty
    chunk carries the finish reason: only chunks with text are timed)."""
    llm.reset()
    c0 = time.process_time()
    t0 = time.perf_counter()
    stamps, parts = [], []
    for chunk in llm.create_completion(tokens, max_tokens=n_tokens, temperature=0.0, stream=True):
        now = time.perf_counter()
        text = chunk["choices"][0]["text"]
        if text:
            stamps.append(now)
            parts.append(text)
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    steps = len(stamps) - 1      # a held-back chunk covers several tokens: count timed chunks, not tokens
    rate = steps / (stamps[-1] - stamps[0]) if steps > 0 and stamps[-1] > stamps[0] else 0.0
    return rate, total, "".join(parts), len(stamps), cpu


def bench_decode(args: argparse.Namespace, models: list[Path]) -> None:
    import llama_cpp

    from app.core.engine import Engine

    for path in models:
        with Engine(path, n_ctx=args.ctx, n_threads=args.threads) as engine:
            llm = llama_cpp.Llama(str(path), n_ctx=args.ctx, n_threads=args.threads,
                                  n_threads_batch=args.threads, verbose=False)
            try:
                tokens = list(engine.prepare([{"role": "user", "content": PROMPT}], max_tokens=args.tokens).tokens)
                _ours(engine, 8), _anchor(llm, tokens, 8)                       # warm-up
                ours, anchor = [], []
                for _ in range(args.repeat):
                    ours.append(_ours(engine, args.tokens))
                    anchor.append(_anchor(llm, tokens, args.tokens))
            finally:
                llm.close()
        same = ours[0][2] == anchor[0][2]
        chunks = anchor[0][3]
        best_o, best_a = max(o[0] for o in ours), max(a[0] for a in anchor)
        med_o, med_a = statistics.median(o[0] for o in ours), statistics.median(a[0] for a in anchor)
        e2e_o, e2e_a = min(o[1] for o in ours), min(a[1] for a in anchor)
        print(f"decode  {engine.info.file_type:<5} {path.name}: {len(tokens)} prompt tokens, {args.tokens} generated "
              f"({chunks} anchor chunks), "
              f"{args.threads} threads, {args.repeat} runs, same text: {same}")
        print(f"  best    ours {best_o:8.1f} tok/s   llama-cpp-python {best_a:8.1f} tok/s   "
              f"ratio {best_o / best_a:.3f}x  (goal >= 0.97x)")
        print(f"  median  ours {med_o:8.1f} tok/s   llama-cpp-python {med_a:8.1f} tok/s   ratio {med_o / med_a:.3f}x")
        cpu_o, cpu_a = min(o[3] for o in ours), min(a[4] for a in anchor)
        print(f"  end-to-end (prompt + decode, fastest)  ours {e2e_o:.3f} s   llama-cpp-python {e2e_a:.3f} s   "
              f"ratio {e2e_a / e2e_o:.3f}x")
        print(f"  end-to-end CPU time (all threads, least) ours {cpu_o:.3f} s   llama-cpp-python {cpu_a:.3f} s   "
              f"ratio {cpu_a / cpu_o:.3f}x")


def bench_teacher_forced(args: argparse.Namespace, models: list[Path]) -> None:
    """Teacher-forced eval tokens/s, ours vs ``Llama.eval`` (benchmarks/bench_eval.py): the first model is the
    reference, the last the candidate; 512 tokens of the built-in sample text."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_eval

    bench_eval.report(models[0], models[-1], n_tokens=512, threads=args.threads, repeat=args.repeat)


SECTIONS: dict[str, Callable[[argparse.Namespace, list[Path]], None]] = {"decode": bench_decode,
                                                                         "eval": bench_teacher_forced}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", type=Path, help="GGUF to measure (repeatable)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=128, help="tokens to generate per run")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--ctx", type=int, default=1024)
    p.add_argument("--only", choices=sorted(SECTIONS), help="run one section")
    args = p.parse_args(argv)
    models = args.model or default_models()
    for name, section in SECTIONS.items():
        if args.only in (None, name):
            section(args, models)
    return 0


if __name__ == "__main__":
    sys.exit(main())
