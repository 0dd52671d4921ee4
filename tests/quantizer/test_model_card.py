"""The model card and generation_config.json reach our GGUF as llama.cpp's converter writes them.

Oracle: the pinned llama.cpp's own gguf-py (``vendor/llama.cpp/gguf-py`` of the llama-cpp-python 0.3.36 sdist,
which carries the converter's ``repetition_penalty`` rule), run in a subprocess exactly as ``convert_hf_to_gguf.py``'s
``prepare_metadata`` runs it: ``Metadata.load(None, dir_model, None, total_params)``, the directory-name fallback,
``gguf.size_label``, ``add_type`` and ``set_gguf_meta_model``.  Our file must carry the same keys, in the same
order and place (after ``general.type``, before the hyperparameters), with the same types and values.
"""
from __future__ import annotations

import ctypes
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import gguf
import pytest

from tests.llama_tools import sdist_dir

from .test_convert_f16 import link_checkpoint

MODEL_CARD = """---
library_name: transformers
license: apache-2.0
language:
- en
pipeline_tag: text-generation
tags:
- safetensors
- onnx
base_model:
- HuggingFaceTB/SmolLM2-135M
datasets:
- HuggingFaceTB/smol-smoltalk
---

# SmolLM2

A small model.
"""
GENERATION_CONFIG = {"bos_token_id": 1, "eos_token_id": 2, "do_sample": True, "temperature": 0.6, "top_p": 0.95,
                     "top_k": 20, "repetition_penalty": 1.1, "transformers_version": "4.42.3"}

ORACLE = r"""
import json, sys
from pathlib import Path
import gguf
assert "vendor/llama.cpp/gguf-py" in Path(gguf.__file__).as_posix(), gguf.__file__
dir_model, params = Path(sys.argv[1]), json.loads(sys.argv[2])
metadata = gguf.Metadata.load(None, dir_model, None, params[0])     # convert_hf_to_gguf: prepare_metadata
if metadata.name is None:
    metadata.name = dir_model.name
if metadata.size_label is None and params[0] > 0:
    metadata.size_label = gguf.size_label(*params)
w = gguf.GGUFWriter(path=None, arch=sys.argv[3])
w.add_type(gguf.GGUFType.MODEL)
metadata.set_gguf_meta_model(w)
print(json.dumps([[k, v.value, v.type.name] for k, v in w.kv_data[0].items()]))
"""


def llama_cpp_metadata(folder: Path, params: tuple[int, ...], arch: str) -> list[tuple[str, object, str]]:
    env = {**os.environ, "PYTHONPATH": str(sdist_dir() / "gguf-py")}
    out = subprocess.run([sys.executable, "-c", ORACLE, str(folder), json.dumps(list(params)), arch], env=env,
                         capture_output=True, text=True, check=True).stdout
    return [(k, v, t) for k, v, t in json.loads(out) if k != "general.architecture"]


def card_fields(reader: gguf.GGUFReader) -> list[tuple[str, object, str]]:
    """Our keys from general.type up to the first hyperparameter, as (key, value, type name)."""
    out = []
    for k, f in reader.fields.items():
        if k.startswith("GGUF.") or k == "general.architecture":
            continue
        if not k.startswith("general.") or k == "general.file_type":
            break
        out.append((k, f.contents(), f.types[0].name))
    return out


def _f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0] if isinstance(x, float) else x


def assert_same(ours, want):
    assert [k for k, _, _ in ours] == [k for k, _, _ in want]
    for (k, v, t), (_, wv, wt) in zip(ours, want, strict=True):
        assert t == wt, k
        assert (_f32(v) == _f32(wv)) if t == "FLOAT32" else (v == wv), k  # float32 in the file


@pytest.fixture(scope="module")
def carded(smollm2_checkpoint, tmp_path_factory):
    """The test checkpoint with a model card and a generation_config.json as DeepSeek's distills have one."""
    folder = link_checkpoint(smollm2_checkpoint, tmp_path_factory.mktemp("card") / "SmolLM2-135M-Instruct")
    for name in ("README.md", "generation_config.json"):
        (folder / name).unlink(missing_ok=True)
    (folder / "README.md").write_text(MODEL_CARD, encoding="utf-8")
    (folder / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG), encoding="utf-8")
    return folder


