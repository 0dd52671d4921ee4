"""Benchmark: does the sensitivity proxy track the KL divergence llama.cpp measures?

:mod:`quantizer.sensitivity` places precision by a cheap proxy (the imatrix-weighted relative output error of each
matrix at each type, measured on sampled rows).  Here it is checked against the real thing on SmolLM2-135M
(small enough to quantize many variants): for each tensor group (one category across all layers, or all matrices
of one layer) a GGUF is made with that group at a low type and everything else at Q8_0, and its mean KL from the
F16 model is measured with ``llama-perplexity --kl-divergence`` (-fa off) on ``resources/eval/sample.txt``.  The
proxy of the group is the sum of its tensors' relative errors (low type minus Q8_0).  Printed: both per group,
and the Spearman and Pearson correlations.  SmolLM2's rows (576) are not multiples of 256, so the low type is
Q4_0 (and Q2_K where the rows allow, for ffn_down).

    .venv/bin/python benchmarks/bench_sensitivity_proxy.py [--threads 2] [--chunks 4]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_quality import EVAL_TEXT, _run_tool, _work_dir  # noqa: E402

CATEGORIES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
LAYERS = (0, 1, 8, 15, 22, 29)


def _groups(names: list[str], layers: bool) -> dict[str, list[str]]:
    g = {f"all {c}": [n for n in names if f".{c}.weight" in n] for c in CATEGORIES}
    if layers:
        g.update({f"layer {i}": [n for n in names if n.startswith(f"blk.{i}.")] for i in LAYERS})
    return g


def _make(src: Path, out: Path, types: dict[str, str] | None, recipe: str, imatrix: Path | None = None) -> Path:
    import quantizer

    if not out.exists():
        tmp = out.with_suffix(".partial")
        quantizer.convert(src, tmp, recipe, imatrix=imatrix, tensor_types=types, threads=2)
        os.replace(tmp, out)
    return out


def _kl(model: Path, base: Path, work: Path, threads: int, chunks: int) -> float:
    import re

    from tests.llama_tools import llama_tool

    log = work / f"kl-{model.stem}-{chunks}.log"
    if not log.exists() or "Mean    KLD" not in log.read_text():
        _run_tool([str(llama_tool("perplexity")), "-m", str(model), "-f", str(EVAL_TEXT), "-c", "512", "-fa", "off",
                   "-t", str(threads), "--chunks", str(chunks), "--kl-divergence-base", str(base),
                   "--kl-divergence"], log)
    return float(re.search(r"Mean\s+KLD:\s+([-\d.]+)", log.read_text()).group(1))


def main() -> int:
    import numpy as np

    from app.core.imatrix import compute_imatrix
    from app.core.load_options import LoadOptions
    from quantizer.sensitivity import tensor_costs
    from tests.conftest import smollm2_checkpoint_path
    from tests.llama_tools import llama_tool

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunks", type=int, default=2, help="eval chunks of 512 tokens (default 2)")
    ap.add_argument("--layers", action="store_true", help="also groups of whole layers (6 more variants)")
    ap.add_argument("--work", default=None)
    args = ap.parse_args()
    work = _work_dir(args.work) / "proxy"
    work.mkdir(exist_ok=True)
    ckpt = smollm2_checkpoint_path()
    f16 = _make(ckpt, work / "smollm2-F16.gguf", None, "F16")
    im = work / "smollm2.imatrix.gguf"
    if not im.exists():
        compute_imatrix(f16, im, chunk_size=512, n_chunks=8, options=LoadOptions(n_threads=args.threads,
                        flash_attn="off"), use_cache=False)
    base = work / f"f16-{args.chunks}.kld"
    if not base.exists():
        tmp = work / "f16.kld.partial"
        _run_tool([str(llama_tool("perplexity")), "-m", str(f16), "-f", str(EVAL_TEXT), "-c", "512", "-fa", "off",
                   "-t", str(args.threads), "--chunks", str(args.chunks), "--kl-divergence-base", str(tmp)],
                  work / "base.log")
        os.replace(tmp, base)
    costs = tensor_costs(f16, im, cache=work / "costs.json")
    q8 = _make(ckpt, work / "smollm2-Q8_0-im.gguf", None, "Q8_0", im)
    kl_q8 = _kl(q8, base, work, args.threads, args.chunks)
    rows = []
    for label, names in _groups(sorted(costs), args.layers).items():
        low = {n: ("Q2_K" if "Q2_K" in costs[n].errors else "Q4_0") for n in names}
        proxy = sum(costs[n].errors[q] - costs[n].errors["Q8_0"] for n, q in low.items())
        model = _make(ckpt, work / f"smollm2-{label.replace(' ', '_')}.gguf", low, "Q8_0", im)
        kl = _kl(model, base, work, args.threads, args.chunks) - kl_q8
        rows.append((label, proxy, kl))
        print(f"{label:<16} proxy {proxy:9.5f}   KL over Q8_0 {kl:9.5f}", flush=True)
    p, k = np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
    rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731
    spearman = float(np.corrcoef(rank(p), rank(k))[0, 1])
    pearson = float(np.corrcoef(p, k)[0, 1])
    print(f"\n{len(rows)} groups: Spearman rank correlation proxy vs measured KL {spearman:.3f}, Pearson {pearson:.3f} "
          f"(Q8_0+imatrix alone: KL {kl_q8:.5f})")
    (work / "proxy.json").write_text(json.dumps({"rows": rows, "spearman": spearman, "pearson": pearson}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
