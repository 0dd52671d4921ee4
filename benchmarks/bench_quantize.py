"""Benchmark: our whole pipeline (safetensors in, GGUF out) against llama.cpp's quantize step alone.

For each recipe (default Q4_K_M, Q6_K, Q8_0) it runs, each in its own fresh subprocess so peak RSS is that job's:

* ours:  ``quantizer.convert(SmolLM2 checkpoint, out, recipe, threads=N)``, end to end;
* llama: ``llama_cpp.llama_model_quantize(F16 GGUF, out, ftype, nthread=N)``, from the F16 GGUF our converter
  made of the same checkpoint (made once beforehand, not timed),

and prints seconds, peak memory and the ratio ours/llama (goal: <= 1.0), plus whether the two GGUFs hold
identical tensors.  CPU seconds (all threads and worker processes of the job, during the call) and their ratio
come last: on a busy machine they are steadier than wall time.

Peak memory (MiB) is the job's own peak RSS (VmHWM), or, while it has worker processes (our converter forks
workers on Linux), the peak of the summed PSS of the job and its workers, sampled every 50 ms, if that is
larger (PSS splits the pages a worker still shares with the job between them, so nothing is counted twice).
smaps_rollup is only read while there are workers: a read costs milliseconds for a process that maps a big
file, and llama.cpp's run (no workers) must not pay for the measuring.  Usage::

    .venv/bin/python benchmarks/bench_quantize.py [--threads N] [--repeat R] [--recipes Q4_K_M,Q6_K,Q8_0]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_RECIPES = ("Q4_K_M", "Q6_K", "Q8_0")


# ---- child jobs --------------------------------------------------------------------------------------------
def _peak_rss_mib() -> float:
    """This process's peak RSS.  VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork+exec, so a child of
    a big parent would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource  # not Linux: ru_maxrss (bytes on macOS)

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


class _TreeMemory:
    """Samples the summed PSS of this process and its children while it has any (Linux)."""

    def __init__(self, interval: float = 0.05) -> None:
        import threading

        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def __enter__(self) -> _TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            children = _children()
            if children:
                self.peak_kib = max(self.peak_kib, sum(_pss_kib(pid) for pid in [os.getpid(), *children]))


def _children() -> list[int]:
    pids: list[int] = []
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as f:
                pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return pids


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:  # gone, or no smaps_rollup
        pass
    return 0


def _cpu() -> float:
    """CPU seconds of this process's threads and of its finished (reaped) children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _timed(call) -> dict:
    with _TreeMemory() as mem:
        t0, c0 = time.perf_counter(), _cpu()
        call()
        seconds, cpu = time.perf_counter() - t0, _cpu() - c0
    return {"seconds": seconds, "cpu": cpu, "rss_mib": max(_peak_rss_mib(), mem.peak_kib / 1024)}


def _job_ours(src: str, out: str, recipe: str, threads: int) -> dict:
    import quantizer

    return _timed(lambda: quantizer.convert(Path(src), Path(out), recipe, threads=threads))


def _job_llama(src: str, out: str, recipe: str, threads: int) -> dict:
    import ctypes

    import llama_cpp

    from quantizer.recipes import RECIPES

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = RECIPES[recipe].ftype
    params.nthread = threads
    quiet = llama_cpp.llama_log_callback(lambda *a: None)  # kept alive for the whole call
    llama_cpp.llama_log_set(quiet, ctypes.c_void_p(0))
    rc = 0

    def call() -> None:
        nonlocal rc
        rc = llama_cpp.llama_model_quantize(src.encode(), out.encode(), ctypes.byref(params))

    res = _timed(call)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize returned {rc}")
    return res


def _child(argv: list[str]) -> int:
    job, src, out, recipe, threads = argv
    fn = {"ours": _job_ours, "llama": _job_llama}[job]
    print(json.dumps(fn(src, out, recipe, int(threads))))
    return 0


def _run_child(job: str, src: Path, out: Path, recipe: str, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", job, str(src), str(out), recipe, str(threads)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=3600)
    if res.returncode != 0:
        raise RuntimeError(f"{job} {recipe} failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---- the parent --------------------------------------------------------------------------------------------
def _same_tensors(a: Path, b: Path) -> bool:
    import gguf
    import numpy as np

    ra, rb = gguf.GGUFReader(str(a)), gguf.GGUFReader(str(b))
    ta = {t.name: (int(t.tensor_type), np.asarray(t.data).tobytes()) for t in ra.tensors}
    tb = {t.name: (int(t.tensor_type), np.asarray(t.data).tobytes()) for t in rb.tensors}
    return ta == tb


def _checkpoint() -> Path:
    from tests.conftest import smollm2_checkpoint_path

    return smollm2_checkpoint_path()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=1, help="runs per job; the fastest is reported")
    ap.add_argument("--recipes", default=",".join(DEFAULT_RECIPES))
    args = ap.parse_args(argv)
    recipes = [r.strip().upper() for r in args.recipes.split(",") if r.strip()]

    import quantizer

    src = _checkpoint()
    with tempfile.TemporaryDirectory(prefix="bench-quantize-") as tmp:
        work = Path(tmp)
        f16 = work / "smollm2-F16.gguf"
        quantizer.convert(src, f16, "F16", threads=args.threads)  # llama.cpp's input, not timed
        print(f"SmolLM2-135M-Instruct, {args.threads} thread(s), best of {args.repeat}; "
              f"ours = safetensors -> GGUF end to end, llama = llama_model_quantize from our F16 GGUF")
        head = (f"{'recipe':8} {'ours s':>8} {'ours MiB':>9} {'llama s':>8} {'llama MiB':>10} {'ratio':>6}  same"
                f"  {'ours cpu':>8} {'llama cpu':>9} {'cpu ratio':>9}")
        print(head)
        print("-" * len(head))
        for recipe in recipes:
            best: dict[str, dict] = {}
            for _ in range(args.repeat):
                for job, inp in (("ours", src), ("llama", f16)):
                    r = _run_child(job, inp, work / f"{job}-{recipe}.gguf", recipe, args.threads)
                    if job in best:  # fastest wall time, least CPU time, each over the repeats
                        r = {k: min(r[k], best[job][k]) for k in ("seconds", "cpu")} | {
                            "rss_mib": max(r["rss_mib"], best[job]["rss_mib"])}
                    best[job] = r
            same = _same_tensors(work / f"ours-{recipe}.gguf", work / f"llama-{recipe}.gguf")
            o, ll = best["ours"], best["llama"]
            print(f"{recipe:8} {o['seconds']:8.2f} {o['rss_mib']:9.0f} {ll['seconds']:8.2f} {ll['rss_mib']:10.0f} "
                  f"{o['seconds'] / ll['seconds']:6.2f}  {'yes' if same else 'NO ':3}  {o['cpu']:8.2f} "
                  f"{ll['cpu']:9.2f} {o['cpu'] / ll['cpu']:9.2f}", flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.exit(_child(sys.argv[2:]))
    sys.exit(main())
