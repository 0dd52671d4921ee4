"""Throughput of our numpy kernels vs ggml's C encoders (``ggml_quantize_chunk``), measured in the same run.

    .venv/bin/python benchmarks/bench_kernels.py                      # 4096 x 4096, all 13 types
    .venv/bin/python benchmarks/bench_kernels.py --size 1024 --types Q8_0,Q6_K --imatrix

Prints million weights per second for ours at 1 thread and at all threads, ggml at 1 thread, and the ratio
ours(1 thread) / ggml.  Goal (issue 2): ratio >= 1.0 for Q4_K, Q5_K, Q6_K and Q8_0.  Each figure is the best of
``--repeat`` interleaved runs (the machine may be shared).  ggml's output is compared with ours as a sanity check.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import kernels  # noqa: E402
from tests.kernels.oracle import ggml_quantize  # noqa: E402

ALL_TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
GOAL_TYPES = {"Q4_K", "Q5_K", "Q6_K", "Q8_0"}


def measure(x: np.ndarray, qt, imatrix, ncpu: int, repeat: int, threads: bool,
            clock=time.perf_counter) -> tuple[float, float, float, bool]:
    """Best-of-``repeat`` seconds for ours (1 thread), ours (all threads, always wall clock) and ggml, the runs
    interleaved so that load from other processes hits all three alike."""
    t1 = tn = tg = float("inf")
    same = True
    for _ in range(repeat):
        t0 = clock()
        ours = kernels.quantize(x, qt, imatrix=imatrix, threads=1)
        t1 = min(t1, clock() - t0)
        t0 = clock()
        ref = ggml_quantize(x, qt, imatrix)
        tg = min(tg, clock() - t0)
        same = same and np.array_equal(ours, ref)
        if threads:
            t0 = time.perf_counter()
            kernels.quantize(x, qt, imatrix=imatrix, threads=ncpu)
            tn = min(tn, time.perf_counter() - t0)
    return t1, tn, tg, same


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096, help="rows = columns of the test matrix (default 4096)")
    ap.add_argument("--types", default=",".join(ALL_TYPES), help="comma-separated type names")
    ap.add_argument("--repeat", type=int, default=2, help="runs per figure, best kept (default 2)")
    ap.add_argument("--imatrix", action="store_true", help="also pass a random positive imatrix")
    ap.add_argument("--skip-threads", action="store_true", help="skip the all-threads measurement")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time the 1-thread runs by this thread's CPU time (steadier on a busy machine)")
    args = ap.parse_args(argv)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.size, args.size), dtype=np.float32)
    imatrix = rng.uniform(0.1, 2.0, args.size).astype(np.float32) if args.imatrix else None
    ncpu = os.cpu_count() or 1
    mw = x.size / 1e6
    print(f"matrix {args.size}x{args.size} float32, imatrix={'yes' if args.imatrix else 'no'}, cpus={ncpu}, "
          f"best of {args.repeat}, 1-thread clock: {'CPU time' if args.cpu_time else 'wall'}")
    print(f"{'type':6} {'ours 1T':>10} {f'ours {ncpu}T':>10} {'ggml 1T':>10} {'ours/ggml':>10}  same bytes")
    for name in [t.strip().upper() for t in args.types.split(",") if t.strip()]:
        qt = kernels.GGMLQuantizationType[name]
        t1, tn, tg, same = measure(x, qt, imatrix, ncpu, args.repeat, not args.skip_threads,
                                   time.thread_time if args.cpu_time else time.perf_counter)
        goal = "  (goal >= 1.0)" if name in GOAL_TYPES else ""
        all_threads = f"{mw / tn:10.1f}" if tn < float("inf") else f"{'-':>10}"
        print(f"{name:6} {mw / t1:10.1f} {all_threads} {mw / tg:10.1f} {tg / t1:9.2f}x  "
              f"{'yes' if same else 'NO'}{goal}", flush=True)
    print("figures: million weights per second")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
