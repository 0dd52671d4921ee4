"""The PyInstaller bundle builds, stays under its size goal, and passes its own --self-test on the real model.

Slow (a few minutes on 2 cores); CI runs it.  The bundle is built into a temporary folder, never into the repo.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bundle_builds_and_self_tests(tmp_path, smollm2_gguf):
    model = smollm2_gguf("Q8_0")
    proc = subprocess.run([sys.executable, str(ROOT / "packaging" / "build.py"), "--dist", str(tmp_path / "dist"),
                           "--work", str(tmp_path / "work")], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = re.search(r"size: ([\d.]+) MB", proc.stdout)
    assert m, proc.stdout
    assert float(m.group(1)) < 200, proc.stdout
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
    # A broken input names the failing step and exits non-zero.
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    run = subprocess.run([str(exe), "--self-test", str(bad)], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode != 0
    assert "FAILED at step 'load model and generate'" in run.stderr
