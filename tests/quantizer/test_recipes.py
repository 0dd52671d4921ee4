"""quantizer.recipes against llama.cpp itself.

* Synthetic models: F16 GGUFs with the real tensor names and row lengths of SmolLM2, R1-Distill-Qwen-1.5B/7B
  (tests/data configs), 80-layer Llama/Qwen2 (the 70B rule), Qwen3 with q/k norms and an FFN width that is not
  a multiple of 32, but only 4 rows per matrix: llama.cpp's type rules depend on names, row lengths and layer
  counts, never on the number of rows, so ``llama_model_quantize`` runs in milliseconds on them.  For every
  recipe, plan() must choose llama.cpp's type for every tensor, count the same fallbacks and predict the size.
* SmolLM2-135M-Instruct for real: our GGUF of every recipe equals, tensor by tensor (type and bytes), what
  ``llama_model_quantize`` makes of our F16 GGUF, loads in llama-cpp-python and generates; F16/Q8_0 say Paris.
"""
from __future__ import annotations

import ctypes
import json
import re
import struct
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest

from quantizer.errors import QuantizerError, UnknownRecipeError
from quantizer.recipes import (
    ALIGNMENT,
    FLOAT_RECIPES,
    QUANTIZATION_VERSION,
    RECIPES,
    ModelParams,
    TensorInfo,
    estimate,
    float_type,
    plan,
    recipe_info,
)

T = gguf.GGMLQuantizationType
DATA = Path(__file__).resolve().parent.parent / "data"
ISSUE_RECIPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_S", "Q3_K_M",
                 "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K"]


