"""``distilldesk download REPO_ID [--revision R] [--files] [--verify]`` and ``distilldesk download --search TEXT``.

Fetches what conversion needs (config, tokenizer, safetensors) into the standard Hugging Face cache with a
total and a per-file progress bar, then prints the snapshot folder (pass it, or the repo id, to
``distilldesk quantize``).  An interrupted download (Ctrl-C, a cut connection, a killed process) resumes where
it stopped when run again.  Offline, a repo already in the cache is reported as such and its folder printed.
"""
from __future__ import annotations

import argparse
import sys

from app.core.units import format_params, format_size


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("download", help="download a model from the Hugging Face Hub",
                              description="Download the files DistillDesk needs to convert a model (config, "
                                          "tokenizer, *.safetensors) into the Hugging Face cache. Resumes "
                                          "interrupted downloads. Token: HF_TOKEN or `hf auth login`.")
    p.add_argument("repo_id", nargs="?", metavar="REPO_ID",
                   help="e.g. deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B (or a catalog name)")
    p.add_argument("--revision", "-r", default=None, help="branch, tag or commit (default: main)")
    p.add_argument("--files", action="store_true", help="list the repo's files with sizes and exit")
    p.add_argument("--verify", action="store_true", help="also re-check the sha256 of files already cached")
    p.add_argument("--search", metavar="TEXT", default=None,
                   help="search the Hub for convertible models (Qwen2/Qwen3/Llama) and exit")
    return p



def _search(text: str) -> int:
    from app.core.hub import search_models

    models = search_models(text)
    if not models:
        print(f"no convertible model matches {text!r}", file=sys.stderr)
        return 1
    for m in models:
        params = format_params(m.n_params) if m.n_params else "?"
        print(f"{m.repo_id:60s} {m.architecture:20s} {params:>8s} {m.downloads:>10d} downloads"
              f"{'  (gated)' if m.gated else ''}")
    return 0


def _files(repo_id: str, revision: str | None) -> int:
    from app.core.hub import list_files

    listing = list_files(repo_id, revision=revision)
    if listing.message:
        print(listing.message, file=sys.stderr)
    for f in listing.files:
        print(f"{'+' if f.needed else ' '} {format_size(f.size):>12s}  {f.path}")
    print(f"{listing.repo_id} @ {listing.commit[:12]}: {len(listing.files)} files; '+' = downloaded "
          f"({format_size(listing.needed_bytes)})")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.search is not None:
        return _search(args.search)
    if not args.repo_id:
        print("distilldesk: error: give a REPO_ID (or --search TEXT)", file=sys.stderr)
        return 2
    from app.core.catalog import find

    repo_id = find(args.repo_id).repo_id if find(args.repo_id) else args.repo_id
    if args.files:
        return _files(repo_id, args.revision)
    return _download(repo_id, args)


def _download(repo_id: str, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from app.core.hub import DownloadProgress, download

    bars: dict[str, tqdm] = {}
    current = {"file": None}

    def progress(p: DownloadProgress) -> None:
        if "total" not in bars:
            bars["total"] = tqdm(total=p.total, unit="B", unit_scale=True, desc=repo_id.split("/")[-1],
                                 file=sys.stderr, disable=None, position=0)
        total = bars["total"]
        total.total = p.total
        total.update(p.done - total.n)
        if p.file != current["file"]:
            if "file" in bars:
                bars.pop("file").close()
            current["file"] = p.file
            bars["file"] = tqdm(total=p.file_total, unit="B", unit_scale=True, desc=p.file[-40:],
                                file=sys.stderr, disable=None, position=1, leave=False)
        bars["file"].update(p.file_done - bars["file"].n)

    try:
        res = download(repo_id, revision=args.revision, progress=progress, verify_cached=args.verify)
    finally:
        for b in bars.values():
            b.close()
    if res.offline:
        print(res.message, file=sys.stderr)
    else:
        print(f"{repo_id}: {len(res.files)} files, {format_size(res.bytes_total)} ({format_size(res.bytes_fetched)} "
              f"downloaded now)", file=sys.stderr)
    print(res.path)
    return 0
