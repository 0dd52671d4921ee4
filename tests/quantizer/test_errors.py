"""Every bad input of the quantizer: a typed error whose message says what to do, exit code 2 from the CLI, and
no output (nor temporary file) left behind.  Run through ``app.cli.main`` as a user would."""
from __future__ import annotations

import importlib
import json
import threading
from pathlib import Path

import numpy as np
import pytest

import quantizer
from app.cli import main
from quantizer import errors as E

from . import tiny_models as tm


@pytest.fixture(scope="module")
def base_weights():
    cfg = tm.make_config("llama", 49152)
    return cfg, tm.make_weights(cfg)


@pytest.fixture
def ckpt(tmp_path, base_weights) -> Path:
    cfg, w = base_weights
    return tm.write_checkpoint(tmp_path / "ckpt", cfg, w, dtype=np.float16, tokenizer=tm.SMOL_TOKENIZER)


def _run(capsys, src, out: Path, *extra: str) -> tuple[int, str]:
    code = main(["quantize", str(src), "--type", "F16", "--out", str(out), *extra])
    return code, capsys.readouterr().err


def _nothing_left(folder: Path, before: set[str]) -> bool:
    return {p.name for p in folder.iterdir()} == before


def _expect(capsys, tmp_path, src, exc: type, *words: str, out: Path | None = None, extra: tuple = ()) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir(exist_ok=True)
    out = out or out_dir / "m.gguf"
    before = {p.name for p in out_dir.iterdir()}
    code, err = _run(capsys, src, out, *extra)
    assert code == 2, err
    *plan, last = err.splitlines()  # the error: one line, the last, no traceback; before it at most the plan
    assert last.startswith("distilldesk: error: ") and err.endswith("\n")
    assert len(plan) <= 1 and all(" -> F16: predicted " in line for line in plan), err
    err = last
    for w in words:
        assert w in err, (w, err)
    assert _nothing_left(out_dir, before)
    with pytest.raises(exc):  # the same input, through the library: the typed error
        quantizer.convert(src, out, "F16", pre_tokenizer=dict(zip(extra[::2], extra[1::2], strict=True)).get(
            "--pre-tokenizer"))
    assert _nothing_left(out_dir, before)


def _patch_header(path: Path, edit) -> None:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    edit(header)
    new = json.dumps(header, separators=(",", ":")).encode()
    new += b" " * (n - len(new))
    assert len(new) == n
    path.write_bytes(raw[:8] + new + raw[8 + n:])


def test_missing_config(capsys, tmp_path, ckpt):
    (ckpt / "config.json").unlink()
    _expect(capsys, tmp_path, ckpt, E.MissingFileError, "config.json", "download")


def test_missing_weights(capsys, tmp_path, ckpt):
    (ckpt / "model.safetensors").unlink()
    _expect(capsys, tmp_path, ckpt, E.MissingFileError, "safetensors", "download")


def test_missing_tokenizer(capsys, tmp_path, ckpt):
    (ckpt / "tokenizer.json").unlink()
    _expect(capsys, tmp_path, ckpt, E.MissingFileError, "tokenizer.json", "download")


def test_missing_shard(capsys, tmp_path, base_weights):
    cfg, w = base_weights
    ckpt = tm.write_checkpoint(tmp_path / "sharded", cfg, w, dtype=np.float16, tokenizer=tm.SMOL_TOKENIZER, shards=3)
    (ckpt / "model-00002-of-00003.safetensors").unlink()
    _expect(capsys, tmp_path, ckpt, E.MissingFileError, "model-00002-of-00003.safetensors", "download")


def test_truncated_safetensors(capsys, tmp_path, ckpt):
    f = ckpt / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    _expect(capsys, tmp_path, ckpt, E.CorruptCheckpointError, "truncated", "download")


def test_header_length_past_end(capsys, tmp_path, ckpt):
    f = ckpt / "model.safetensors"
    raw = f.read_bytes()
    f.write_bytes((len(raw) * 2).to_bytes(8, "little") + raw[8:])
    _expect(capsys, tmp_path, ckpt, E.CorruptCheckpointError, "header claims", "download")


def test_header_bad_json(capsys, tmp_path, ckpt):
    f = ckpt / "model.safetensors"
    raw = bytearray(f.read_bytes())
    raw[8:12] = b"!!!!"
    f.write_bytes(bytes(raw))
    _expect(capsys, tmp_path, ckpt, E.CorruptCheckpointError, "not valid JSON", "download")


