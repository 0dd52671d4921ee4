"""The installed ``distilldesk`` console script works from any folder (not only via the repo on sys.path)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _script() -> Path:
    return Path(sys.executable).with_name("distilldesk")


def test_console_script_reaches_every_package(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = ("import app.cli, kernels, quantizer, resources; "
            "assert hasattr(quantizer, 'convert') and hasattr(kernels, 'quantize'); print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_quantize_runs_through_the_console_script(tmp_path, smollm2_checkpoint):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = tmp_path / "m.gguf"
    proc = subprocess.run([str(_script()), "quantize", str(smollm2_checkpoint), "--type", "Q8_0", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.is_file() and out.stat().st_size > 100e6
    assert str(out) in proc.stdout
