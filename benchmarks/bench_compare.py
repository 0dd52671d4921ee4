"""Benchmark: compare and the eval ladder at the real 1.5B model's size (R1-Distill-Qwen-1.5B shapes), printed
side by side with the goals of issue 10 and with llama-cpp-python measured in the same run.

* **memory** -- peak PSS of the process tree (``distilldesk compare`` / a 3-candidate ``distilldesk eval``,
  each a fresh process sampled every 50 ms) next to both file sizes.  Goal: peak <= larger file + 0.5 GB (before
  the two phases, compare peaked at the sum of both files: 4.26 GB for F16 + Q4_K_M).
* **stored reference** -- wall time of a first compare (empty reference store) and of a second compare with
  another candidate (the reference is read from the store).  Goal: second <= 0.4 x first.
* **decode speed** -- tokens/s of greedy decoding after a 4k and an 8k token prompt, ours (``Engine.complete``)
  vs plain ``llama_cpp.Llama.generate`` with the same settings (context, threads, flash attention, KV type).
  Goal: ours >= 0.97 x.

Models: ``tests.qwen15.qwen15_gguf_path`` (F16, Q4_K_M, Q3_K_S, Q2_K; built once, ~10+ min), or ``--models DIR``
holding ``qwen15-<TYPE>.gguf``.  Usage::

    .venv/bin/python benchmarks/bench_compare.py [--threads N] [--only memory,cache,ladder,decode] [--models DIR]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PROMPT = "Explain step by step how to compute 17 * 24, then check the result another way."


def _models(folder: str | None) -> dict[str, Path]:
    types = ("F16", "Q4_K_M", "Q3_K_S", "Q2_K")
    if folder:
        return {t: Path(folder) / f"qwen15-{t}.gguf" for t in types}
    from tests.qwen15 import qwen15_gguf_path

    return {t: qwen15_gguf_path(t) for t in types}


PEAK_RSS: list[int] = [0]    # peak RSS of the last measured run's tree (counts pages other processes share too)


def _tree_pss(proc) -> int:
    """PSS of the tree (a page mapped by another process too -- a model file someone else also runs -- counts
    by its share: read it together with PEAK_RSS)."""
    import psutil

    total = rss = 0
    for q in [proc, *proc.children(recursive=True)]:
        try:
            info = q.memory_full_info()
            total, rss = total + info.pss, rss + info.rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    PEAK_RSS[0] = max(PEAK_RSS[0], rss)
    return total


def run_measured(args: list[str], env: dict) -> tuple[float, int, str]:
    """Run ``distilldesk ARGS`` in a fresh process; (wall seconds, peak PSS of its process tree, its output)."""
    import psutil

    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    proc, peak = psutil.Process(p.pid), 0
    PEAK_RSS[0] = 0
    while p.poll() is None:
        try:
            peak = max(peak, _tree_pss(proc))
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    out, err = p.communicate()
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"distilldesk {' '.join(args)} failed ({p.returncode}):\n{err[-2000:]}")
    return wall, peak, out + err


def _env(cache: Path) -> dict:
    env = dict(os.environ, DISTILLDESK_CACHE_DIR=str(cache / "cache"), DISTILLDESK_DATA_DIR=str(cache / "data"))
    env.pop("DISTILLDESK_DEBUG", None)
    return env


def bench_memory_and_cache(m: dict[str, Path], threads: int, max_tokens: int, only: set[str], n_ctx: int,
                           chunks: int) -> None:
    common = ["--prompt", PROMPT, "--max-tokens", str(max_tokens), "--ctx", str(n_ctx), "--threads", str(threads)]
    if only & {"memory", "cache"}:
        _bench_compares(m, common, only)
    if only & {"memory", "ladder"}:
        _bench_ladder(m, threads, chunks)


def _bench_compares(m: dict[str, Path], common: list[str], only: set[str]) -> None:
    gb = 1e9
    f16, q4 = m["F16"].stat().st_size, m["Q4_K_M"].stat().st_size
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        env = _env(Path(tmp))
        first_s, first_pss, _ = run_measured(["compare", str(m["F16"]), str(m["Q4_K_M"]), *common], env)
        first_rss = PEAK_RSS[0]
        second_s, second_pss, tail = run_measured(["compare", str(m["F16"]), str(m["Q3_K_S"]), *common], env)
        assert "stored answer" in tail, tail[-2000:]
    if "memory" in only:
        goal = max(f16, q4) + 0.5e9
        print(f"compare F16 vs Q4_K_M   files {f16 / gb:.2f} GB + {q4 / gb:.2f} GB   peak PSS {first_pss / gb:.2f} GB"
              f"   goal <= {goal / gb:.2f} GB (larger file + 0.5 GB; both files: {(f16 + q4) / gb:.2f} GB)   "
              f"{'OK' if first_pss <= goal else 'MISSED'}   (peak RSS {first_rss / gb:.2f} GB)")
    if "cache" in only:
        print(f"compare, first (reference computed) {first_s:.1f} s   second, another candidate (stored reference) "
              f"{second_s:.1f} s   ratio {second_s / first_s:.2f}   goal <= 0.40   "
              f"{'OK' if second_s <= 0.4 * first_s else 'MISSED'}   (second's peak PSS {second_pss / gb:.2f} GB)")


def _bench_ladder(m: dict[str, Path], threads: int, chunks: int) -> None:
    gb, f16 = 1e9, m["F16"].stat().st_size
    ladder = [str(m[t]) for t in ("F16", "Q4_K_M", "Q3_K_S", "Q2_K")]
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        wall, pss, _ = run_measured(["eval", *ladder, "--ctx", "512", "--chunks", str(chunks), "--threads",
                                     str(threads), "--no-save"], _env(Path(tmp)))
    sizes = " + ".join(f"{Path(p).stat().st_size / gb:.2f}" for p in ladder)
    ok = f"{'OK' if pss <= f16 + 0.5e9 else 'MISSED'}   (peak RSS {PEAK_RSS[0] / gb:.2f} GB)"
    print(f"eval ladder F16 -> Q4_K_M, Q3_K_S, Q2_K ({chunks} chunk(s) x 512)   files {sizes} GB   "
          f"peak PSS {pss / gb:.2f} GB   goal <= {(f16 + 0.5e9) / gb:.2f} GB   {ok}   ({wall:.0f} s)")


def _decode_ours(eng, prompt: list[int], n: int) -> float:
    from app.core.chat_types import SamplingSettings

    reply = eng.complete(prompt, settings=SamplingSettings(greedy=True, max_tokens=n, seed=0))
    if eng.flash_attn != "off" or reply.stats.generated_tokens < n // 2:
        raise SystemExit(f"unexpected run: {eng.flash_attn}, {reply.stats.generated_tokens} tokens")
    return reply.stats.decode_tokens_per_s


def _decode_anchor(llm, prompt: list[int], n: int) -> float:
    t_first, count = None, 0
    for _tok in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        count += 1
        if t_first is None:
            t_first = time.perf_counter()
        if count >= n:
            break
    return (count - 1) / (time.perf_counter() - t_first)


def bench_decode(path: Path, threads: int, n: int, rounds: int) -> None:
    """Both loaded side by side with the same settings, the long prompt evaluated once in each (later rounds
    take it from the KV cache: llama-cpp-python's prefix match, which ours goes through too); then ``rounds``
    alternating decode runs (ours first in even rounds, the anchor first in odd ones), and the median of each.
    One 48-token run of each was too noisy to judge a 3 % goal (it said 0.924 at 4k and 1.009 at 8k)."""
    import statistics

    import llama_cpp

    from app.core.engine import Engine
    from app.core.evaluate import load_text
    from app.core.load_options import LoadOptions

    tok = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    text = load_text(None)[0]
    base = tok.tokenize(text.encode(), add_bos=False, special=False)
    for ctx in (4096, 8192):
        want = ctx - n - 64
        prompt = (base * (want // len(base) + 1))[:want]
        ours_s, anchor_s = [], []
        with Engine(path, n_ctx=ctx, options=LoadOptions(n_threads=threads, flash_attn="off")) as eng:
            llm = llama_cpp.Llama(str(path), n_ctx=ctx, n_threads=threads, n_threads_batch=threads,
                                  flash_attn=False, type_k=llama_cpp.GGML_TYPE_F16, type_v=llama_cpp.GGML_TYPE_F16,
                                  verbose=False)
            try:
                _decode_ours(eng, prompt, 2)            # the prompt evaluated once in each
                _decode_anchor(llm, prompt, 2)
                for i in range(rounds):             # who goes first alternates too
                    if i % 2:
                        anchor_s.append(_decode_anchor(llm, prompt, n))
                        ours_s.append(_decode_ours(eng, prompt, n))
                    else:
                        ours_s.append(_decode_ours(eng, prompt, n))
                        anchor_s.append(_decode_anchor(llm, prompt, n))
            finally:
                llm.close()
        ours, anchor = statistics.median(ours_s), statistics.median(anchor_s)
        runs = " ".join(f"{o:.2f}/{a:.2f}" for o, a in zip(ours_s, anchor_s, strict=True))
        print(f"decode after {len(prompt)} tokens (n_ctx {ctx}, {path.name}, flash attention off, f16 KV, "
              f"{threads} threads, median of {rounds} alternating runs of {n} tokens)   ours {ours:.2f} tok/s   "
              f"llama-cpp-python {anchor:.2f} tok/s   ratio {ours / anchor:.3f}   goal >= 0.97   "
              f"{'OK' if ours >= 0.97 * anchor else 'MISSED'}   (runs ours/anchor: {runs})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    ap.add_argument("--max-tokens", type=int, default=160, help="answer length of the compare runs")
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5, help="alternating decode runs of each (median reported)")
    ap.add_argument("--only", default="memory,cache,decode")
    ap.add_argument("--models", default=None, help="folder with qwen15-<TYPE>.gguf (default: tests.qwen15)")
    ap.add_argument("--ctx", type=int, default=2048, help="context of the compare runs")
    ap.add_argument("--chunks", type=int, default=2, help="chunks of 512 tokens of the eval ladder")
    ap.add_argument("--decode-model", default=None,
                    help="GGUF for the decode-speed figures (default: the 1.5B Q4_K_M; on a busy machine the 8k "
                         "prompt alone takes many minutes)")
    a = ap.parse_args()
    only = set(a.only.split(","))
    m = _models(a.models) if only & {"memory", "cache", "ladder"} or not a.decode_model else {}
    where = m["F16"].parent if m else a.decode_model
    print(f"# bench_compare: {os.cpu_count()} CPUs, {a.threads} threads; models {where}")
    if only & {"memory", "cache", "ladder"}:
        bench_memory_and_cache(m, a.threads, a.max_tokens, only, a.ctx, a.chunks)
    if "decode" in only:
        bench_decode(Path(a.decode_model) if a.decode_model else m["Q4_K_M"], a.threads, a.decode_tokens, a.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