def test_f16_carries_the_converters_model_card_and_sampling_keys(carded):
    import quantizer

    res = quantizer.convert(carded, carded.parent / "c-F16.gguf", "F16")
    reader = gguf.GGUFReader(res.path)
    ours = card_fields(reader)
    total = sum(int(t.n_elements) for t in reader.tensors)
    assert_same(ours, llama_cpp_metadata(carded, (total, total, 0, 0), "llama"))
    got = dict((k, v) for k, v, _ in ours)
    # what recent llama.cpp tools read as the model's default sampling, and the card's facts
    assert got["general.sampling.temp"] == pytest.approx(0.6) and got["general.sampling.top_p"] == pytest.approx(0.95)
    assert got["general.sampling.top_k"] == 20 and got["general.sampling.penalty_repeat"] == pytest.approx(1.1)
    assert got["general.name"] == "SmolLM2 135M Instruct" and got["general.license"] == "apache-2.0"
    assert got["general.base_model.0.repo_url"] == "https://huggingface.co/HuggingFaceTB/SmolLM2-135M"
    assert got["general.dataset.0.name"] == "Smol Smoltalk" and got["general.languages"] == ["en"]


def test_quantized_file_keeps_them_as_llama_quantize_does(carded, tmp_path):
    """Q8_0 of the carded checkpoint is byte for byte llama-quantize's Q8_0 of our F16 (which copies every key)."""
    import llama_cpp

    import quantizer

    f16 = quantizer.convert(carded, tmp_path / "c-F16.gguf", "F16").path
    q8 = quantizer.convert(carded, tmp_path / "c-Q8_0.gguf", "Q8_0").path
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = 7  # LLAMA_FTYPE_MOSTLY_Q8_0
    params.nthread = 2
    ref = tmp_path / "ref-Q8_0.gguf"
    assert llama_cpp.llama_model_quantize(str(f16).encode(), str(ref).encode(), ctypes.byref(params)) == 0
    assert q8.read_bytes() == ref.read_bytes()
    assert gguf.GGUFReader(q8).fields["general.sampling.temp"].contents() == pytest.approx(0.6)


def test_a_cached_hub_snapshot_is_named_after_its_repo_not_its_commit(tmp_path):
    """An HF-cache snapshot folder is a commit hash; names come from the repo name, as if the converter had been
    run on ``hf download ... --local-dir <repo name>``."""
    from quantizer.model_card import model_card_kv

    snap = tmp_path / "models--deepseek-ai--DeepSeek-R1-Distill-Qwen-1.5B" / "snapshots" / ("ab" * 20)
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"]}), encoding="utf-8")
    (snap / "generation_config.json").write_text(json.dumps({"temperature": 0.6, "top_p": 0.95}), encoding="utf-8")
    named = tmp_path / "DeepSeek-R1-Distill-Qwen-1.5B"
    named.mkdir()
    for f in ("config.json", "generation_config.json"):
        (named / f).write_bytes((snap / f).read_bytes())
    params = (1_777_088_000, 1_777_088_000, 0, 0)
    ours = [(k, v, t.name) for k, v, t in model_card_kv(snap, "qwen2", params,
                                                          name_folder="DeepSeek-R1-Distill-Qwen-1.5B")]
    assert_same(ours, llama_cpp_metadata(named, params, "qwen2"))
    assert dict((k, v) for k, v, _ in ours)["general.size_label"] == "1.5B"


def test_a_broken_model_card_is_one_typed_error_before_any_file(carded, tmp_path):
    import quantizer
    from quantizer.errors import ConfigError

    bad = link_checkpoint(carded, tmp_path / "bad")
    (bad / "README.md").unlink(missing_ok=True)
    (bad / "README.md").write_text("---\nlicense: [unclosed\n---\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"model card \(README.md\).*fix or remove the file$") as e:
        quantizer.convert(bad, tmp_path / "x.gguf", "F16")
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]
