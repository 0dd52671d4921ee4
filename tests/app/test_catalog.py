"""The model catalog: published configs, parameter counts, licenses, and recipe predictions that agree with the
GGUFs our quantizer really writes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.core import catalog
from app.core.gguf_header import read_header
from quantizer.recipes import RECIPES

DATA = Path(__file__).resolve().parents[1] / "data"
REPOS = {
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B", "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
    "deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "deepseek-ai/DeepSeek-R1-Distill-Llama-70B",
    "deepseek-ai/DeepSeek-R1-0528-Qwen3-8B",
}
# smallest to largest: every recipe must predict a file no bigger than the next one up
SIZE_ORDER = ["Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "Q8_0",
              "F16", "F32"]


def test_the_catalog_holds_the_seven_distills_with_licenses():
    models = catalog.load_catalog()
    assert {m.repo_id for m in models} == REPOS
    assert len({m.key for m in models}) == len(models)
    for m in models:
        assert m.license == "MIT" and m.name == m.repo_id.split("/")[1]
        assert catalog.find(m.repo_id) is catalog.find(m.key.upper()) is catalog.find(m.name.lower())
    assert "Llama 3.1 license" in catalog.find("deepseek-ai/DeepSeek-R1-Distill-Llama-8B").license_note
    assert "Llama 3.3 license" in catalog.find("deepseek-ai/DeepSeek-R1-Distill-Llama-70B").license_note
    assert catalog.find("nobody/nothing") is None


@pytest.mark.parametrize("size", ["1.5b", "7b"])
def test_catalog_configs_are_the_published_ones(size):
    real = json.loads((DATA / "deepseek-r1-distill-qwen" / f"config-{size}.json").read_text())
    m = catalog.find(f"deepseek-ai/DeepSeek-R1-Distill-Qwen-{size.upper()}")
    for key, value in m.config.items():
        assert real[key] == value, key
    assert catalog.count_params(real) == m.n_params


def test_parameter_counts_follow_from_the_shapes_and_match_the_published_labels():
    for m in catalog.load_catalog():
        n = catalog.count_params(m.config)
        assert n == m.n_params, m.name
        label = float(m.params_label.rstrip("B"))
        assert round(n / 1e9, 2 if label < 10 else 1) == label, m.name


def test_predictions_cover_every_recipe_in_a_sane_order():
    for m in catalog.load_catalog():
        est = {e.recipe: e for e in m.estimates()}
        assert set(est) == set(RECIPES)
        sizes = [est[r].size_bytes for r in SIZE_ORDER]
        assert sizes == sorted(sizes), m.name
        assert est["F16"].size_bytes == est["BF16"].size_bytes
        assert est["Q8_0"].bits_per_weight == pytest.approx(8.5, abs=0.01)  # 34 bytes per 32 weights
        assert est["F16"].bits_per_weight == pytest.approx(16.0, abs=0.01)
        for e in est.values():
            assert e.ram_bytes > e.size_bytes > e.tensor_bytes > 0
    # F16 of a model is about 2 bytes per parameter
    m = catalog.find("deepseek-ai/DeepSeek-R1-Distill-Llama-70B")
    assert m.estimate("F16").tensor_bytes == pytest.approx(2 * m.n_params, rel=0.001)


def test_ram_is_weights_plus_kv_cache_plus_compute_buffers():
    m = catalog.find("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B")
    e4k, e8k = m.estimate("Q4_K_M", n_ctx=4096), m.estimate("Q4_K_M", n_ctx=8192)
    kv_per_token = 2 * 28 * (4 * 128) * 2  # K and V, 28 layers, 4 KV heads x 128, F16
    assert e8k.ram_bytes - e4k.ram_bytes == 4096 * kv_per_token
    compute = catalog.N_BATCH * (152064 + 2 * 18944 + 4 * 3584) * 4
    assert e4k.ram_bytes == e4k.size_bytes + 4096 * kv_per_token + compute


def test_tensor_table_from_config_is_the_one_convert_reads_from_the_checkpoint(smollm2_checkpoint):
    from quantizer.arch import get_arch, plan_tensors, resolve_config
    from quantizer.checkpoint import Checkpoint

    with Checkpoint(smollm2_checkpoint) as ck:
        arch = get_arch(ck.config)
        real = plan_tensors(arch, resolve_config(arch, ck.config), {n: e.shape for n, e in ck.tensors.items()})
        config = dict(ck.config)
    tensors, params = catalog.tensors_from_config(config)
    assert sorted((t.name, t.shape) for t in tensors) == sorted((p.name, tuple(p.shape)) for p in real)
    assert params.n_layer == config["num_hidden_layers"]


@pytest.mark.parametrize("recipe", ["Q8_0", "Q4_K_M", "Q2_K"])
def test_predicted_size_matches_the_gguf_our_quantizer_writes(smollm2_checkpoint, smollm2_gguf, recipe):
    config = json.loads((Path(smollm2_checkpoint) / "config.json").read_text())
    n_merges = len(json.loads((Path(smollm2_checkpoint) / "tokenizer.json").read_text())["model"]["merges"])
    est = {e.recipe: e for e in catalog.estimate_all(config, n_merges=n_merges)}[recipe]
    h = read_header(smollm2_gguf(recipe))
    assert est.tensor_bytes == h.file_size - h.data_offset  # tensor data: exact
    assert est.size_bytes == pytest.approx(h.file_size, rel=0.002)  # header estimated: 0.2%
    assert est.size_bytes - est.tensor_bytes == pytest.approx(h.data_offset, rel=0.06)


def test_header_estimate_against_the_real_deepseek_qwen_vocabulary():
    h = read_header(DATA / "deepseek-r1-distill-qwen" / "ggml-vocab-deepseek-r1-qwen.gguf")
    n_tokens = h.metadata_array_lengths["tokenizer.ggml.tokens"]
    n_merges = h.metadata_array_lengths["tokenizer.ggml.merges"]
    m = catalog.find("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B")
    assert (n_tokens, n_merges) == (m.config["vocab_size"], m.n_merges)
    assert catalog.header_bytes([], n_tokens, n_merges) == pytest.approx(h.file_size, rel=0.06)


def test_unsupported_configs_raise_the_quantizers_error():
    from quantizer.errors import QuantizerError

    with pytest.raises(QuantizerError, match="MistralForCausalLM"):
        catalog.tensors_from_config({"architectures": ["MistralForCausalLM"], "hidden_size": 8})


def test_models_catalog_cli(capsys):
    from app.cli import main

    assert main(["models", "--catalog"]) == 0
    out = capsys.readouterr().out
    assert all(r in out for r in REPOS) and "Q4_K_M" in out and "Llama 3.3 license" in out
    assert main(["models", "--catalog", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    m = next(d for d in data if d["repo_id"].endswith("Qwen-1.5B"))
    assert m["recipes"]["Q8_0"]["size_bytes"] == catalog.find(m["repo_id"]).estimate("Q8_0").size_bytes
