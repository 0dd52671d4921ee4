"""``distilldesk models [--json] [--catalog]``: what is on disk, or what can be downloaded.

Default: the checkpoints in the Hugging Face cache (and the demo) and the GGUFs made from them, with size, type,
bits per weight and which one is the reference.  ``--catalog``: the distilled models DistillDesk knows, with
parameters, license and the predicted size / RAM of the common recipes.  Never touches the network.
"""
from __future__ import annotations

import argparse
import json
import sys

from app.core.units import format_params, format_size

_CATALOG_RECIPES = ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("models", help="list local checkpoints and GGUFs (or --catalog)",
                              description="List the checkpoints in the Hugging Face cache and the GGUF models "
                                          "made from them, with size and type.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--catalog", action="store_true",
                   help="list the downloadable distilled models with predicted sizes and RAM instead")
    return p



def run(args: argparse.Namespace) -> int:
    return _catalog(args.json) if args.catalog else _local(args.json)


def _local(as_json: bool) -> int:
    from app.core import library
    from app.core.hub import hub_cache_dir, is_offline
    from app.core.paths import models_dir
    from app.core.unfinished import unfinished_outputs

    groups = library.scan()
    unfinished = unfinished_outputs()
    if as_json:
        print(json.dumps([_group_json(g) for g in groups], indent=2))
        return 0
    _print_unfinished(unfinished)
    if is_offline():
        print("offline mode (HF_HUB_OFFLINE=1): listing what is on this machine", file=sys.stderr)
    if not groups:
        print(f"no models yet: `distilldesk download REPO_ID` fetches one into {hub_cache_dir()}, "
              f"`distilldesk models --catalog` lists the distilled models")
        return 0
    print(f"checkpoints: {hub_cache_dir()}    GGUFs: {models_dir()}")
    for g in groups:
        print(g.name)
        ck = g.checkpoint
        if ck is not None:
            state = "" if ck.complete else (f"  INCOMPLETE ({format_size(ck.partial_bytes)} partial): run `distilldesk "
                                            f"download {ck.repo_id}` to resume")
            refs = ",".join(ck.refs) or ck.commit[:12] or "folder"
            print(f"  checkpoint  {format_size(ck.size_bytes):>11s}  {ck.architecture or '?':20s} "
                  f"{ck.repo_id or 'demo'} ({refs}){state}")
            print(f"              {ck.path}")
        ref = g.reference()
        for e in g.ggufs:
            if not e.ok:
                print(f"  {e.file_type:10s}  {format_size(e.size_bytes):>11s}  UNREADABLE: {e.error}  {e.path}")
                continue
            mark = "reference" if ref is not None and e.path == ref.path else ""
            print(f"  {e.file_type:10s}  {format_size(e.size_bytes):>11s}  {e.bpw:5.2f} bpw  {mark:9s}  {e.path}")
    return 0


def _print_unfinished(files: list) -> None:
    for f in files:
        what = ("left by a conversion that was killed; the next quantize into that folder removes it" if f.stale
                else "a conversion in progress")
        print(f"unfinished  {format_size(f.size_bytes):>11s}  {f.output_name}: {what}  {f.path}")


def _group_json(g) -> dict:  # noqa: ANN001 - library.ModelGroup
    ref = g.reference()
    ck = g.checkpoint
    return {"name": g.name,
            "checkpoint": None if ck is None else {
                "repo_id": ck.repo_id, "path": str(ck.path), "size_bytes": ck.size_bytes, "commit": ck.commit,
                "refs": list(ck.refs), "architecture": ck.architecture, "complete": ck.complete,
                "partial_bytes": ck.partial_bytes},
            "ggufs": [{"path": str(e.path), "type": e.file_type, "size_bytes": e.size_bytes,
                       "bits_per_weight": round(e.bpw, 4), "n_params": e.n_params, "error": e.error,
                       "reference": ref is not None and e.path == ref.path} for e in g.ggufs]}


def _catalog(as_json: bool) -> int:
    from app.core.catalog import DEFAULT_N_CTX, load_catalog

    models = load_catalog()
    if as_json:
        print(json.dumps([{"repo_id": m.repo_id, "name": m.name, "n_params": m.n_params, "license": m.license,
                           "license_note": m.license_note, "architecture": m.architecture,
                           "recipes": {e.recipe: {"size_bytes": e.size_bytes, "bits_per_weight": e.bits_per_weight,
                                                  "ram_bytes": e.ram_bytes} for e in m.estimates()}}
                          for m in models], indent=2))
        return 0
    print(f"size / RAM to chat at {DEFAULT_N_CTX} tokens of context, predicted from the quantizer's recipes")
    for m in models:
        print(f"{m.repo_id}  ({format_params(m.n_params)} params, {m.architecture}, {m.license})")
        print(f"  {m.license_note}")
        est = {e.recipe: e for e in m.estimates()}
        print("  " + "  ".join(f"{r} {format_size(est[r].size_bytes)}/{format_size(est[r].ram_bytes)}"
                               for r in _CATALOG_RECIPES))
    return 0
