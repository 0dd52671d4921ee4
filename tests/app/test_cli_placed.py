"""``distilldesk quantize --type Q3_K_D``: the plan (which tensors got which type, and why) is printed before any
quantizing, the GGUF has exactly the planned types at Q3_K_M's size, and stock llama.cpp loads it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(1200)
def test_quantize_q3_k_d_prints_the_plan_first(smollm2_checkpoint, smollm2_gguf, tmp_path):
    import llama_cpp

    from app.core.imatrix import compute_imatrix
    from app.core.load_options import LoadOptions
    from tests.quantizer.test_recipes import read_gguf

    im = compute_imatrix(smollm2_gguf("Q8_0"), tmp_path / "im.gguf", chunk_size=128, n_chunks=2,
                         options=LoadOptions(n_threads=2, flash_attn="off"), use_cache=False).path
    out = tmp_path / "d.gguf"
    r = subprocess.run([sys.executable, "-m", "app.cli", "quantize", str(smollm2_checkpoint), "--type", "Q3_K_D",
                        "--imatrix", str(im), "--threads", "2", "-o", str(out)], cwd=ROOT, env=dict(os.environ),
                       capture_output=True, text=True, timeout=1100)
    assert r.returncode == 0, r.stderr[-3000:]
    err = r.stderr
    assert "Q3_K_D: Q3_K_M's file type" in err and "sensitivity placement" in err and "weights measured" in err
    assert err.index("sensitivity placement") < err.index("Q3_K_M: predicted")  # plan first, then the work
    _, got, data_bytes = read_gguf(out)
    q3km = read_gguf(smollm2_gguf("Q3_K_M"))
    assert abs(data_bytes - q3km[2]) <= 0.01 * q3km[2]  # Q3_K_M's size
    assert {n: t for n, (t, _) in got.items()} != {n: t for n, (t, _) in q3km[1].items()}  # placed differently
    llm = llama_cpp.Llama(str(out), n_ctx=64, verbose=False)
    assert llm.create_completion("Hello", max_tokens=2)["usage"]["completion_tokens"] >= 1
    llm.close()
