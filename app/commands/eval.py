"""``distilldesk eval REF.gguf CAND.gguf...``: the eval ladder (perplexity, KL, top-1 per candidate)."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from . import _args as A
from .compare import add_load_arguments, options_from_args


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval", help="perplexity / KL ladder of several quantizations against a reference",
        description="Run the reference and each candidate over a text in chunks (llama-perplexity style: the "
                    "second half of each chunk is scored) and report per candidate its size, bits per weight, "
                    "perplexity, delta perplexity, mean KL divergence and top-1 agreement.")
    p.add_argument("models", metavar="REF.gguf [CAND.gguf ...]", nargs="+",
                   help="the reference model (F16/BF16/Q8_0) then the candidates; with --base, only candidates")
    p.add_argument("--base", metavar="FILE", default=None,
                   help="score the candidates against a llama-perplexity --kl-divergence-base FILE instead of "
                        "running a reference (figures comparable with llama.cpp's)")
    p.add_argument("--save-base", metavar="FILE", default=None,
                   help="also write the reference's distributions as a llama-perplexity --kl-divergence-base file")
    p.add_argument("--no-cache", action="store_true", help="run the reference afresh instead of using its stored "
                   "distributions")
    p.add_argument("--text", metavar="FILE", default=None, type=A.text_file,
                   help="UTF-8 text to evaluate on (default: built-in sample)")
    p.add_argument("--ctx", type=int, default=512, metavar="N", help="chunk length in tokens (default 512)")
    p.add_argument("--chunks", type=A.positive_int, default=None, metavar="N",
                   help="use at most N chunks (default: all)")
    add_load_arguments(p)
    p.add_argument("--no-save", action="store_true", help="do not store the results for the app")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON")
    fmt.add_argument("--csv", action="store_true", help="print CSV")
    return p


def _progress(p: Any) -> None:
    if sys.stderr.isatty():
        end = "\n" if p.done == p.total else ""
        eta = f", about {p.eta_s:.0f} s left" if p.eta_s is not None and p.done < p.total else ""
        print(f"\r{p.phase}: {p.stage} {p.done}/{p.total}{eta}   ", end=end, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from app.core.evaluate import eval_ladder, rows_to_csv, rows_to_json, rows_to_table

    if args.base is not None:
        reference, candidates = None, args.models
    else:
        reference, candidates = args.models[0], args.models[1:]
    rows = eval_ladder(reference, candidates, args.text, n_ctx=args.ctx, n_chunks=args.chunks,
                       options=options_from_args(args), use_cache=not args.no_cache, base=args.base,
                       save_base=args.save_base, progress=_progress, save=not args.no_save)
    r0 = rows[0]
    if args.chunks is not None and r0.n_chunks < args.chunks:
        print(f"note: the text holds only {r0.n_chunks} chunk(s) of {r0.n_ctx} tokens; scored {r0.n_chunks}, not "
              f"{args.chunks} (give a longer --text for more)", file=sys.stderr)
    if r0.reference_cached:
        print("note: the reference's distributions were stored from an earlier run (--no-cache recomputes them)",
              file=sys.stderr)
    if args.save_base:
        print(f"wrote {args.save_base} (llama-perplexity --kl-divergence-base format)", file=sys.stderr)
    if args.json:
        print(rows_to_json(rows, indent=1))
    elif args.csv:
        sys.stdout.write(rows_to_csv(rows))
    else:
        print(f"{r0.n_chunks} chunks x {r0.n_ctx} tokens of {r0.text}, {r0.n_tokens} tokens scored")
        print(rows_to_table(rows))
    return 0