def test_offsets_out_of_range(capsys, tmp_path, ckpt):
    def edit(h):
        h["model.norm.weight"]["data_offsets"] = [10**12, 10**12 + 128]
    _patch_header(ckpt / "model.safetensors", edit)
    _expect(capsys, tmp_path, ckpt, E.CorruptCheckpointError, "model.norm.weight", "outside", "download")


def test_shape_contradicts_config(capsys, tmp_path, ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["intermediate_size"] = 128
    (ckpt / "config.json").write_text(json.dumps(cfg))
    _expect(capsys, tmp_path, ckpt, E.ShapeMismatchError, "mlp.down_proj.weight", "[64, 96]", "[64, 128]")


def test_layer_count_contradicts_config(capsys, tmp_path, ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (ckpt / "config.json").write_text(json.dumps(cfg))
    _expect(capsys, tmp_path, ckpt, E.ShapeMismatchError, "model.layers.2.", "missing")


def test_unknown_architecture_lists_the_supported(capsys, tmp_path, ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["architectures"] = ["GPTNeoXForCausalLM"]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    _expect(capsys, tmp_path, ckpt, E.UnsupportedArchitectureError, "GPTNeoXForCausalLM", "LlamaForCausalLM",
            "Qwen2ForCausalLM", "Qwen3ForCausalLM")


def test_nan_weights_name_the_tensor(capsys, tmp_path, base_weights):
    cfg, w = base_weights
    bad = dict(w)
    bad["model.layers.1.mlp.up_proj.weight"] = w["model.layers.1.mlp.up_proj.weight"].copy()
    bad["model.layers.1.mlp.up_proj.weight"][3, 5] = np.nan
    ckpt = tm.write_checkpoint(tmp_path / "nan", cfg, bad, dtype=np.float16, tokenizer=tm.SMOL_TOKENIZER)
    _expect(capsys, tmp_path, ckpt, E.NonFiniteWeightsError, "model.layers.1.mlp.up_proj.weight", "NaN")


def test_inf_weights_name_the_tensor(capsys, tmp_path, base_weights):
    cfg, w = base_weights
    bad = dict(w, **{"model.norm.weight": np.full(64, np.inf, np.float32)})
    ckpt = tm.write_checkpoint(tmp_path / "inf", cfg, bad, dtype=np.float16, tokenizer=tm.SMOL_TOKENIZER)
    _expect(capsys, tmp_path, ckpt, E.NonFiniteWeightsError, "model.norm.weight", "Inf")


def test_pickle_checkpoint_refused(capsys, tmp_path, ckpt):
    (ckpt / "model.safetensors").rename(ckpt / "pytorch_model.bin")
    _expect(capsys, tmp_path, ckpt, E.PickleCheckpointError, "pickle", "safetensors")


def test_output_equal_to_an_input(capsys, tmp_path, ckpt):
    target = ckpt / "model.safetensors"
    before = target.read_bytes()
    code, err = _run(capsys, ckpt, target)
    assert code == 2 and "own files" in err and "choose another" in err
    assert target.read_bytes() == before
    assert sorted(p.name for p in ckpt.iterdir() if p.name.endswith(".partial")) == []
    with pytest.raises(E.OutputIsInputError):
        quantizer.convert(ckpt, ckpt / "config.json", "F16")


def test_output_folder_missing(capsys, tmp_path, ckpt):
    _expect(capsys, tmp_path, ckpt, E.OutputNotWritableError, "does not exist",
            out=tmp_path / "no" / "such" / "m.gguf")


def test_output_folder_is_a_file(capsys, tmp_path, ckpt):
    (tmp_path / "afile").write_text("x")
    _expect(capsys, tmp_path, ckpt, E.OutputNotWritableError, "does not exist", out=tmp_path / "afile" / "m.gguf")


def test_output_folder_not_writable(capsys, tmp_path, ckpt, monkeypatch):
    conv = importlib.import_module("quantizer.convert")  # the module (quantizer.convert is the function)
    ro = tmp_path / "out"
    ro.mkdir()
    real_access = conv.os.access
    monkeypatch.setattr(conv.os, "access", lambda p, mode: False if Path(p) == ro else real_access(p, mode))
    _expect(capsys, tmp_path, ckpt, E.OutputNotWritableError, "not writable", "choose")


def test_not_enough_disk(capsys, tmp_path, ckpt, monkeypatch):
    import shutil

    conv = importlib.import_module("quantizer.convert")  # the module (quantizer.convert is the function)
    real = shutil.disk_usage
    monkeypatch.setattr(conv.shutil, "disk_usage", lambda p: real(p)._replace(free=1024 * 1024))
    _expect(capsys, tmp_path, ckpt, E.NotEnoughDiskError, "GiB", "free some space")


def test_unknown_recipe(capsys, tmp_path, ckpt):
    code = main(["quantize", str(ckpt), "--type", "Q4_K_XL", "--out", str(tmp_path / "m.gguf")])
    err = capsys.readouterr().err
    assert code == 2 and "Q4_K_XL" in err and "Q4_K_M" in err
    assert not (tmp_path / "m.gguf").exists()


def test_unknown_pre_tokenizer_refused_then_overridden(capsys, tmp_path, ckpt):
    tj = json.loads((ckpt / "tokenizer.json").read_text())
    tj["pre_tokenizer"]["pretokenizers"].insert(0, {  # a pre-tokenizer no model has: split around every "e"
        "type": "Split", "pattern": {"String": "e"}, "behavior": "Isolated", "invert": False})
    (ckpt / "tokenizer.json").write_text(json.dumps(tj))
    _expect(capsys, tmp_path, ckpt, E.UnknownPreTokenizerError, "hash", "--pre-tokenizer")
    _expect(capsys, tmp_path, ckpt, E.UnknownPreTokenizerError, "no-such-thing", "smollm",
            extra=("--pre-tokenizer", "no-such-thing"))
    code, _ = _run(capsys, ckpt, tmp_path / "ok.gguf", "--pre-tokenizer", "smollm")
    assert code == 0 and (tmp_path / "ok.gguf").exists()


def test_source_not_found(capsys, tmp_path):
    _expect(capsys, tmp_path, tmp_path / "nowhere", E.CheckpointNotFoundError, "does not exist")
    _expect(capsys, tmp_path, "someone/not-downloaded", E.CheckpointNotFoundError, "not in the local",
            "distilldesk download")


def test_cancel_leaves_nothing(tmp_path, ckpt):
    cancel = threading.Event()

    def progress(p):
        if p.index == 5:
            cancel.set()

    with pytest.raises(E.ConversionCancelled):
        quantizer.convert(ckpt, tmp_path / "m.gguf", "F16", progress=progress, cancel=cancel)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_ctrl_c_leaves_nothing(capsys, tmp_path, ckpt):
    def progress(p):
        if p.index == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        quantizer.convert(ckpt, tmp_path / "m.gguf", "F16", progress=progress)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_existing_output_survives_a_failed_run(capsys, tmp_path, ckpt):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"previous model")
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(E.ConversionCancelled):
        quantizer.convert(ckpt, out, "F16", cancel=cancel)
    assert out.read_bytes() == b"previous model"


# ---- from the bad-input battery (issue 14) -------------------------------------------------------------------
def test_weights_that_are_a_symlink_to_themselves(capsys, tmp_path, ckpt):
    f = ckpt / "model.safetensors"
    f.unlink()
    f.symlink_to(f.name)  # ELOOP on open
    _expect(capsys, tmp_path, ckpt, E.CorruptCheckpointError, "model.safetensors", "symbolic link", "itself")


def test_a_config_that_is_a_symlink_to_itself(capsys, tmp_path, ckpt):
    f = ckpt / "config.json"
    f.unlink()
    f.symlink_to(f.name)
    _expect(capsys, tmp_path, ckpt, E.CorruptCheckpointError, "config.json", "symbolic link", "itself")


def _offsets(h) -> list[tuple[str, int, int]]:
    return sorted(((k, *v["data_offsets"]) for k, v in h.items() if k != "__metadata__"), key=lambda t: t[1])


def test_overlapping_tensors_are_refused_as_safetensors_does(capsys, tmp_path, ckpt):
    """The second tensor's bytes start inside the first one's: safetensors refuses the file, so do we (it used to
    convert, writing wrong weights)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    def edit(h):
        (a, a0, a1), (b, b0, b1) = _offsets(h)[:2]
        shift = min(a1 - a0, b1 - b0) // 2  # b moves into a; a same-length tensor later keeps the total covered
        h[b]["data_offsets"] = [b0 - shift, b1 - shift]
    _patch_header(ckpt / "model.safetensors", edit)
    with pytest.raises(SafetensorError):  # the oracle: the safetensors library itself
        load_file(ckpt / "model.safetensors")
    _expect(capsys, tmp_path, ckpt, E.CorruptCheckpointError, "overlaps", "safetensors library refuses")


def test_trailing_bytes_after_the_tensors_are_refused_as_safetensors_does(capsys, tmp_path, ckpt):
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    f = ckpt / "model.safetensors"
    f.write_bytes(f.read_bytes() + b"\0" * 64)
    with pytest.raises(SafetensorError):
        load_file(f)
    _expect(capsys, tmp_path, ckpt, E.CorruptCheckpointError, "cover", "safetensors library refuses")
