"""Benchmark: the engine's chat path against plain llama-cpp-python, same model, same prompt, same run.

Sections (``--only NAME`` runs one):

* ``decode``: greedy decode tokens/s of ``Engine.chat`` (chat template, streaming, incremental UTF-8 decoding,
  the ``<think>`` parser, an ``on_text`` callback per piece, a cancel event as the GUI passes one) vs
  ``Llama.create_completion`` of the same prompt tokens (``temperature=0``, streamed so the first token's time
  is known).  Both evaluate the whole prompt each run (KV cache reset), on the same thread count; runs alternate
  ours/anchor.  Decode rate = (tokens after the first) / (time from the first to the last token).
  Goal: ours/anchor >= 0.97.

* ``eval``: teacher-forced evaluation tokens/s, ours vs ``Llama.eval`` (runs ``benchmarks/bench_eval.py``).

* ``devices``: prompt and decode tokens/s per device next to plain CPU, same run: CPU, Vulkan (lavapipe on a
  machine without a GPU), llama.cpp RPC over loopback with 1 and 2 ``distilldesk worker`` processes.  The RPC
  ratio is the figure that matters (its overhead on identical kernels).

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


# ---- devices -----------------------------------------------------------------------------------------------------
def _device_run(path: Path, options, args: argparse.Namespace) -> tuple[float, float, str]:
    """(best prompt tok/s, best decode tok/s, what it ran on) of Engine.chat with ``options`` (LoadOptions)."""
    from app.core.engine import Engine, SamplingSettings

    # A long prompt, so prompt processing is measured on a real batch (the chat template adds the rest).
    prompt = PROMPT + " Include the weather, the sea, the ships and the people of the town. " * 6
    with Engine(path, n_ctx=args.ctx, options=options) as engine:
        where = engine.backend + (f", {engine.info.offload}" if engine.info.offload else "")
        runs = []
        for i in range(args.repeat + 1):                      # the first run warms up (shaders, caches)
            engine.llama.reset()
            r = engine.chat([{"role": "user", "content": prompt}], cancel=threading.Event(),
                            settings=SamplingSettings(greedy=True, max_tokens=8 if i == 0 else args.tokens))
            if i:
                runs.append((r.stats.prompt_tokens_per_s, r.stats.decode_tokens_per_s))
    return max(r[0] for r in runs), max(r[1] for r in runs), where


def bench_devices(args: argparse.Namespace, models: list[Path]) -> None:
    """Prompt and decode tok/s per device, next to plain CPU in the same run: CPU, Vulkan (lavapipe here, when
    the module is installed), and RPC workers over loopback (1 and 2 `distilldesk worker` processes serving their
    CPU).  The RPC ratio is llama.cpp's RPC overhead (same CPU kernels, data through TCP)."""
    import os
    import subprocess

    os.environ.setdefault("GGML_VK_VISIBLE_DEVICES", "0")    # lavapipe counts as a device for this benchmark
    os.environ.setdefault("GGML_VK_DISABLE_F16", "1")
    from app.core import backends
    from app.core.load_options import LoadOptions
    from tests.app.test_rpc import start_worker

    path = models[-1]
    fa = "off"                                                # the same attention path everywhere
    print(f"devices  {path.name}: {args.tokens} generated tokens, best of {args.repeat} runs, CPU {args.threads} "
          f"threads (workers: 2 threads each, same machine)", flush=True)
    cpu = _device_run(path, LoadOptions(n_threads=args.threads, flash_attn=fa), args)

    def row(name: str, pp: float, tg: float, where: str) -> None:
        print(f"  {name:<8} prompt {pp:8.1f} tok/s ({pp / cpu[0]:.2f}x CPU)   decode {tg:8.1f} tok/s "
              f"({tg / cpu[1]:.2f}x CPU)   [{where}]", flush=True)

    row("CPU", *cpu)
    vulkan = [d.name for d in backends.list_devices() if d.backend == "Vulkan"]
    if vulkan:
        row("Vulkan", *_device_run(path, LoadOptions(n_threads=args.threads, n_gpu_layers=-1,
                                                     devices=(vulkan[0],), flash_attn=fa), args))
    else:
        print("  no Vulkan device (make gpu GPU=vulkan; lavapipe: mesa-vulkan-drivers): Vulkan row skipped")
    env_vk = os.environ.pop("GGML_VK_VISIBLE_DEVICES")       # workers serve their CPU
    procs: list[tuple[subprocess.Popen, str]] = []
    try:
        for n in (1, 2):
            while len(procs) < n:
                proc, endpoint = start_worker()
                procs.append((proc, endpoint))
            eps = tuple(e for _, e in procs[:n])
            names = tuple(d.name for d in backends.add_workers(eps))
            row(f"RPC x{n}", *_device_run(path, LoadOptions(
                n_threads=args.threads, n_gpu_layers=-1, rpc_workers=eps, devices=names, flash_attn=fa), args))
    finally:
        os.environ["GGML_VK_VISIBLE_DEVICES"] = env_vk
        for proc, _ in procs:
            proc.kill()
            proc.wait(10)


SECTIONS: dict[str, Callable[[argparse.Namespace, list[Path]], None]] = {"decode": bench_decode,
                                                                         "eval": bench_teacher_forced,
                                                                         "devices": bench_devices}


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
