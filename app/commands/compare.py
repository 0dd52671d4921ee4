"""``distilldesk compare REF.gguf CAND.gguf --prompt TEXT``: greedy answers side by side + token-level cost."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from app.commands import _args as A
from app.core.compare import DEFAULT_MAX_TOKENS, DEFAULT_N_CTX, CompareResult


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "compare", help="compare a quantized GGUF with its reference on one prompt",
        description="Both models answer the prompt greedily; then the reference's answer is fed through both and "
                    "every token is scored: KL(P_ref || P_cand), top-1 agreement, perplexity of each "
                    "(llama-perplexity --kl-divergence definitions, over the answer tokens).")
    p.add_argument("reference", metavar="REF.gguf", help="reference model (F16/BF16/Q8_0)")
    p.add_argument("candidate", metavar="CAND.gguf", help="candidate model (a quantization of the reference)")
    p.add_argument("--prompt", required=True, type=A.prompt, help="the user message both models answer")
    p.add_argument("--max-tokens", type=A.positive_int, default=DEFAULT_MAX_TOKENS, metavar="N",
                   help=f"most answer tokens per model (default {DEFAULT_MAX_TOKENS})")
    p.add_argument("--ctx", type=A.context_size, default=DEFAULT_N_CTX, metavar="N",
                   help=f"context window in tokens (default {DEFAULT_N_CTX})")
    add_load_arguments(p)
    p.add_argument("--no-cache", action="store_true",
                   help="compute the reference afresh instead of using its stored answer and distributions")
    p.add_argument("--json", action="store_true", help="print the result as JSON (per-token records included)")
    return p


def add_load_arguments(p: argparse.ArgumentParser) -> None:
    """The load settings every model load of compare/eval takes (both phases, every candidate)."""
    from app.core.load_options import FLASH_ATTN_CHOICES, KV_CACHE_TYPES

    from .device_flags import add_device_flags

    p.add_argument("--threads", type=A.threads, default="auto", metavar="N",
                   help="CPU threads (default: the physical cores)")
    add_device_flags(p)                  # --gpu-layers, --device, --worker, --tensor-split
    p.add_argument("--flash-attn", choices=FLASH_ATTN_CHOICES, default="auto",
                   help="flash attention (default auto: on with GPU offload, off on the CPU); figures differ "
                        "slightly with it on, so stored references are never mixed across it")
    p.add_argument("--kv-type", choices=KV_CACHE_TYPES, default="f16",
                   help="KV cache type (default f16; q8_0 halves its memory for long reasoning, needs flash "
                        "attention)")


def options_from_args(args: argparse.Namespace) -> Any:
    from app.core.load_options import LoadOptions

    from .device_flags import device_fields

    return LoadOptions(n_threads=args.threads, flash_attn=args.flash_attn, kv_cache_type=args.kv_type,
                       **device_fields(args))


def _stream(title: str) -> Any:
    started = [False]

    def show(text: str) -> None:
        if not started[0]:
            print(f"\n=== {title} ===", flush=True)
            started[0] = True
        sys.stdout.write(text)
        sys.stdout.flush()

    return show


def _progress(p: Any) -> None:
    """Phase, stage and ETA on stderr (a terminal only; the answers stream on stdout)."""
    if not sys.stderr.isatty() or "answer" in p.stage:
        return
    eta = f", about {p.eta_s:.0f} s left" if p.eta_s is not None and p.done < p.total else ""
    end = "\n" if p.done >= p.total else ""
    print(f"\r{p.phase}: {p.stage} {p.done}/{p.total}{eta}   ", end=end, file=sys.stderr, flush=True)


def format_summary(r: CompareResult) -> str:
    s = r.summary
    if r.first_divergence is None:
        div = "the greedy answers are identical"
    else:
        common = "".join(t.text for t in r.tokens[:r.first_divergence])
        tail = common[-40:].replace("\n", "\\n")
        div = f"the answers diverge at answer token {r.first_divergence} (after \"{tail}\")"
    stored = " (stored answer and distributions, computed earlier: --no-cache recomputes)" \
        if r.reference_cached else ""
    lines = [f"\n\nreference: {r.reference.file_type} {r.reference.bits_per_weight:.2f} bpw  {r.reference.path}"
             f"{stored}",
             f"candidate: {r.candidate.file_type} {r.candidate.bits_per_weight:.2f} bpw  {r.candidate.path}", div]
    if s.n_tokens:
        lines += [f"scored {s.n_tokens} reference answer tokens:",
                  f"  KL divergence  mean {s.mean_kld:.6f}  median {s.median_kld:.6f}  p99 {s.p99_kld:.6f}  "
                  f"max {s.max_kld:.6f}",
                  f"  top-1 agreement {100 * s.top1_agreement:.2f} %   top-5 overlap {100 * s.top5_overlap:.2f} %",
                  f"  perplexity     reference {s.ppl_reference:.4f}  candidate {s.ppl_candidate:.4f}"]
    lines += [f"warning: {w}" for w in r.warnings]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from app.core.compare import compare

    kw: dict[str, Any] = {}
    if not args.json:
        kw = dict(on_reference_text=_stream("reference answer"), on_candidate_text=_stream("candidate answer"))
    result = compare(args.reference, args.candidate, args.prompt, max_tokens=args.max_tokens, n_ctx=args.ctx,
                     options=options_from_args(args), use_cache=not args.no_cache, progress=_progress, **kw)
    if args.json:
        print(result.to_json(indent=1))
    else:
        print(format_summary(result))
    return 0
