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
