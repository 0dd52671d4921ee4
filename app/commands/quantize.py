"""``distilldesk quantize SRC --type Q4_K_M [--out PATH] [--threads N] [--imatrix FILE] [--pre-tokenizer NAME]``.

Converts a Hugging Face checkpoint (folder or a Hub repo id already in the local cache) to a GGUF with a progress
bar, then prints one line: output path, size, bits per weight, seconds.  The default output is
``<data dir>/models/<model-name>/<model-name>-<TYPE>.gguf``, never inside the user's checkpoint.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.commands import _args as A
from app.core.units import format_size


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from quantizer.recipes import RECIPES

    p = subparsers.add_parser("quantize", help="convert a Hugging Face checkpoint to a GGUF",
                              description="Convert a Hugging Face checkpoint (folder or cached Hub repo id) to a "
                                          "llama.cpp GGUF with one of llama.cpp's quantization recipes.")
    p.add_argument("src", metavar="SRC", help="checkpoint folder, or a Hub repo id already downloaded")
    p.add_argument("--type", "-t", required=True, metavar="TYPE", type=str.upper,
                   help=f"recipe: {', '.join(RECIPES)}; or a sensitivity-placed recipe Q2_K_D, Q3_K_D, Q4_K_D, "
                        f"Q5_K_D (the size of Q2_K/Q3_K_M/Q4_K_M/Q5_K_M, or --target-size; bits placed where this "
                        f"model measures sensitive; needs an importance matrix, 'auto' by default)")
    p.add_argument("--out", "-o", type=Path, default=None,
                   help="output GGUF (default: <data dir>/models/<name>/<name>-<TYPE>.gguf)")
    p.add_argument("--threads", type=A.threads, default="auto", metavar="N",
                   help="parallel workers: processes on Linux, threads elsewhere; 1 = in this process "
                        "(default: the physical cores; at most the usable cores)")
    p.add_argument("--imatrix", default=None, metavar="auto|FILE",
                   help="importance matrix: a file made by 'distilldesk imatrix' or llama-imatrix, or 'auto' to "
                        "compute one over the built-in calibration text (cached; makes the model's Q8_0 GGUF "
                        "first if the library has no F16/BF16/Q8_0 of it). Matters most at 2-3 bits")
    p.add_argument("--target-size", type=float, default=None, metavar="GB",
                   help="with a *_D recipe: the tensor data size to hit, in GB (default: the base recipe's)")
    p.add_argument("--pre-tokenizer", default=None, metavar="NAME",
                   help="llama.cpp pre-tokenizer name, when the tokenizer's is not recognised (e.g. qwen2)")
    return p


def default_output(src: str, recipe: str) -> Path:
    """Where the Library looks: :func:`app.core.library.output_path` of the checkpoint's model name."""
    from app.core.library import output_path
    from quantizer.checkpoint import model_name

    return output_path(model_name(src), recipe)



def _resolve_imatrix(args: argparse.Namespace) -> Path | None:
    """``--imatrix auto``: compute (or reuse) one now, before the plan is printed; a FILE is used as given."""
    if args.imatrix is None or args.imatrix.lower() != "auto":
        return None if args.imatrix is None else Path(args.imatrix)
    from app.core.imatrix_auto import auto_imatrix
    from app.core.load_options import LoadOptions

    from .imatrix import progress_printer

    path = auto_imatrix(args.src, options=LoadOptions(n_threads=args.threads), threads=args.threads,
                        progress=progress_printer("importance matrix"),
                        notice=lambda s: print(s, file=sys.stderr, flush=True))
    print(f"importance matrix: {path}", file=sys.stderr, flush=True)
    return path


def _placed_base(recipe: str) -> str:
    from app.core.placed import PLACED_RECIPES

    return PLACED_RECIPES[recipe.upper()]


def _placed_types(args: argparse.Namespace, imatrix: Path | None) -> dict[str, str]:
    """A *_D recipe: measure, place, and print the plan (which tensors got which type and why) before any work."""
    from app.core.imatrix_auto import ensure_reference
    from app.core.placed import cost_cache_for, placed_plan

    ref = ensure_reference(args.src, threads=args.threads, notice=lambda s: print(s, file=sys.stderr, flush=True))
    print(f"{args.type}: measuring each block tensor's error at each type on {ref.name}, then the KL each "
          f"tensor group costs (cached after the first time) ...", file=sys.stderr, flush=True)
    target = int(args.target_size * 1e9) if args.target_size else None
    pp = placed_plan(args.src, args.type, reference=ref, imatrix=imatrix, target_bytes=target,
                     cost_cache=cost_cache_for(ref, imatrix), threads=args.threads, progress=_measure_printer())
    print(pp.summary(), file=sys.stderr, flush=True)
    return pp.types


def _measure_printer():
    def show(p) -> None:
        if sys.stderr.isatty():
            eta = f", about {p.eta / 60:.0f} min left" if p.eta is not None and p.step < p.n_steps else ""
            end = "\n" if p.step >= p.n_steps else ""
            print(f"\rmeasured sensitivity: {p.step}/{p.n_steps} {p.label}{eta}        ", end=end, file=sys.stderr,
                  flush=True)
    return show


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    import quantizer
    from app.core.checkpoint_plan import plan_checkpoint
    from app.core.library import make_folders, remove_empty_folders
    from app.core.placed import is_placed
    from quantizer.recipes import recipe_info

    placed = is_placed(args.type)
    if placed and args.imatrix is None:
        args.imatrix = "auto"
    recipe_info(_placed_base(args.type) if placed else args.type)  # an unknown recipe fails before any work
    imatrix = _resolve_imatrix(args)
    tensor_types = _placed_types(args, imatrix) if placed else None
    # what will be made, before any work (a checkpoint that cannot be converted fails here, nothing created)
    print(plan_checkpoint(args.src, _placed_base(args.type) if placed else args.type,
                          has_imatrix=imatrix is not None).summary(), file=sys.stderr,
          flush=True)
    out, made = args.out, []
    if out is None:  # our models folder: created now, as the GGUF is written (a given --out must exist)
        out = default_output(args.src, args.type)
        made = make_folders(out.parent)
    try:
        with tqdm(total=0, unit="B", unit_scale=True, desc=f"quantize {args.type}", file=sys.stderr,
                  disable=None) as bar:

            def progress(p: quantizer.ConvertProgress) -> None:
                bar.total = p.bytes_total
                bar.set_postfix_str(p.tensor, refresh=False)
                bar.update(p.bytes_done - bar.n)

            res = quantizer.convert(args.src, out, _placed_base(args.type) if placed else args.type,
                                    threads=args.threads, imatrix=imatrix, progress=progress,
                                    pre_tokenizer=args.pre_tokenizer, tensor_types=tensor_types)
    except BaseException:
        remove_empty_folders(made)  # a failed or interrupted conversion leaves no empty models/<name>/ behind
        raise
    print(f"{res.path}  {format_size(res.n_bytes)}  {res.bits_per_weight:.2f} bpw  {res.seconds:.1f} s")
    return 0