# ---- llama.cpp as the oracle --------------------------------------------------------------------------------
def llama_quantize(src: Path, dst: Path, ftype: int, *, nthread: int = 2,
                   imatrix: dict[str, np.ndarray] | None = None) -> str:
    """Run llama.cpp's quantizer; returns what it logged (the fallback count is only reported there)."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = nthread
    keep: list[object] = []
    if imatrix:
        arr = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, w) in enumerate(imatrix.items()):
            w = np.ascontiguousarray(w, np.float32)
            bname = name.encode()
            keep += [w, bname]
            arr[i].name = bname
            arr[i].data = w.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            arr[i].size = w.size
        arr[len(imatrix)].name = None
        params.imatrix = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        keep.append(arr)
    lines: list[str] = []
    cb = llama_cpp.llama_log_callback(lambda level, text, _: lines.append(text.decode("utf-8", "replace")))
    llama_cpp.llama_log_set(cb, ctypes.c_void_p(0))
    try:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    finally:
        from llama_cpp import _logger

        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
    log = "".join(lines)
    assert rc == 0, f"llama_model_quantize failed:\n{log[-2000:]}"
    return log


def llama_fallbacks(log: str) -> int:
    m = re.search(r"WARNING: (\d+) of \d+ tensor\(s\) required fallback quantization", log)
    return int(m.group(1)) if m else 0


def read_gguf(path: Path) -> tuple[dict[str, object], dict[str, tuple[T, bytes]], int]:
    """``(scalar metadata, {tensor: (type, data bytes)}, data-section bytes)`` of a GGUF v3 file.

    A small reader of our own: gguf.GGUFReader parses a 49k-token vocabulary value by value, which takes
    seconds per file; arrays are skipped here.
    """
    raw = memoryview(path.read_bytes())
    pos = 8
    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def take(fmt: str):
        nonlocal pos
        v = struct.unpack_from("<" + fmt, raw, pos)[0]
        pos += struct.calcsize("<" + fmt)
        return v

    def text() -> str:
        nonlocal pos
        n = take("Q")
        pos += n
        return bytes(raw[pos - n:pos]).decode("utf-8")

    def skip(t: int, n: int) -> None:
        nonlocal pos
        if t == 8:
            for _ in range(n):
                pos += 8 + struct.unpack_from("<Q", raw, pos)[0]
        else:
            pos += n * struct.calcsize("<" + scalar[t])

    assert bytes(raw[:4]) == b"GGUF" and struct.unpack_from("<I", raw, 4)[0] == 3
    n_tensors, n_kv = take("Q"), take("Q")
    kv: dict[str, object] = {}
    for _ in range(n_kv):
        key, t = text(), take("I")
        if t == 9:  # array
            it, n = take("I"), take("Q")
            skip(it, n)
        else:
            kv[key] = text() if t == 8 else take(scalar[t])
    infos = []
    for _ in range(n_tensors):
        name = text()
        ne = [take("Q") for _ in range(take("I"))]
        infos.append((name, ne, T(take("I")), take("Q")))
    align = int(kv.get("general.alignment", ALIGNMENT))
    start = pos + (-pos % align)
    tensors = {}
    for name, ne, qtype, off in infos:
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        nbytes = int(np.prod(ne[1:], dtype=np.int64)) * (ne[0] // block) * size
        tensors[name] = (qtype, bytes(raw[start + off:start + off + nbytes]))
    return kv, tensors, len(raw) - start


# ---- synthetic models ----------------------------------------------------------------------------------------
def arch_tensors(arch: str, cfg: dict, *, rows: int = 4) -> list[TensorInfo]:
    """Tensor names / numpy shapes of a llama/qwen2/qwen3 GGUF, every matrix cut to ``rows`` rows."""
    hidden, ff = cfg["hidden_size"], cfg["intermediate_size"]
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim", hidden // n_head)
    out = [TensorInfo("token_embd.weight", (rows, hidden)), TensorInfo("output_norm.weight", (hidden,))]
    if not cfg.get("tie_word_embeddings", True):
        out.append(TensorInfo("output.weight", (rows, hidden)))
    if cfg.get("rope_freqs"):
        out.append(TensorInfo("rope_freqs.weight", (hd // 2,)))
    for i in range(cfg["num_hidden_layers"]):
        b = f"blk.{i}."
        out += [TensorInfo(b + "attn_norm.weight", (hidden,)), TensorInfo(b + "ffn_norm.weight", (hidden,)),
                TensorInfo(b + "attn_q.weight", (rows, hidden)), TensorInfo(b + "attn_k.weight", (rows, hidden)),
                TensorInfo(b + "attn_v.weight", (rows, hidden)),
                TensorInfo(b + "attn_output.weight", (rows, n_head * hd)),
                TensorInfo(b + "ffn_gate.weight", (rows, hidden)), TensorInfo(b + "ffn_up.weight", (rows, hidden)),
                TensorInfo(b + "ffn_down.weight", (rows, ff))]
        if arch == "qwen2":
            out += [TensorInfo(b + f"attn_{x}.bias", (n * hd,)) for x, n in (("q", n_head), ("k", n_kv), ("v", n_kv))]
        if arch == "qwen3":
            out += [TensorInfo(b + "attn_q_norm.weight", (hd,)), TensorInfo(b + "attn_k_norm.weight", (hd,))]
    return out


def write_f16_gguf(path: Path, arch: str, cfg: dict, tensors: list[TensorInfo]) -> Path:
    """An F16 GGUF as convert_hf_to_gguf.py lays it out (1-D/norms F32), random weights."""
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(256)
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_layer_norm_rms_eps(1e-6)
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(1)
    for t in tensors:
        x = (rng.standard_normal(t.shape) * 0.05).astype(np.float32)
        w.add_tensor(t.name, x.astype(np.float16) if float_type(t, T.F16) == T.F16 else x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _config(name: str) -> dict:
    return json.loads((DATA / "deepseek-r1-distill-qwen" / f"config-{name}.json").read_text())


def _smollm2_config() -> dict:
    md = json.loads((DATA / "smollm2-135m-instruct" / "llamacpp-f16-reference.json").read_text())["metadata"]
    return {"hidden_size": md["llama.embedding_length"], "intermediate_size": md["llama.feed_forward_length"],
            "num_attention_heads": md["llama.attention.head_count"], "vocab_size": md["llama.vocab_size"],
            "num_key_value_heads": md["llama.attention.head_count_kv"], "num_hidden_layers": md["llama.block_count"],
            "tie_word_embeddings": True}


_BIG_LLAMA = {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 64, "num_key_value_heads": 8,
              "head_dim": 64, "num_hidden_layers": 80, "vocab_size": 1000, "tie_word_embeddings": False,
              "rope_freqs": True}
SCENARIOS = {
    "smollm2-shapes": ("llama", _smollm2_config()),  # 576-wide rows: k-quant fallbacks everywhere, tied output
    "r1-qwen-1.5b": ("qwen2", _config("1.5b")),  # GQA 6, q/k/v biases, own output.weight
    "r1-qwen-7b": ("qwen2", _config("7b")),  # GQA 7, 3584/18944-wide rows
    "llama-80-layers-gqa": ("llama", _BIG_LLAMA),  # LLM_TYPE_70B: attn_v bumped to Q5_K, rope_freqs
    "llama-80-layers-mha": ("llama", dict(_BIG_LLAMA, num_key_value_heads=64)),  # 65B: no bump
    "qwen2-80-layers": ("qwen2", dict(_BIG_LLAMA, num_key_value_heads=64, rope_freqs=False)),  # qwen2 70B
    "qwen3-odd-ffn": ("qwen3", {"hidden_size": 256, "intermediate_size": 1000, "num_attention_heads": 4,
                                "num_key_value_heads": 4, "head_dim": 64, "num_hidden_layers": 12,
                                "vocab_size": 300, "tie_word_embeddings": True}),  # ffn_down rows % 32 != 0
}


def model_params(arch: str, cfg: dict) -> ModelParams:
    return ModelParams(arch, cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"])


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    made: dict[str, tuple[Path, list[TensorInfo], ModelParams]] = {}

    def get(name: str):
        if name not in made:
            arch, cfg = SCENARIOS[name]
            tensors = arch_tensors(arch, cfg)
            made[name] = (write_f16_gguf(folder / f"{name}-F16.gguf", arch, cfg, tensors), tensors,
                          model_params(arch, cfg))
        return made[name]

    return get


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_plan_matches_llama_quantize_on_synthetic_models(scenario, synthetic, tmp_path):
    src, tensors, params = synthetic(scenario)
    for recipe, info in RECIPES.items():
        dst = tmp_path / f"{recipe}.gguf"
        log = llama_quantize(src, dst, info.ftype)
        kv, got, data_bytes = read_gguf(dst)
        p = plan(recipe, tensors, params)
        want = {name: t.name for name, t in p.types.items()}
        assert {name: t.name for name, (t, _) in got.items()} == want, recipe
        assert p.file_type == kv["general.file_type"] == info.ftype
        assert p.n_fallback == llama_fallbacks(log), recipe
        assert p.n_bytes == data_bytes, recipe
        assert p.bits_per_weight == pytest.approx(
            sum(len(b) for _, b in got.values()) * 8 / sum(int(np.prod(t.shape)) for t in tensors))


@pytest.mark.parametrize("scenario", ["r1-qwen-1.5b", "qwen3-odd-ffn"])
def test_plan_with_imatrix_matches_llama_quantize(scenario, synthetic, tmp_path):
    """With an importance matrix Q4_0/Q5_0 guard the first ffn_down layers with Q4_1/Q5_1."""
    src, tensors, params = synthetic(scenario)
    rng = np.random.default_rng(1)
    imatrix = {t.name: rng.random(t.shape[-1], dtype=np.float32) + 0.1 for t in tensors if len(t.shape) == 2}
    for recipe in ("Q4_0", "Q5_0", "Q4_K_M", "Q3_K_M"):
        dst = tmp_path / f"{recipe}.gguf"
        llama_quantize(src, dst, RECIPES[recipe].ftype, imatrix=imatrix)
        _, got, _ = read_gguf(dst)
        with_im = plan(recipe, tensors, params, has_imatrix=True)
        assert {n: t.name for n, (t, _) in got.items()} == {n: t.name for n, t in with_im.types.items()}
        if recipe in ("Q4_0", "Q5_0") and scenario == "r1-qwen-1.5b":  # (qwen3-odd's ffn_down is F16 anyway)
            changed = {n for n, t in with_im.types.items() if t != plan(recipe, tensors, params).types[n]}
            assert changed == {f"blk.{i}.ffn_down.weight" for i in range(params.n_layer // 8)}


def test_read_gguf_agrees_with_gguf_reader(synthetic, tmp_path):
    src, _, _ = synthetic("qwen3-odd-ffn")
    dst = tmp_path / "q.gguf"
    llama_quantize(src, dst, RECIPES["Q4_K_M"].ftype)
    kv, got, data_bytes = read_gguf(dst)
    r = gguf.GGUFReader(str(dst))
    assert kv["general.architecture"] == "qwen3" and kv["general.file_type"] == 15
    assert data_bytes == dst.stat().st_size - r.data_offset
    assert got == {t.name: (T(t.tensor_type), np.asarray(t.data).tobytes()) for t in r.tensors}


# ---- readable checks of the rules on the synthetic shapes ---------------------------------------------------
def test_seventy_b_rule_bumps_attn_v():
    for name, bumped in (("llama-80-layers-gqa", True), ("llama-80-layers-mha", False), ("qwen2-80-layers", True)):
        arch, cfg = SCENARIOS[name]
        types = plan("Q3_K_S", arch_tensors(arch, cfg), model_params(arch, cfg)).types
        assert types["blk.40.attn_v.weight"] == (T.Q5_K if bumped else T.Q3_K), name
        assert types["blk.40.attn_q.weight"] == T.Q3_K


def test_q4_k_m_more_bits_layers_and_output():
    arch, cfg = SCENARIOS["r1-qwen-7b"]
    p = plan("Q4_K_M", arch_tensors(arch, cfg), model_params(arch, cfg))
    n = cfg["num_hidden_layers"]
    six = [i for i in range(n) if p.types[f"blk.{i}.ffn_down.weight"] == T.Q6_K]
    # first and last eighth, and every third layer in between
    assert six[:3] == [0, 1, 2] and six[-3:] == [n - 3, n - 2, n - 1] and 4 < len(six) < n // 2 + 4
    assert [p.types[f"blk.{i}.attn_v.weight"] for i in six] == [T.Q6_K] * len(six)
    assert p.types["output.weight"] == T.Q6_K and p.types["token_embd.weight"] == T.Q4_K
    assert p.types["blk.0.attn_q.bias"] == T.F32 and p.types["blk.0.attn_norm.weight"] == T.F32
    assert p.n_fallback == 0


def test_tied_embedding_is_treated_as_output_and_odd_rows_fall_back():
    arch, cfg = SCENARIOS["qwen3-odd-ffn"]
    p = plan("Q4_K_M", arch_tensors(arch, cfg), model_params(arch, cfg))
    assert p.types["token_embd.weight"] == T.Q6_K  # no output.weight: the embedding is the output
    assert p.types["blk.5.ffn_down.weight"] == T.F16  # 1000 values per row: no 32-block type fits
    assert p.types["blk.0.attn_q_norm.weight"] == T.F32
    assert p.fallbacks == [f"blk.{i}.ffn_down.weight" for i in range(cfg["num_hidden_layers"])]


def test_float_recipes_keep_1d_tensors_and_norms_f32():
    arch, cfg = SCENARIOS["r1-qwen-1.5b"]
    tensors = arch_tensors(arch, cfg)
    for recipe, out in (("F16", T.F16), ("BF16", T.BF16), ("F32", T.F32)):
        p = plan(recipe, tensors, model_params(arch, cfg))
        for t in tensors:
            want = T.F32 if len(t.shape) == 1 or t.name.endswith("_norm.weight") else out
            assert p.types[t.name] == want, (recipe, t.name)


def test_recipe_table():
    assert list(RECIPES) == ISSUE_RECIPES
    for name, info in RECIPES.items():
        member = "ALL_F32" if name == "F32" else f"MOSTLY_{name}"
        assert info.ftype == gguf.LlamaFileType[member].value, name
        assert info.description and "\n" not in info.description
    assert FLOAT_RECIPES == {"F32", "F16", "BF16"}
    assert recipe_info("q4_k_m") is RECIPES["Q4_K_M"]


def test_unknown_recipe_is_refused_with_the_choices():
    arch, cfg = SCENARIOS["qwen3-odd-ffn"]
    for bad in ("Q4_K_XL", "IQ2_XXS", ""):
        with pytest.raises(UnknownRecipeError, match="Q4_K_M") as ei:
            plan(bad, arch_tensors(arch, cfg), model_params(arch, cfg))
        assert isinstance(ei.value, QuantizerError) and isinstance(ei.value, ValueError)


def test_estimate_is_the_plan_size():
    arch, cfg = SCENARIOS["r1-qwen-1.5b"]
    tensors, params = arch_tensors(arch, cfg), model_params(arch, cfg)
    sizes = [estimate(r, tensors, params) for r in RECIPES]
    for r, (n_bytes, bpw) in zip(RECIPES, sizes, strict=True):
        p = plan(r, tensors, params)
        assert (n_bytes, bpw) == (p.n_bytes, p.bits_per_weight)
        assert n_bytes % ALIGNMENT == 0
    by = dict(zip(RECIPES, sizes, strict=True))
    assert by["F32"][0] > by["F16"][0] > by["Q8_0"][0] > by["Q6_K"][0] > by["Q4_K_M"][0] > by["Q2_K"][0]


# ---- SmolLM2 for real: our converter against llama.cpp's quantizer ----------------------------------------
def smollm2_tensors() -> tuple[list[TensorInfo], ModelParams]:
    ref = json.loads((DATA / "smollm2-135m-instruct" / "llamacpp-f16-reference.json").read_text())
    tensors = [TensorInfo(t["name"], tuple(reversed(t["shape"]))) for t in ref["tensors"]]
    return tensors, model_params("llama", _smollm2_config())


def _generate(path: Path, prompt: str = "The capital of France is", n: int = 6) -> str:
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, n_threads=2, n_batch=64, verbose=False, seed=0)
    try:
        out = llm.create_completion(prompt, max_tokens=n, temperature=0.0)
        assert out["usage"]["completion_tokens"] >= 1
        return out["choices"][0]["text"]
    finally:
        llm.close()


@pytest.mark.timeout(900)
@pytest.mark.parametrize("recipe", ISSUE_RECIPES)
def test_smollm2_equals_llama_quantize_of_our_f16(recipe, smollm2_gguf, tmp_path):
    ours = smollm2_gguf(recipe)
    ref_path = tmp_path / f"llama-{recipe}.gguf"
    log = llama_quantize(smollm2_gguf("F16"), ref_path, RECIPES[recipe].ftype)
    kv, got, data_bytes = read_gguf(ours)
    _, want, _ = read_gguf(ref_path)
    assert got.keys() == want.keys()
    for name, (qtype, data) in want.items():
        assert got[name][0] == qtype, name
        assert got[name][1] == data, f"{name} ({qtype.name}) bytes differ from llama.cpp's"
    assert kv["general.file_type"] == RECIPES[recipe].ftype
    assert kv["general.quantization_version"] == QUANTIZATION_VERSION

    tensors, params = smollm2_tensors()
    p = plan(recipe, tensors, params)
    assert {n: t for n, (t, _) in got.items()} == p.types
    assert p.n_fallback == llama_fallbacks(log)
    assert p.n_bytes == data_bytes  # the prediction is the file minus its header

    text = _generate(ours)
    if recipe in ("F16", "Q8_0"):
        assert "Paris" in text, text


@pytest.mark.timeout(900)
@pytest.mark.parametrize("recipe", ["Q4_0", "Q4_K_M"])
def test_smollm2_with_imatrix_equals_llama_quantize(recipe, smollm2_checkpoint, smollm2_gguf, tmp_path):
    """An imatrix file (GGUF format, as llama-imatrix writes it) read by quantizer.imatrix and applied by
    convert gives llama.cpp's bytes when llama.cpp gets the same weights: the weighted encoders, the Q4_0
    ffn_down guard, and the lookup by tensor name all agree."""
    import quantizer
    from quantizer.imatrix import read_imatrix
    from tests.quantizer.test_imatrix import write_gguf_imatrix

    tensors, _ = smollm2_tensors()
    rng = np.random.default_rng(7)
    stats = {t.name: (rng.gamma(2.0, 50.0, t.shape[-1]).astype(np.float32) * 512, np.array([512]))
             for t in tensors if len(t.shape) == 2}
    im_path = write_gguf_imatrix(tmp_path / "imatrix.gguf", stats)
    ours = tmp_path / f"ours-{recipe}.gguf"
    quantizer.convert(smollm2_checkpoint, ours, recipe, imatrix=im_path, threads=2)
    ref = tmp_path / f"llama-{recipe}.gguf"
    llama_quantize(smollm2_gguf("F16"), ref, RECIPES[recipe].ftype, imatrix=read_imatrix(im_path))
    _, got, _ = read_gguf(ours)
    _, want, _ = read_gguf(ref)
    _, plain, _ = read_gguf(smollm2_gguf(recipe))
    assert got.keys() == want.keys()
    for name, (qtype, data) in want.items():
        assert got[name] == (qtype, data), f"{name} ({qtype.name}) differs from llama.cpp's with the same imatrix"
    # the imatrix made a difference: different bytes than without it
    assert sum(got[n][1] != plain[n][1] for n in got) > 100
    if recipe == "Q4_0":
        assert got["blk.0.ffn_down.weight"][0] == T.Q4_1 and plain["blk.0.ffn_down.weight"][0] == T.Q4_0
