"""``distilldesk imatrix MODEL.gguf [--text FILE] [--chunks N] [-o FILE]``: compute an importance matrix.

Runs the model (an F16/BF16/Q8_0 GGUF of the checkpoint) over calibration text (default: the built-in set) and
writes llama.cpp's imatrix GGUF, which ``distilldesk quantize --imatrix FILE`` and ``llama-quantize --imatrix``
take.  The file appears only when complete; results are cached by model, text and settings.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed: give a whole number of at least 1")
    return value


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "imatrix", help="compute an importance matrix (llama-imatrix's format) for quantizing",
        description="Run MODEL.gguf (the F16, BF16 or Q8_0 GGUF of the checkpoint) over calibration text and "
                    "write the importance matrix llama.cpp's quantizers use to spend precision where the "
                    "activations are large.")
    p.add_argument("model", metavar="MODEL.gguf", help="the model to run (F16, BF16 or Q8_0 GGUF)")
    p.add_argument("--text", metavar="FILE", default=None,
                   help="UTF-8 calibration text (default: the built-in set: conversation, reasoning, code, "
                        "several languages)")
    p.add_argument("--chunks", type=_positive, default=None, metavar="N",
                   help="use at most N chunks of the text (default: all)")
    p.add_argument("--chunk-size", type=_positive, default=512, metavar="N",
                   help="tokens per chunk (default 512, as llama-imatrix)")
    p.add_argument("-o", "--out", type=Path, default=None, metavar="FILE",
                   help="output file (default: MODEL.imatrix.gguf next to the model)")
    p.add_argument("--no-cache", action="store_true", help="compute afresh even if a cached result exists")
    p.add_argument("--threads", type=_positive, default=None, metavar="N",
                   help="CPU threads (default: half the logical cores)")
    p.add_argument("--gpu-layers", type=int, default=0, metavar="N",
                   help="layers to offload to the GPU, -1 = all (default 0; needs a GPU build)")
    p.add_argument("--flash-attn", choices=("auto", "on", "off"), default="auto",
                   help="flash attention (default auto: on with GPU offload, off on the CPU)")
    return p


def options_from_args(args: argparse.Namespace) -> Any:
    from app.core.load_options import LoadOptions

    return LoadOptions(n_threads=args.threads, n_gpu_layers=args.gpu_layers, flash_attn=args.flash_attn)


def default_output(model: str | Path) -> Path:
    m = Path(model)
    return m.with_name(f"{m.stem}.imatrix.gguf")


def progress_printer(label: str = "imatrix") -> Any:
    def show(p: Any) -> None:
        if sys.stderr.isatty():
            eta = f", about {p.eta:.0f} s left" if p.eta is not None and p.chunk < p.n_chunks else ""
            end = "\n" if p.chunk >= p.n_chunks else ""
            print(f"\r{label}: chunk {p.chunk}/{p.n_chunks}{eta}   ", end=end, file=sys.stderr, flush=True)
    return show


def run(args: argparse.Namespace) -> int:
    from app.core.imatrix import compute_imatrix, read_text_file

    text = dataset = None
    if args.text is not None:
        text, dataset = read_text_file(args.text), str(args.text)
    out = args.out if args.out is not None else default_output(args.model)
    res = compute_imatrix(args.model, out, text=text, dataset=dataset, chunk_size=args.chunk_size,
                          n_chunks=args.chunks, options=options_from_args(args), progress=progress_printer(),
                          use_cache=not args.no_cache)
    how = "from the cache" if res.cached else f"{res.seconds:.1f} s"
    print(f"{res.path}  {res.n_entries} entries  {res.n_chunks} chunks of {res.chunk_size} tokens  {how}")
    return 0
