"""``distilldesk eval REF.gguf CAND.gguf...``: the eval ladder (perplexity, KL, top-1 per candidate)."""
from __future__ import annotations

import argparse
import sys
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval", help="perplexity / KL ladder of several quantizations against a reference",
        description="Run the reference and each candidate over a text in chunks (llama-perplexity style: the "
                    "second half of each chunk is scored) and report per candidate its size, bits per weight, "
                    "perplexity, delta perplexity, mean KL divergence and top-1 agreement.")
    p.add_argument("reference", metavar="REF.gguf", help="reference model (F16/BF16/Q8_0)")
    p.add_argument("candidates", metavar="CAND.gguf", nargs="+", help="candidate models")
    p.add_argument("--text", metavar="FILE", default=None, help="UTF-8 text to evaluate on (default: built-in "
                   "sample)")
    p.add_argument("--ctx", type=int, default=512, metavar="N", help="chunk length in tokens (default 512)")
    p.add_argument("--chunks", type=int, default=None, metavar="N", help="use at most N chunks (default: all)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads (default: llama.cpp's)")
    p.add_argument("--no-save", action="store_true", help="do not store the results for the app")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON")
    fmt.add_argument("--csv", action="store_true", help="print CSV")
    return p


def _progress(p: Any) -> None:
    if sys.stderr.isatty():
        end = "\n" if p.done == p.total else ""
        print(f"\r{p.stage}: chunk {p.done}/{p.total}", end=end, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from app.core.evaluate import eval_ladder, rows_to_csv, rows_to_json, rows_to_table

    rows = eval_ladder(args.reference, args.candidates, args.text, n_ctx=args.ctx, n_chunks=args.chunks,
                       threads=args.threads, progress=_progress, save=not args.no_save)
    if args.json:
        print(rows_to_json(rows, indent=1))
    elif args.csv:
        sys.stdout.write(rows_to_csv(rows))
    else:
        r0 = rows[0]
        print(f"{r0.n_chunks} chunks x {r0.n_ctx} tokens of {r0.text}, {r0.n_tokens} tokens scored")
        print(rows_to_table(rows))
    return 0
