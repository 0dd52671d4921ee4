"""Measured sensitivity (app.core.sensitivity_kl) on SmolLM2, with real components: simulated quantization
through llama.cpp's eval callback against real GGUFs our quantizer makes, the group scales, the calibrated
placement's budget, and a cancelled measurement leaving no cache entry.

SmolLM2's rows are 576 wide, so its k-quant-incapable tensors take the legacy fallbacks (Q4_0/Q5_0/Q8_0)."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from app.core.load_options import LoadOptions

OPTS = LoadOptions(n_threads=2, flash_attn="off")
CHUNK = 128


@pytest.fixture(scope="module")
def files(smollm2_gguf, tmp_path_factory):
    from app.core.imatrix import compute_imatrix

    tmp = tmp_path_factory.mktemp("skl")
    im = compute_imatrix(smollm2_gguf("F16"), tmp / "im.gguf", chunk_size=CHUNK, n_chunks=2, options=OPTS,
                         use_cache=False).path
    return smollm2_gguf("F16"), im, tmp


def _types(path) -> dict[str, str]:
    import gguf

    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors
            if t.tensor_type.name not in ("F32", "F16")}


@pytest.mark.timeout(300)
def test_simulation_gives_the_logits_of_the_real_file(files, smollm2_checkpoint):
    """A GGUF with attn_v of layer 5 and the (tied) token embedding at Q4_0, the rest Q8_0, made by our quantizer;
    the F16 model with every one of those tensors quantized by simulation gives nearly its logits: the two
    differ far less than either differs from the F16 model (what is left is llama.cpp rounding the activations
    to 8 bits for quantized weights, which the simulation does not do)."""
    import quantizer
    from app.core.imatrix import builtin_calibration_text
    from app.core.sensitivity_kl import Deltas, KLProbe, mean_kl

    f16, im, tmp = files
    real = tmp / "real.gguf"
    quantizer.convert(smollm2_checkpoint, real, "Q8_0", imatrix=im,
                      tensor_types={"blk.5.attn_v.weight": "Q4_0", "token_embd.weight": "Q4_0"})
    text = builtin_calibration_text()
    kr = KLProbe(real, text, chunk_size=CHUNK, n_chunks=2, options=OPTS)
    real_lp = kr.ref
    kr.close()
    deltas = Deltas(f16, im, threads=2)
    kp = KLProbe(f16, text, chunk_size=CHUNK, n_chunks=2, options=OPTS)
    try:
        assert all(np.array_equal(a, b) for a, b in zip(kp.logprobs({}), kp.ref, strict=True))  # nothing asked: clean
        sim_lp = kp.logprobs({n: deltas.delta(n, q) for n, q in _types(real).items()})
        assert set(kp.sim.hits) == set(_types(real))  # every quantized weight was met (embedding: twice)
        ref_lp = kp.ref
    finally:
        kp.close()

    kl = mean_kl
    real_kl, sim_kl, between = kl(ref_lp, real_lp), kl(ref_lp, sim_lp), kl(real_lp, sim_lp)
    assert real_kl > 0.01  # the Q4_0 embedding is a visible perturbation
    assert sim_kl == pytest.approx(real_kl, rel=0.2)
    assert between < 0.2 * real_kl


@pytest.mark.timeout(300)
def test_scales_are_positive_cached_and_the_calibrated_plan_fits(files):
    from app.core.sensitivity_kl import measure_scales
    from quantizer.sensitivity import _padded, place, tensor_costs

    f16, im, tmp = files
    costs = tensor_costs(f16, im, rows=32)
    steps = []
    ms = measure_scales(f16, im, costs, n_bands=2, n_chunks=1, chunk_size=CHUNK, options=OPTS, threads=2,
                        progress=steps.append)
    assert not ms.cached and steps[-1].step == steps[-1].n_steps == len(ms.scales) + 1 + 3
    assert len(ms.scales) == 7 * 2 and sum(len(v) for v in ms.members.values()) == len(costs)
    assert all(np.isfinite(s) and s > 0 for s in ms.scales.values())
    assert set(ms.direct) == {"token_embd.weight"}  # tied: the embedding is the output matrix, Q4_0..Q8_0
    kl = ms.direct["token_embd.weight"]
    assert kl["Q4_0"] > kl["Q5_0"] > kl["Q8_0"] >= 0
    again = measure_scales(f16, im, costs, n_bands=2, n_chunks=1, chunk_size=CHUNK, options=OPTS)
    assert again.cached and again.scales == ms.scales

    every, weights = ms.calibrated(costs)
    base = {n: c.shape[-1] % 256 and "Q5_0" or "Q4_K" for n, c in every.items()}
    base["token_embd.weight"] = "Q8_0"
    budget = sum(_padded(every[n].bytes_at(q)) for n, q in base.items())
    p = place(every, base, budget, weights=weights)
    assert p.used <= budget and p.unit == "KL" and p.predicted < p.predicted_base
    assert "predicted KL" in p.summary()


@pytest.mark.timeout(300)
def test_cancel_leaves_no_cache_entry(files):
    from app.core.errors import SensitivityCancelled
    from app.core.paths import cache_dir
    from app.core.sensitivity_kl import measure_scales
    from quantizer.sensitivity import tensor_costs

    f16, im, _ = files
    costs = tensor_costs(f16, im, rows=32)
    cancel = threading.Event()

    def stop_after_two(p) -> None:
        if p.step >= 2:
            cancel.set()

    with pytest.raises(SensitivityCancelled):
        measure_scales(f16, im, costs, n_bands=3, n_chunks=1, chunk_size=CHUNK, options=OPTS,
                       progress=stop_after_two, cancel=cancel)
    assert not list((cache_dir() / "sensitivity").glob("kl-*"))


def test_gpu_offload_is_refused(tmp_path):
    from app.core.errors import ImatrixError
    from app.core.sensitivity_kl import KLProbe

    with pytest.raises(ImatrixError, match="CPU only"):
        KLProbe(tmp_path / "model.gguf", "text", options=LoadOptions(n_gpu_layers=1))


def test_groups_are_category_by_band():
    from app.core.sensitivity_kl import groups_of

    names = [f"blk.{i}.{c}.weight" for i in range(28) for c in ("attn_q", "ffn_down")] + ["token_embd.weight"]
    g = groups_of(names, 4)
    assert list(g)[:4] == ["attn_q@0-6", "attn_q@7-13", "attn_q@14-20", "attn_q@21-27"]
    assert sum(len(v) for v in g.values()) == 56 and len(g["ffn_down@21-27"]) == 7
