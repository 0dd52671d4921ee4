"""Probes per minute: several probes decoded at once (2, 4, 8 sequences in one context) vs one at a time, in the
same run, on SmolLM2-135M (Q8_0) and the 1.5B model at R1-Distill-Qwen-1.5B's shapes (Q4_K_M).

Each configuration decodes the same probes (the first N problems of the built-in checkable set, greedy, at most
--max-tokens tokens each) with app.core.probes.decoder.BatchDecoder; "one at a time" is the same decoder with one
sequence, which is exactly Engine.chat's computation (tests/app/test_probes_run.py).  Printed: probes/min,
generated tokens/s, and the speed-up over one at a time, by wall time and by this process's CPU time (the
second is steadier on a machine shared with other work).  Goal: >= 2.5x at 4 sequences on 2 cores.

The anchor, in the same run: llama.cpp's own ``llama-batched-bench`` (built from the sdist against the wheel's
libraries by tests/llama_tools.py) on the same model, threads, flash-attention setting and non-unified KV cache,
with the probes' mean prompt length and reply length.  It prints llama.cpp's own gain from B sequences (its total
tokens/s at B over B=1: what any program driving llama.cpp's CPU backend can get), and the compute ceiling: its
prompt-processing rate over its one-sequence decode rate, the most any batching can gain once the weights are no
longer the bottleneck.

    .venv/bin/python benchmarks/bench_probe.py [--probes 8] [--max-tokens 96] [--threads 2] [--skip-1p5b]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.core.chat_types import SamplingSettings  # noqa: E402
from app.core.engine import Engine  # noqa: E402
from app.core.probes import builtin_sets  # noqa: E402
from app.core.probes.decoder import BatchDecoder, DecodeJob  # noqa: E402
from app.core.probes.probeset import load_probe_set  # noqa: E402


def measure(engine: Engine, jobs: list[DecodeJob], parallel: int, settings: SamplingSettings,
            threads: int) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of this process, generated tokens)."""
    out: list = []
    with BatchDecoder(engine, n_parallel=parallel, n_ctx_seq=512, settings=settings, n_threads=threads) as d:
        t0, c0 = time.perf_counter(), time.process_time()
        d.run(list(jobs), out.append)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return dt, cpu, sum(len(r.tokens) for r in out)


def anchor(path: Path, n_prompt: int, n_gen: int, threads: int, flash_attn: str) -> dict[int, dict[str, float]]:
    """llama-batched-bench's rows {B: {"S_PP": .., "S_TG": .., "S": ..}} for B = 1, 2, 4, 8."""
    from tests.llama_tools import llama_tool, tool_env

    cmd = [str(llama_tool("batched-bench")), "-m", str(path), "-c", str(8 * (n_prompt + n_gen) + 256), "-b", "512",
           "-ub", "512", "-npp", str(n_prompt), "-ntg", str(n_gen), "-npl", "1,2,4,8", "-t", str(threads),
           "-fa", flash_attn]
    out = subprocess.run(cmd, capture_output=True, text=True, env=tool_env(), check=True).stdout
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 10 and re.fullmatch(r"\d+", cells[2]):
            rows[int(cells[2])] = {"S_PP": float(cells[5]), "S_TG": float(cells[7]), "S": float(cells[9])}
    if sorted(rows) != [1, 2, 4, 8]:
        raise RuntimeError(f"unexpected llama-batched-bench output:\n{out[-2000:]}")
    return rows


def bench(name: str, path: Path, args: argparse.Namespace) -> None:
    pset = load_probe_set([p for p in builtin_sets() if "checkable" in p.name][0])
    settings = SamplingSettings(greedy=True, max_tokens=args.max_tokens)
    with Engine(path, n_ctx=512, n_threads=args.threads) as engine:
        probes = list(pset.probes())[: args.probes]
        jobs = []
        for p in probes:
            prep = engine.render_tokens([{"role": "user", "content": p.prompt}])
            jobs.append(DecodeJob(p, list(prep.tokens), p.seed, prep.starts_in_reasoning))
        measure(engine, jobs[:1], 1, SamplingSettings(greedy=True, max_tokens=4), args.threads)     # warm-up
        fa = engine.flash_attn
        n_prompt = round(sum(len(j.tokens) for j in jobs) / len(jobs))
        base = base_cpu = None
        for parallel in (1, 2, 4, 8):
            dt, cpu, tokens = measure(engine, jobs, parallel, settings, args.threads)
            rate, cpu_rate = len(jobs) / dt * 60, len(jobs) / cpu * 60
            base, base_cpu = base or rate, base_cpu or cpu_rate
            print(f"{name:<18} parallel={parallel}  {len(jobs)} probes, {tokens} tokens in {dt:6.1f} s wall "
                  f"({cpu:6.1f} s CPU): {rate:6.1f} probes/min, {tokens / dt:6.1f} tok/s, x{rate / base:.2f} vs "
                  f"one at a time (per CPU-second: x{cpu_rate / base_cpu:.2f})", flush=True)
    if args.no_anchor:
        return
    rows = anchor(path, n_prompt, args.max_tokens, args.threads, fa)
    for b in (1, 2, 4, 8):
        r = rows[b]
        print(f"{name:<18} llama-batched-bench B={b}  (-npp {n_prompt} -ntg {args.max_tokens} -t {args.threads} "
              f"-fa {fa}): decode {r['S_TG']:6.1f} tok/s, all {r['S']:6.1f} tok/s, x{r['S'] / rows[1]['S']:.2f} vs B=1",
              flush=True)
    print(f"{name:<18} compute ceiling (llama.cpp's prompt rate {rows[1]['S_PP']:.1f} tok/s over its one-sequence "
          f"decode {rows[1]['S_TG']:.1f} tok/s): x{rows[1]['S_PP'] / rows[1]['S_TG']:.2f} at any number of sequences",
          flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probes", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-1p5b", action="store_true")
    ap.add_argument("--no-anchor", action="store_true", help="skip llama-batched-bench")
    args = ap.parse_args()
    print(f"{os.cpu_count()} CPUs, {args.threads} threads, load average {os.getloadavg()[0]:.1f} (other work on "
          f"the machine slows every configuration)", flush=True)
    from tests.conftest import smollm2_gguf_path

    bench("SmolLM2-135M Q8_0", smollm2_gguf_path("Q8_0"), args)
    if not args.skip_1p5b:
        from tests.qwen15 import qwen15_gguf_path

        bench("Qwen2 1.5B Q4_K_M", qwen15_gguf_path("Q4_K_M"), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
