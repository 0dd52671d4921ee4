"""``distilldesk --self-test [MODEL.gguf | demo]``: check an installation (or a PyInstaller bundle) end to end.

Steps, each named when it fails: open the main window offscreen; with a model (a GGUF, or ``demo``: the demo
model, rebuilt from its package or downloaded once through the app's own Hub download), load it and generate a
few tokens; without one, what needs no model file and no network: make a tiny random model with the bundled
tokenizer, convert it with our quantizer, load it in llama.cpp and generate; then quantize a small tensor with our
kernels and check it against dequantization.  Exit 0 when all pass, else 1 with the failing step named on stderr.
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


DEMO = "demo"


def _resolve_model(model: str) -> Path:
    if model == DEMO:
        return _demo_model()
    p = Path(model)
    if not p.is_file():
        raise FileNotFoundError(f"{p} does not exist")
    return p


def _demo_model() -> Path:
    """The demo's GGUF: the package's own Q4_1, else the downloaded checkpoint converted by our quantizer (into the
    library, where the GUI's demo finds it too)."""
    from app.core.demo import DEMO_NAME, demo_gguf_path, demo_package_installed, download_demo_checkpoint

    if demo_package_installed():
        return demo_gguf_path()
    import quantizer
    from app.core.library import output_path

    out = output_path(DEMO_NAME, "Q4_K_M")
    if not out.exists():
        checkpoint = download_demo_checkpoint()
        out.parent.mkdir(parents=True, exist_ok=True)
        quantizer.convert(checkpoint, out, "Q4_K_M")
    return out


def _generate(path: Path) -> str:
    from app.core import backends
    from app.core.chat_types import SamplingSettings
    from app.core.engine import Engine
    from app.core.load_options import LoadOptions

    # With a GPU device (a GPU module, or a GPU build), generate on it: the GPU path is what needs checking.
    gpu = any(not d.remote and d.kind in ("GPU", "iGPU") for d in backends.list_devices())
    with Engine(path, n_ctx=256, options=LoadOptions(n_gpu_layers=-1 if gpu else 0)) as engine:
        reply = engine.complete("The capital of France is", settings=SamplingSettings(greedy=True, max_tokens=6))
    if reply.stats.generated_tokens < 1:
        raise AssertionError("the model generated no token")
    offload = f", {engine.load_report.summary()}" if gpu else ""
    return (f"{path.name} ({engine.backend}{offload}): {reply.text!r}, "
            f"{reply.stats.decode_tokens_per_s:.0f} tok/s")


def _step_devices() -> str:
    from app.core import backends

    modules = [f"{name}: {reg or 'FAILED to load (see the log with --debug)'}"
               for name, reg in backends.load_gpu_modules().items()]
    devices = "; ".join(d.label() for d in backends.list_devices())
    return devices + (f" [GPU modules: {', '.join(modules)}]" if modules else " [no GPU module: `make gpu`]")


def _step_generate(model: str) -> str:
    return _generate(_resolve_model(model))


def _step_tiny_model() -> str:
    """A random 2-layer Llama with the bundled SmolLM2 tokenizer, converted by our quantizer and run by llama.cpp:
    the whole chain the app uses, with no model file and no network (the text is noise, the tokens are real)."""
    import json
    import tempfile

    import numpy as np
    from safetensors.numpy import save_file

    import quantizer
    from app.core.paths import resources_dir

    tok = resources_dir() / "demo" / "smollm2-135m-instruct"
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
           "max_position_embeddings": 512, "rope_theta": 10000.0, "tie_word_embeddings": True,
           "vocab_size": 49152, "bos_token_id": 1, "eos_token_id": 2}
    rng = np.random.default_rng(0)
    d, ff = cfg["hidden_size"], cfg["intermediate_size"]
    kv = d // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    w = {"model.embed_tokens.weight": rng.standard_normal((cfg["vocab_size"], d)), "model.norm.weight": np.ones(d)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w |= {p + "input_layernorm.weight": np.ones(d), p + "post_attention_layernorm.weight": np.ones(d),
              p + "self_attn.q_proj.weight": rng.standard_normal((d, d)) * 0.1,
              p + "self_attn.k_proj.weight": rng.standard_normal((kv, d)) * 0.1,
              p + "self_attn.v_proj.weight": rng.standard_normal((kv, d)) * 0.1,
              p + "self_attn.o_proj.weight": rng.standard_normal((d, d)) * 0.1,
              p + "mlp.gate_proj.weight": rng.standard_normal((ff, d)) * 0.1,
              p + "mlp.up_proj.weight": rng.standard_normal((ff, d)) * 0.1,
              p + "mlp.down_proj.weight": rng.standard_normal((d, ff)) * 0.1}
    with tempfile.TemporaryDirectory(prefix="distilldesk-selftest-") as tmp:
        folder = Path(tmp) / "tiny-llama"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
        for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            (folder / f).write_bytes((tok / f).read_bytes())
        save_file({k: v.astype(np.float16) for k, v in w.items()}, str(folder / "model.safetensors"))
        res = quantizer.convert(folder, Path(tmp) / "tiny-Q8_0.gguf", "Q8_0", threads=1)
        from app.core.units import format_size

        return f"{format_size(res.n_bytes)} Q8_0 by our quantizer; " + _generate(res.path)


def run_self_test(model: str | None = None) -> int:
    steps: list[tuple[str, Callable[[], str]]] = [("open main window", _step_window),
                                                  ("list devices", _step_devices)]
    if model:
        steps.append(("load model and generate", lambda: _step_generate(model)))
    else:
        steps.append(("convert a tiny model and generate", _step_tiny_model))
    steps.append(("quantize with our kernels", _step_kernels))
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
