"""The one check of an offloaded load (Vulkan, RPC workers) against the CPU: the same greedy tokens and nearly the
same logits.  Used by tests/app/test_vulkan.py and tests/app/test_rpc.py and by benchmarks/bench_engine.py."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PROMPT = "<|im_start|>user\nWhat is the capital of France? Answer in one sentence.<|im_end|>\n<|im_start|>assistant\n"
N_GREEDY = 8
# Tolerances, measured on SmolLM2-135M on lavapipe (flash attention on or off alike): Q4_K_M mean KL 6.7e-3,
# max |logit difference| 1.77, top-1 agreement 96% of the teacher-forced rows; Q8_0 2.8e-3, 1.12, 100%.  The CPU
# quantizes activations to 8 bits for its quantized dot products (q8_K / q8_0), Vulkan shaders without integer dot
# products (lavapipe) multiply float activations, and a 135M model's logits are large (~15): differences of that
# order.  The greedy tokens must be identical; RPC workers run the CPU backend and must match exactly.
MAX_MEAN_KL = 1e-2
MAX_ABS_LOGIT = 2.5
MIN_TOP1 = 0.95


@dataclass
class Run:
    tokens: list[int]          # the first N_GREEDY greedy tokens
    logits: np.ndarray         # teacher-forced logits at every position of prompt + tokens (float32 rows)
    backend: str
    report: object


def greedy_run(model: Path, options, n: int = N_GREEDY) -> Run:
    """Load ``model`` with ``options`` (LoadOptions), take ``n`` greedy tokens after PROMPT, then the logits of
    the whole sequence, teacher-forced (app.core.logits.LogitSource: the path compare and eval use)."""
    from app.core.engine import Engine
    from app.core.logits import LogitSource

    with Engine(model, n_ctx=512, options=options) as eng:
        prompt = eng.tokenize(PROMPT)
        tokens: list[int] = []
        for tok in eng.llama.generate(prompt, temp=0.0, top_k=1, reset=True):
            tokens.append(int(tok))
            if len(tokens) == n:
                break
        with LogitSource(eng.llama) as src:
            logits = np.concatenate([rows.copy() for _, rows in src.rows(prompt + tokens)])
        return Run(tokens, logits, eng.backend, eng.load_report)


def logit_gap(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(mean KL(a || b) over the rows, max |a - b|) of two logit arrays."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    la = a64 - a64.max(1, keepdims=True)
    la -= np.log(np.exp(la).sum(1, keepdims=True))
    lb = b64 - b64.max(1, keepdims=True)
    lb -= np.log(np.exp(lb).sum(1, keepdims=True))
    kl = (np.exp(la) * (la - lb)).sum(1)
    return float(kl.mean()), float(np.abs(a64 - b64).max())


def assert_matches_cpu(cpu: Run, other: Run) -> None:
    assert other.tokens == cpu.tokens, f"{other.backend}'s greedy tokens {other.tokens} differ from the CPU's " \
        f"{cpu.tokens}"
    kl, gap = logit_gap(cpu.logits, other.logits)
    assert kl < MAX_MEAN_KL and gap < MAX_ABS_LOGIT, f"{other.backend}: mean KL {kl:.2e}, max |dlogit| {gap:.3f}"
    assert (cpu.logits.argmax(1) == other.logits.argmax(1)).mean() >= MIN_TOP1


def require_vulkan():
    """The first Vulkan device; in CI (``CI`` set) a failure when there is none, elsewhere a skip whose reason
    starts with tests.conftest.GPU_SKIP_MARK (the run's summary then says the GPU tests were not run)."""
    import pytest

    from app.core import backends
    from tests.conftest import GPU_SKIP_MARK

    devices = [d for d in backends.list_devices() if d.backend == "Vulkan"]
    if devices:
        return devices[0]
    if not any("vulkan" in p.name for p in backends.gpu_module_files()):
        why = "no Vulkan backend module is installed (build it with `make gpu GPU=vulkan`)"
    else:
        why = "the Vulkan module finds no device (install a driver, e.g. Debian's mesa-vulkan-drivers)"
    if os.environ.get("CI"):
        pytest.fail(f"the GPU tests are required in CI: {why}")
    pytest.skip(f"{GPU_SKIP_MARK}: {why}")
