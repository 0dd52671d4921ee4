"""Benchmark: what an importance matrix and sensitivity-placed precision buy, on the real 1.5B model.

On the model at R1-Distill-Qwen-1.5B's shapes (``tests/qwen15.py``; the weights were a Q4_K_M file, so 4-bit
figures are flattered: judge at 2-3 bits) this prints, per quantization, the file size, bits per weight, mean KL
divergence from the F16 model, top-1 agreement and perplexity, measured by llama.cpp's own ``llama-perplexity``
(``--kl-divergence-base`` of the F16 model, then ``--kl-divergence`` of each candidate, ``-fa off``) on
``resources/eval/sample.txt``, which is not part of the calibration set:

    Q2_K, Q2_K+imatrix, Q3_K_S, Q3_K_S+imatrix, Q3_K_M+imatrix, and the sensitivity recipe (Q3_K_D) at
    Q3_K_M's size.

Q3_K_D's placement is weighed by the KL each tensor group measures on the calibration text by simulated
quantization (:mod:`app.core.sensitivity_kl`; the time of that step is printed with the plan, and the measured
weights are kept in ``kl-scales.json``: delete it to measure again).

The importance matrix is ours (:mod:`app.core.imatrix`, built-in calibration text).  Its collection is timed
against llama.cpp's ``llama-imatrix`` in the same run, on the same model, text, chunks, batch, threads and
flash-attention setting, and the two files are compared (counts equal, largest relative difference of the sums).

Goals: imatrix KL <= 0.85x plain at Q2_K and Q3_K_S; Q3_K_D KL <= 0.85x Q3_K_M+imatrix at its size (+-1 %);
collection time <= 1.3x llama-imatrix.  Everything done is kept in ``--work`` (GGUFs hard-linked there, so the
shared model cache being refreshed by others cannot delete them), so a rerun only does what is missing.

    .venv/bin/python benchmarks/bench_quality.py [--chunks 6] [--threads 2] [--retime]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

EVAL_TEXT = ROOT / "resources" / "eval" / "sample.txt"


def _work_dir(arg: str | None) -> Path:
    import platformdirs

    p = Path(arg) if arg else Path(platformdirs.user_cache_dir("distilldesk")) / "bench-quality"
    p.mkdir(parents=True, exist_ok=True)
    return p


def _keep(path: Path, work: Path, name: str) -> Path:
    """Hard-link (else copy) a cached GGUF into the work folder so a cache refresh cannot remove it."""
    dst = work / name
    if not dst.exists():
        try:
            os.link(path, dst)
        except OSError:
            import shutil

            shutil.copyfile(path, dst)
    return dst


def _variant(work: Path, label: str, recipe: str, imatrix: Path | None) -> Path:
    """Our quantizer's GGUF of the 1.5B checkpoint, made once into the work folder (not the shared cache, which
    every edit of quantizer/ by anyone empties)."""
    import quantizer
    from tests.qwen15 import qwen15_checkpoint_path

    out = work / f"qwen15-{label.replace('+', '-')}.gguf"
    if not out.exists():
        tmp = out.with_suffix(".partial")
        quantizer.convert(qwen15_checkpoint_path(), tmp, recipe, imatrix=imatrix)
        os.replace(tmp, out)
    return out


def _run_tool(cmd: list[str], log: Path) -> tuple[float, float]:
    """Run a llama.cpp tool; returns (wall seconds, CPU seconds of the child)."""
    from tests.llama_tools import tool_env

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        r = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=tool_env())
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode:
        raise RuntimeError(f"{Path(cmd[0]).name} failed, see {log}:\n{log.read_text()[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


# ---- imatrix: ours vs llama-imatrix ------------------------------------------------------------------------
def imatrix_timing(f16: Path, work: Path, chunks: int, threads: int, retime: bool) -> dict:
    from app.core.imatrix import builtin_calibration_text, compute_imatrix
    from app.core.load_options import LoadOptions
    from tests.llama_tools import llama_tool

    out = work / "timing.json"
    if out.exists() and not retime:
        return json.loads(out.read_text())
    text = builtin_calibration_text()
    calib = work / "calibration.txt"
    calib.write_text(text, encoding="utf-8")
    ref = work / "llama-imatrix.gguf"
    ours = work / "ours-imatrix.gguf"
    cmd = [str(llama_tool("imatrix")), "-m", str(f16), "-f", str(calib), "-o", str(ref), "-c", "512", "-b", "512",
           "-ub", "512", "-fa", "off", "--no-ppl", "-t", str(threads), "--chunks", str(chunks)]
    l_wall, l_cpu = _run_tool(cmd, work / "llama-imatrix.log")
    c0, t0 = time.process_time(), time.perf_counter()
    res = compute_imatrix(f16, ours, text=text, dataset=str(calib), chunk_size=512, n_chunks=chunks,
                          options=LoadOptions(n_threads=threads, flash_attn="off"), use_cache=False)
    o_wall, o_cpu = time.perf_counter() - t0, time.process_time() - c0
    same = _compare_imatrix(ours, ref)
    data = {"chunks": res.n_chunks, "threads": threads, "llama_wall": l_wall, "llama_cpu": l_cpu,
            "ours_wall": o_wall, "ours_cpu": o_cpu, **same}
    out.write_text(json.dumps(data, indent=1))
    return data


def _compare_imatrix(a: Path, b: Path) -> dict:
    import gguf
    import numpy as np

    ta = {t.name: np.array(t.data) for t in gguf.GGUFReader(a).tensors}
    tb = {t.name: np.array(t.data) for t in gguf.GGUFReader(b).tensors}
    counts_equal = ta.keys() == tb.keys() and all(np.array_equal(ta[n], tb[n]) for n in ta if n.endswith(".counts"))
    worst = max(float(np.max(np.abs(ta[n] - tb[n]) / np.maximum(np.abs(tb[n]), 1e-30)))
                for n in ta if n.endswith(".in_sum2") and n in tb)
    return {"entries": len(ta) // 2, "counts_equal": counts_equal, "max_rel_diff": worst,
            "bytes_identical": a.read_bytes() == b.read_bytes()}


# ---- quality with llama-perplexity -------------------------------------------------------------------------
def kl_base(f16: Path, work: Path, threads: int, chunks: int) -> Path:
    from tests.llama_tools import llama_tool

    tag = _chunks_tag(chunks)
    base = work / f"f16{tag}.kld"
    if not base.exists():
        tmp = work / f"f16{tag}.kld.partial"
        _run_tool([str(llama_tool("perplexity")), "-m", str(f16), "-f", str(EVAL_TEXT), "-c", "512", "-fa", "off",
                   "-t", str(threads), "--chunks", str(chunks), "--kl-divergence-base", str(tmp)],
                  work / f"f16-base{tag}.log")
        os.replace(tmp, base)
    return base


def _chunks_tag(chunks: int) -> str:
    """The KL base and the rows are kept per number of eval chunks ("" for the default 2, the older files)."""
    return "" if chunks == 2 else f"-{chunks}chunks"


def _gguf_size(path: Path) -> tuple[int, float]:
    import gguf
    import numpy as np

    r = gguf.GGUFReader(path)
    n_bytes = sum(int(t.n_bytes) for t in r.tensors)
    n_weights = sum(int(np.prod(t.shape)) for t in r.tensors)
    return path.stat().st_size, n_bytes * 8 / n_weights


def measure(label: str, gguf_path: Path, base: Path, work: Path, threads: int, chunks: int) -> dict:
    from tests.llama_tools import llama_tool

    out = work / f"row-{label}{_chunks_tag(chunks)}.json"
    if out.exists():
        row = json.loads(out.read_text())
        if row.get("file") == str(gguf_path):
            return row
    log = work / f"kl-{label}{_chunks_tag(chunks)}.log"
    _run_tool([str(llama_tool("perplexity")), "-m", str(gguf_path), "-f", str(EVAL_TEXT), "-c", "512", "-fa", "off",
               "-t", str(threads), "--chunks", str(chunks), "--kl-divergence-base", str(base), "--kl-divergence"],
              log)
    text = log.read_text()

    def grab(pattern: str) -> float:
        m = re.search(pattern, text)
        if not m:
            raise RuntimeError(f"no {pattern!r} in {log}")
        return float(m.group(1))

    size, bpw = _gguf_size(gguf_path)
    row = {"label": label, "file": str(gguf_path), "size": size, "bpw": bpw,
           "kl": grab(r"Mean\s+KLD:\s+([-\d.]+)"), "top1": grab(r"Same top p:\s+([\d.]+)"),
           "ppl": grab(r"Mean PPL\(Q\)\s+:\s+([\d.]+)")}
    out.write_text(json.dumps(row, indent=1))
    return row


# ---- the sensitivity recipe --------------------------------------------------------------------------------
def sensitivity_gguf(f16: Path, imatrix: Path, q3km: Path, work: Path, threads: int) -> tuple[Path, str]:
    """Q3_K_D: types placed by measured sensitivity in the bytes Q3_K_M+imatrix gives the placed tensors (the
    block matrices, the output matrix and the token embedding; the rest keep Q3_K_M's types), so the file is
    Q3_K_M's size.  Each tensor's proxy error is weighted by the KL its group measures on the calibration text
    (:mod:`app.core.sensitivity_kl`, the step timed here)."""
    import gguf

    import quantizer
    from app.core.load_options import LoadOptions
    from app.core.sensitivity_kl import MeasuredScales, measure_scales
    from quantizer.sensitivity import _padded, place, tensor_costs
    from tests.qwen15 import qwen15_checkpoint_path

    out = work / "qwen15-Q3_K_D-imatrix.gguf"
    plan_file = work / "q3_k_d-plan.json"
    if out.exists() and plan_file.exists():
        return out, json.loads(plan_file.read_text())["summary"]
    t0 = time.perf_counter()
    costs = tensor_costs(f16, imatrix, cache=work / "costs.json")
    costs_s = time.perf_counter() - t0
    scales_file = work / "kl-scales.json"
    if scales_file.exists():
        ms = MeasuredScales.from_json(json.loads(scales_file.read_text()))
    else:
        ms = measure_scales(f16, imatrix, costs, options=LoadOptions(n_threads=threads, flash_attn="off"),
                            threads=threads, use_cache=False)
        scales_file.write_text(json.dumps(ms.to_json(), indent=1))
    every, weights = ms.calibrated(costs)
    base = {t.name: (t.tensor_type.name, int(t.n_bytes)) for t in gguf.GGUFReader(q3km).tensors}
    placeable = {n: c for n, c in every.items() if base[n][0] in c.errors}
    budget = sum(_padded(base[n][1]) for n in placeable)
    placed = place(placeable, {n: base[n][0] for n in placeable}, budget,
                   weights={n: weights[n] for n in placeable})
    tmp = work / "qwen15-Q3_K_D-imatrix.partial"
    quantizer.convert(qwen15_checkpoint_path(), tmp, "Q3_K_M", imatrix=imatrix, tensor_types=placed.types)
    os.replace(tmp, out)
    summary = (f"(proxy costs {'cached' if costs_s < 5 else f'measured in {costs_s:.0f} s'}; KL weights: "
               f"{len(ms.scales)} groups + {sum(len(v) for v in ms.direct.values())} output/embedding types "
               f"measured in {ms.seconds:.0f} s on {ms.n_tokens} calibration tokens, {threads} threads)\n"
               + placed.summary())
    plan_file.write_text(json.dumps({"summary": summary, "types": placed.types}, indent=1))
    return out, summary


# ---- main --------------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunks", type=int, default=6, help="calibration chunks of 512 tokens (default 6)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-chunks", type=int, default=2, help="chunks of 512 tokens of the eval text (default 2)")
    ap.add_argument("--work", default=None, help="folder for everything made (default: user cache)")
    ap.add_argument("--retime", action="store_true", help="time the imatrix collection again")
    ap.add_argument("--no-sensitivity", action="store_true", help="skip the Q3_K_D recipe")
    args = ap.parse_args()
    from tests.qwen15 import qwen15_gguf_path

    work = _work_dir(args.work)
    f16 = work / "qwen15-F16.gguf"
    if not f16.exists():
        f16 = _keep(qwen15_gguf_path("F16"), work, "qwen15-F16.gguf")
    t = imatrix_timing(f16, work, args.chunks, args.threads, args.retime)
    print(f"imatrix collection, {t['chunks']} chunks x 512 tokens, {t['threads']} threads, -fa off, same F16 model "
          f"and text (machine shared with other jobs: wall times are contended)")
    print(f"  llama-imatrix: {t['llama_wall']:7.1f} s wall {t['llama_cpu']:7.1f} s CPU")
    print(f"  ours         : {t['ours_wall']:7.1f} s wall {t['ours_cpu']:7.1f} s CPU   ratio ours/llama "
          f"{t['ours_wall'] / t['llama_wall']:.2f}x wall, {t['ours_cpu'] / t['llama_cpu']:.2f}x CPU (goal <= 1.3x)")
    print(f"  files: {t['entries']} entries, counts equal: {t['counts_equal']}, largest relative difference of "
          f"the sums {t['max_rel_diff']:.2e}, byte-identical: {t['bytes_identical']}")
    imatrix = work / "ours-imatrix.gguf"
    base = kl_base(f16, work, args.threads, args.eval_chunks)
    variants = [("Q2_K", "Q2_K", False), ("Q2_K+imatrix", "Q2_K", True), ("Q3_K_S", "Q3_K_S", False),
                ("Q3_K_S+imatrix", "Q3_K_S", True), ("Q3_K_M+imatrix", "Q3_K_M", True)]
    rows = {}
    for label, recipe, with_im in variants:
        path = _variant(work, label, recipe, imatrix if with_im else None)
        rows[label] = measure(label, path, base, work, args.threads, args.eval_chunks)
        _print_row(rows[label])
    if not args.no_sensitivity:
        q3km = Path(rows["Q3_K_M+imatrix"]["file"])
        path, summary = sensitivity_gguf(f16, imatrix, q3km, work, args.threads)
        rows["Q3_K_D+imatrix"] = measure("Q3_K_D+imatrix", path, base, work, args.threads,
                                            args.eval_chunks)
        print(summary)
    print(f"\n{'quantization':<16} {'size MiB':>9} {'bpw':>6} {'mean KL':>9} {'top-1 %':>8} {'PPL':>8}  ratio")
    for row in rows.values():
        _print_row(row, rows)
    return 0


_AGAINST = {"Q2_K+imatrix": "Q2_K", "Q3_K_S+imatrix": "Q3_K_S", "Q3_K_D+imatrix": "Q3_K_M+imatrix"}


def _print_row(row: dict, rows: dict | None = None) -> None:
    ratio = ""
    if rows is not None and row["label"] in _AGAINST and _AGAINST[row["label"]] in rows:
        other = rows[_AGAINST[row["label"]]]
        ratio = f"KL {row['kl'] / other['kl']:.3f}x {other['label']} (goal <= 0.85x)"
        if row["label"].startswith("Q3_K_D"):
            ratio += f", size {row['size'] / other['size'] - 1:+.2%}"
    print(f"{row['label']:<16} {row['size'] / 2**20:9.1f} {row['bpw']:6.3f} {row['kl']:9.5f} {row['top1']:8.3f} "
          f"{row['ppl']:8.3f}  {ratio}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
