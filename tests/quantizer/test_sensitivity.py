"""quantizer.sensitivity: the proxy measured with our kernels, and the placement (exact on small cases)."""
from __future__ import annotations

import itertools

import gguf
import numpy as np
import pytest

from quantizer.recipes import ModelParams, TensorInfo, plan, with_types
from quantizer.sensitivity import TensorCost, _padded, place, tensor_costs


def _costs(rng, n=5) -> dict[str, TensorCost]:
    out = {}
    for i in range(n):
        shape = (int(rng.integers(1, 5)) * 256, 512)
        base = rng.uniform(0.5, 2.0)
        errs = {"Q2_K": 0.2 * base, "Q3_K": 0.07 * base, "Q4_K": 0.02 * base, "Q5_K": 0.006 * base,
                "Q6_K": 0.0017 * base, "Q8_0": 0.0001 * base}
        out[f"blk.{i}.ffn_up.weight"] = TensorCost(f"blk.{i}.ffn_up.weight", shape, errs)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_place_fits_the_budget_and_is_near_optimal(seed):
    rng = np.random.default_rng(seed)
    costs = _costs(rng)
    base = {n: "Q3_K" for n in costs}
    budget = sum(_padded(c.bytes_at("Q3_K")) for c in costs.values())
    p = place(costs, base, budget)
    assert p.used <= budget and p.used == sum(_padded(costs[n].bytes_at(q)) for n, q in p.types.items())
    # brute force over every assignment: the placement is within 5% of the best and beats the uniform base
    best = min(sum(costs[n].errors[q] for n, q in zip(costs, combo, strict=True))
               for combo in itertools.product(*[list(c.errors) for c in costs.values()])
               if sum(_padded(costs[n].bytes_at(q)) for n, q in zip(costs, combo, strict=True)) <= budget)
    assert p.predicted <= best * 1.05
    assert p.predicted < p.predicted_base
    assert "sensitivity placement" in p.summary() and "ffn_up" in p.summary()


def test_place_refuses_an_impossible_budget():
    costs = _costs(np.random.default_rng(0))
    with pytest.raises(ValueError, match="raise the target"):
        place(costs, {n: "Q3_K" for n in costs}, 10)


def test_costs_follow_the_bits(tmp_path):
    """On a real F16 tensor the measured error falls with every bit added, and the imatrix weights it."""
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    w.add_tensor("blk.0.ffn_up.weight", rng.standard_normal((64, 512)).astype(np.float16))
    w.add_tensor("token_embd.weight", rng.standard_normal((8, 512)).astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    costs = tensor_costs(tmp_path / "m.gguf", None, rows=32, cache=tmp_path / "c.json")
    assert list(costs) == ["blk.0.ffn_up.weight"]  # block matrices only
    e = costs["blk.0.ffn_up.weight"].errors
    order = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0"]
    assert all(e[a] > e[b] for a, b in zip(order, order[1:], strict=False)), e
    assert 0.05 < e["Q2_K"] < 0.5 and e["Q8_0"] < 1e-4
    again = tensor_costs(tmp_path / "m.gguf", None, rows=32, cache=tmp_path / "c.json")  # from the cache
    assert again["blk.0.ffn_up.weight"].errors == e


def test_with_types_changes_only_quantized_tensors():
    tensors = [TensorInfo("blk.0.ffn_up.weight", (256, 512)), TensorInfo("blk.0.attn_norm.weight", (512,)),
               TensorInfo("token_embd.weight", (100, 512))]
    params = ModelParams("llama", 1, 4, 4)
    p = plan("Q3_K_M", tensors, params)
    q = with_types(p, tensors, {"blk.0.ffn_up.weight": "Q6_K"})
    assert q.types["blk.0.ffn_up.weight"].name == "Q6_K" and q.n_bytes > p.n_bytes
    assert q.file_type == p.file_type
    with pytest.raises(ValueError, match="not quantized"):
        with_types(p, tensors, {"blk.0.attn_norm.weight": "Q6_K"})
    with pytest.raises(ValueError, match="no tensor"):
        with_types(p, tensors, {"blk.9.ffn_up.weight": "Q6_K"})
