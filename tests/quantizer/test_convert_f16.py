"""Our F16 GGUF of SmolLM2-135M-Instruct equals what llama.cpp's own converter made of the same checkpoint.

Oracle: tests/data/smollm2-135m-instruct/llamacpp-f16-reference.json (convert_hf_to_gguf.py --outtype f16 of
llama-cpp-python 0.3.36): every metadata key and value, every tensor's name, type, shape and sha256 of its data.
Arrays are recorded as their length and sha256 of ``json.dumps(list, ensure_ascii=False)``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import gguf
import pytest

DATA = Path(__file__).resolve().parent.parent / "data" / "smollm2-135m-instruct"
# llama.cpp was run on the checkpoint in a folder of this name (general.name "Smollm2 Numpy" is derived from it)
REFERENCE_FOLDER = "smollm2-numpy"


def link_checkpoint(src: Path, dest: Path) -> Path:
    """``dest``: a folder holding ``src``'s files (symlinks, or copies where links are not allowed)."""
    dest.mkdir(parents=True)
    for f in src.iterdir():
        try:
            os.symlink(f, dest / f.name)
        except OSError:
            shutil.copyfile(f, dest / f.name)
    return dest


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads((DATA / "llamacpp-f16-reference.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def ours(smollm2_checkpoint, tmp_path_factory) -> gguf.GGUFReader:
    """Our F16 of the checkpoint in a folder named as the one llama.cpp converted (names come from it)."""
    import quantizer

    folder = link_checkpoint(smollm2_checkpoint, tmp_path_factory.mktemp("ref") / REFERENCE_FOLDER)
    return gguf.GGUFReader(quantizer.convert(folder, folder.parent / "ours-F16.gguf", "F16").path)


def _fields(reader: gguf.GGUFReader) -> dict:
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def test_metadata_keys_equal_llamacpp_in_order(ours, reference):
    assert list(_fields(ours)) == list(reference["metadata"])


@pytest.mark.parametrize("key", list(json.loads((DATA / "llamacpp-f16-reference.json").read_text(
    encoding="utf-8"))["metadata"]))
def test_metadata_value_equals_llamacpp(ours, reference, key):
    want = reference["metadata"][key]
    got = _fields(ours)[key]
    if isinstance(want, dict) and "sha256" in want:
        assert len(got) == want["array_len"]
        assert got[:len(want["head"])] == want["head"]
        assert hashlib.sha256(json.dumps(got, ensure_ascii=False).encode()).hexdigest() == want["sha256"]
    else:
        assert got == want


def test_every_tensor_equals_llamacpp(ours, reference):
    got = [(t.name, t.tensor_type.name, [int(s) for s in t.shape], hashlib.sha256(t.data.tobytes()).hexdigest())
           for t in ours.tensors]
    want = [(t["name"], t["type"], t["shape"], t["sha256"]) for t in reference["tensors"]]
    assert len(got) == len(want) == 272
    mismatched = [g[0] for g, w in zip(got, want, strict=True) if g != w]
    assert mismatched == []


def test_f16_completes_paris_in_llama_cpp(smollm2_gguf):
    from llama_cpp import Llama

    llm = Llama(model_path=str(smollm2_gguf("F16")), n_ctx=128, n_threads=2, verbose=False, seed=0)
    text = llm("The capital of France is", max_tokens=6, temperature=0.0, top_k=1)["choices"][0]["text"]
    assert "Paris" in text


def test_convert_result_reports_the_file(smollm2_checkpoint, tmp_path):
    import quantizer

    seen = []
    res = quantizer.convert(smollm2_checkpoint, tmp_path / "m.gguf", "F16", progress=seen.append)
    assert res.path == tmp_path / "m.gguf" and res.n_bytes == res.path.stat().st_size
    assert 16.0 <= res.bits_per_weight < 16.1  # F16 matrices plus a few F32 norms
    assert res.tensor_types["token_embd.weight"] == "F16" and res.tensor_types["output_norm.weight"] == "F32"
    assert [p.index for p in seen] == list(range(1, 273)) and seen[-1].bytes_done == seen[-1].bytes_total
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]  # no temporary file left


def test_q8_0_file_is_byte_identical_to_llama_quantize_of_our_f16(smollm2_gguf, tmp_path):
    """Quantized recipes lay the file out as llama-quantize does: its tensor order (by layer, then name) and its
    metadata order (file type and quantization version moved last), so the whole file matches byte for byte."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = 7  # LLAMA_FTYPE_MOSTLY_Q8_0
    params.nthread = 2
    ref = tmp_path / "ref-Q8_0.gguf"
    assert llama_cpp.llama_model_quantize(str(smollm2_gguf("F16")).encode(), str(ref).encode(),
                                          ctypes.byref(params)) == 0
    assert smollm2_gguf("Q8_0").read_bytes() == ref.read_bytes()


def test_q8_0_completes_paris_in_llama_cpp(smollm2_gguf):
    from llama_cpp import Llama

    llm = Llama(model_path=str(smollm2_gguf("Q8_0")), n_ctx=128, n_threads=2, verbose=False, seed=0)
    text = llm("The capital of France is", max_tokens=6, temperature=0.0, top_k=1)["choices"][0]["text"]
    assert "Paris" in text


def test_output_file_gets_the_usual_permissions(tmp_path, smollm2_checkpoint):
    """The temporary file is private (mkstemp: 0600); the finished GGUF has the mode any new file would get."""
    import os

    import quantizer

    out = tmp_path / "perm.gguf"
    old = os.umask(0o022)
    try:
        quantizer.convert(smollm2_checkpoint, out, "Q8_0")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644
