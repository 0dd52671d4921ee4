"""``distilldesk --self-test [MODEL.gguf]``: check an installation (or a PyInstaller bundle) end to end.

Steps, each named when it fails: open the main window offscreen, load a GGUF (the one given, else the demo
model), generate a few tokens, quantize a small tensor with our kernels and check it against dequantization.
Exit 0 when all pass, else 1 with the failing step named on stderr.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path


def _step_kernels() -> str:
    import numpy as np

    import kernels

    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 512)).astype(np.float32)
    worst = []
    for qtype, tol in (("Q8_0", 0.01), ("Q6_K", 0.03), ("Q4_K", 0.12)):
        q = kernels.quantize(x, qtype, threads=1)
        y = kernels.dequantize(q, qtype, x.shape)
        rel = float(np.sqrt(np.mean((x - y) ** 2)) / np.sqrt(np.mean(x * x)))
        if not rel < tol:
            raise AssertionError(f"{qtype} round-trip relative RMS error {rel:.4f} >= {tol}")
        worst.append(f"{qtype} {rel:.4f}")
    return "relative RMS error " + ", ".join(worst)


def _step_window() -> str:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication

    from app.ui.main import create_main_window

    app = QApplication.instance() or QApplication([])
    win = create_main_window()
    win.show()
    app.processEvents()
    title = win.windowTitle()
    win.close()
    app.processEvents()
    return f"window '{title}' opened ({os.environ['QT_QPA_PLATFORM']})"


def _resolve_model(model: str | None) -> Path:
    if model:
        p = Path(model)
        if not p.is_file():
            raise FileNotFoundError(f"{p} does not exist")
        return p
    from app.core.demo import demo_gguf_path

    return demo_gguf_path()


def _step_generate(model: str | None) -> str:
    from app.core.chat_types import SamplingSettings
    from app.core.engine import Engine

    path = _resolve_model(model)
    with Engine(path, n_ctx=256) as engine:
        reply = engine.complete("The capital of France is", settings=SamplingSettings(greedy=True, max_tokens=6))
    if reply.stats.generated_tokens < 1:
        raise AssertionError("the model generated no token")
    return f"{path.name} ({engine.backend}): {reply.text!r}, {reply.stats.decode_tokens_per_s:.0f} tok/s"


def run_self_test(model: str | None = None) -> int:
    steps: list[tuple[str, Callable[[], str]]] = [
        ("open main window", _step_window),
        ("load model and generate", lambda: _step_generate(model)),
        ("quantize with our kernels", _step_kernels),
    ]
    for name, fn in steps:
        t0 = time.perf_counter()
        try:
            detail = fn()
        except Exception as e:  # noqa: BLE001 - the point is to name any failure
            print(f"self-test: FAILED at step '{name}': {type(e).__name__}: {e}", file=sys.stderr)
            if os.environ.get("DISTILLDESK_DEBUG"):
                traceback.print_exc()
            return 1
        print(f"self-test: ok   {name} ({time.perf_counter() - t0:.1f}s): {detail}")
    print("self-test: all steps passed")
    return 0
