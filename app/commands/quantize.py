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
                   help=f"recipe: {', '.join(RECIPES)}")
    p.add_argument("--out", "-o", type=Path, default=None,
                   help="output GGUF (default: <data dir>/models/<name>/<name>-<TYPE>.gguf)")
    p.add_argument("--threads", type=A.threads, default="auto", metavar="N",
                   help="parallel workers: processes on Linux, threads elsewhere; 1 = in this process "
                        "(default: the physical cores; at most the usable cores)")
    p.add_argument("--imatrix", type=Path, default=None, help="importance-matrix file made by llama-imatrix")
    p.add_argument("--pre-tokenizer", default=None, metavar="NAME",
                   help="llama.cpp pre-tokenizer name, when the tokenizer's is not recognised (e.g. qwen2)")
    return p


def default_output(src: str, recipe: str) -> Path:
    """Where the Library looks: :func:`app.core.library.output_path` of the checkpoint's model name."""
    from app.core.library import output_path
    from quantizer.checkpoint import model_name

    return output_path(model_name(src), recipe)



def run(args: argparse.Namespace) -> int:
    import quantizer
    from app.core.checkpoint_plan import plan_checkpoint
    from app.core.library import make_folders, remove_empty_folders
    from quantizer.recipes import recipe_info
    from tqdm import tqdm

    recipe_info(args.type)  # an unknown recipe fails before any default folder is created
    # what will be made, before any work (a checkpoint that cannot be converted fails here, nothing created)
    print(plan_checkpoint(args.src, args.type, has_imatrix=args.imatrix is not None).summary(), file=sys.stderr,
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

            res = quantizer.convert(args.src, out, args.type, threads=args.threads, imatrix=args.imatrix,
                                    progress=progress, pre_tokenizer=args.pre_tokenizer)
    except BaseException:
        remove_empty_folders(made)  # a failed or interrupted conversion leaves no empty models/<name>/ behind
        raise
    print(f"{res.path}  {format_size(res.n_bytes)}  {res.bits_per_weight:.2f} bpw  {res.seconds:.1f} s")
    return 0

