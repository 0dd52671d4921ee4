"""``distilldesk quantize`` as a user runs it (app.cli.main) on the real SmolLM2 checkpoint: the plan is printed
before any work and agrees with the GGUF that gets made; a failed or interrupted run leaves no empty
``models/<name>/`` folder behind."""
from __future__ import annotations

import re

import pytest

import quantizer
from app.cli import main
from app.core import library, paths
from app.core.checkpoint_plan import plan_checkpoint
from app.core.gguf_header import read_header
from quantizer.checkpoint import model_name

LEGACY = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "F16"}   # what a k-quant falls back to


@pytest.mark.parametrize("recipe", ["Q4_K_M", "Q2_K", "Q8_0"])
def test_the_plan_agrees_with_the_gguf_our_quantizer_makes(smollm2_checkpoint, smollm2_gguf, recipe):
    from gguf import GGUFReader

    from app.core.checkpoint_plan import checkpoint_tensors

    tensors = checkpoint_tensors(smollm2_checkpoint).tensors
    plan = plan_checkpoint(smollm2_checkpoint, recipe)
    h = read_header(smollm2_gguf(recipe))
    assert plan.n_tensors == h.n_tensors == 272
    assert plan.bits_per_weight == pytest.approx(h.bits_per_weight, rel=1e-12)
    assert 0 <= plan.tensor_bytes - (h.data_end - h.data_offset) < 32          # the last tensor's padding
    assert plan.size_bytes == pytest.approx(h.file_size, rel=0.002)            # the header is estimated
    # k-quant recipes: every matrix stored in a legacy type fell back, except the tied embedding (llama.cpp's
    # output rule picks Q8_0 for it outright: not counted in its n_fallback either)
    types = {t.name: t.tensor_type.name for t in GGUFReader(smollm2_gguf(recipe)).tensors}
    legacy = 0 if recipe == "Q8_0" else sum(len(t.shape) == 2 and types[t.name] in LEGACY
                                             and t.name != "token_embd.weight" for t in tensors)
    assert plan.n_fallback == legacy and (legacy > 100 or recipe == "Q8_0")
    summary = plan.summary()
    name = model_name(smollm2_checkpoint)  # the checkpoint's name (the GGUF's general.name is the converter's)
    assert summary.startswith(f"{name} -> {recipe}: predicted {plan.size_bytes / 1e6:.1f} MB, "
                              f"{h.bits_per_weight:.2f} bits per weight, 272 tensors")
    assert summary.endswith(f" ({legacy} fall back from k-quants: rows not a multiple of 256)" if legacy
                            else "272 tensors")


def test_the_plan_is_printed_before_converting(smollm2_checkpoint, capsys, monkeypatch):
    seen: list[str] = []
    real = quantizer.convert

    def convert(*a, **kw):                      # what stderr holds when the conversion starts
        seen.append(capsys.readouterr().err)
        return real(*a, **kw)

    monkeypatch.setattr(quantizer, "convert", convert)
    assert main(["quantize", str(smollm2_checkpoint), "--type", "Q8_0"]) == 0
    out, err = capsys.readouterr()
    name = smollm2_checkpoint.name
    assert re.fullmatch(rf"{name} -> Q8_0: predicted 144\.\d MB, 8\.5\d bits per weight, 272 tensors\n", seen[0])
    made = library.output_path(name, "Q8_0")
    assert out.startswith(f"{made}  ") and read_header(made).n_tensors == 272


def _folders() -> set[str]:
    return {p.name for p in paths.models_dir().iterdir()}


def test_a_failed_quantize_leaves_no_empty_model_folder(smollm2_checkpoint, tmp_path, capsys, monkeypatch):
    import importlib

    name = smollm2_checkpoint.name
    before = _folders()
    # a checkpoint that cannot be converted: refused by the plan, before any folder is made
    broken = tmp_path / "broken-checkpoint"
    broken.mkdir()
    for f in smollm2_checkpoint.iterdir():
        if f.name != "config.json":
            (broken / f.name).symlink_to(f)
    assert main(["quantize", str(broken), "--type", "Q8_0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config.json" in err and _folders() == before
    # the disk is full: convert finds it after the plan, and the folder made for the output goes again
    conv = importlib.import_module("quantizer.convert")
    with monkeypatch.context() as m:
        m.setattr(conv.shutil, "disk_usage", lambda p: type("U", (), {"free": 1 << 20})())
        assert main(["quantize", str(smollm2_checkpoint), "--type", "Q8_0"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith(f"{name} -> Q8_0: predicted") and "free some space" in lines[1] and len(lines) == 2
    assert _folders() == before
    # Ctrl-C in the middle of the conversion: the same
    real = quantizer.convert

    def interrupted(*a, progress=None, **kw):
        def stop(p):
            progress(p)
            if p.index == 3:
                raise KeyboardInterrupt

        return real(*a, progress=stop, **kw)

    with monkeypatch.context() as m:
        m.setattr(quantizer, "convert", interrupted)
        assert main(["quantize", str(smollm2_checkpoint), "--type", "Q8_0"]) == 130
        assert _folders() == before
        # a folder that was already there (holding another GGUF) is kept, with what it holds
        other = library.output_path(name, "F16")
        other.parent.mkdir()
        other.write_bytes(b"another job's file")
        assert main(["quantize", str(smollm2_checkpoint), "--type", "Q8_0"]) == 130
    assert [p.name for p in other.parent.iterdir()] == [other.name]
