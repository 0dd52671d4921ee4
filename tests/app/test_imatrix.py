"""app.core.imatrix against llama.cpp: the ggml_tensor mirror against ggml.h, our file against llama-imatrix's on
the same model and text, llama-quantize given our file against our quantizer given it, and the edges (a killed
run, a short text, cancel, the cache)."""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import gguf
import numpy as np
import pytest

from app.core import ggml_tensor as gt
from app.core.errors import CalibrationTextError, ImatrixCancelled
from app.core.imatrix import builtin_calibration_text, compute_imatrix
from app.core.load_options import LoadOptions
from tests.llama_tools import llama_tool, sdist_dir, tool_env

ROOT = Path(__file__).resolve().parents[2]
CHUNK, N_CHUNKS, THREADS = 128, 3, 2
OPTIONS = LoadOptions(n_threads=THREADS, flash_attn="off")


def _tensors(path: Path) -> tuple[dict, dict[str, np.ndarray], list[str]]:
    r = gguf.GGUFReader(path)
    kv = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    return kv, {t.name: np.array(t.data) for t in r.tensors}, [t.name for t in r.tensors]


# ---- the mirror --------------------------------------------------------------------------------------------
def test_ggml_tensor_mirror_matches_ggml_h(tmp_path):
    """Every field offset and the size of GgmlTensor equal offsetof/sizeof compiled from the sdist's ggml.h."""
    fields = [name for name, _ in gt.GgmlTensor._fields_]
    src = tmp_path / "offsets.c"
    src.write_text('#include <stdio.h>\n#include <stddef.h>\n#include "ggml.h"\nint main(void) {\n'
                   + "".join(f'  printf("{f} %zu\\n", offsetof(struct ggml_tensor, {f}));\n' for f in fields)
                   + '  printf("sizeof %zu\\n", sizeof(struct ggml_tensor));\n'
                   + '  printf("MUL_MAT %d\\nMUL_MAT_ID %d\\n", GGML_OP_MUL_MAT, GGML_OP_MUL_MAT_ID);\n'
                   + "  return 0;\n}\n")
    exe = tmp_path / "offsets"
    subprocess.run(["gcc", str(src), "-I", str(sdist_dir() / "ggml" / "include"), "-o", str(exe)], check=True)
    out = dict(line.split() for line in subprocess.run([str(exe)], capture_output=True, text=True,
                                                        check=True).stdout.splitlines())
    for f in fields:
        assert int(out[f]) == getattr(gt.GgmlTensor, f).offset, f
    assert int(out["sizeof"]) == ctypes.sizeof(gt.GgmlTensor) == 336
    assert (int(out["MUL_MAT"]), int(out["MUL_MAT_ID"])) == (gt.GGML_OP_MUL_MAT, gt.GGML_OP_MUL_MAT_ID)
    gt.self_check()  # and the running libggml agrees


# ---- against llama-imatrix ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def imatrix_pair(smollm2_gguf, tmp_path_factory):
    """(ours, llama-imatrix's) on SmolLM2 Q8_0 over the built-in text: 3 chunks of 128 tokens, batch = chunk,
    2 threads, flash attention off, in both."""
    tmp = tmp_path_factory.mktemp("imatrix")
    model = smollm2_gguf("Q8_0")
    text = tmp / "calibration.txt"
    text.write_text(builtin_calibration_text(), encoding="utf-8")
    ref = tmp / "llama.imatrix.gguf"
    subprocess.run([str(llama_tool("imatrix")), "-m", str(model), "-f", str(text), "-o", str(ref),
                    "-c", str(CHUNK), "-b", str(CHUNK), "-ub", str(CHUNK), "-fa", "off", "--no-ppl",
                    "-t", str(THREADS), "--chunks", str(N_CHUNKS)], check=True, env=tool_env(),
                   capture_output=True)
    ours = tmp / "ours.imatrix.gguf"
    res = compute_imatrix(model, ours, text=text.read_text(encoding="utf-8"), dataset=str(text), chunk_size=CHUNK,
                          n_chunks=N_CHUNKS, options=OPTIONS, use_cache=False)
    assert res.path == ours and res.n_chunks == N_CHUNKS and not res.cached
    return ours, ref


@pytest.mark.timeout(900)
def test_imatrix_equals_llama_imatrix(imatrix_pair):
    ours, ref = imatrix_pair
    kv_o, t_o, order_o = _tensors(ours)
    kv_r, t_r, order_r = _tensors(ref)
    assert kv_o == kv_r  # general.type, imatrix.datasets, chunk_count, chunk_size
    assert kv_o["general.type"] == "imatrix" and kv_o["imatrix.chunk_count"] == N_CHUNKS
    assert order_o == order_r and len(order_o) == 2 * 30 * 7  # 30 layers x 7 matrices, sums + counts
    for name in order_r:
        assert t_o[name].shape == t_r[name].shape, name
        if name.endswith(".counts"):
            assert np.array_equal(t_o[name], t_r[name]), name
            assert t_o[name][0] == N_CHUNKS * CHUNK
        else:
            np.testing.assert_allclose(t_o[name], t_r[name], rtol=1e-5, atol=0, err_msg=name)
    # the last layer's FFN saw every token (all logits requested, so it is not pruned to the last one)
    assert t_o["blk.29.ffn_down.weight.counts"][0] == N_CHUNKS * CHUNK


@pytest.mark.timeout(900)
def test_llama_quantize_with_our_imatrix_equals_our_quantizer(imatrix_pair, smollm2_checkpoint, smollm2_gguf,
                                                              tmp_path):
    """llama-quantize --imatrix OURS and our quantizer given OURS make the same tensors and imatrix metadata."""
    import quantizer
    from tests.quantizer.test_recipes import read_gguf

    ours_im, _ = imatrix_pair
    mine = tmp_path / "ours-Q3_K_S.gguf"
    quantizer.convert(smollm2_checkpoint, mine, "Q3_K_S", imatrix=ours_im, threads=2)
    ref = tmp_path / "llama-Q3_K_S.gguf"
    r = subprocess.run([str(llama_tool("quantize")), "--imatrix", str(ours_im), str(smollm2_gguf("F16")), str(ref),
                        "Q3_K_S", "2"], env=tool_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    kv_m, got, _ = read_gguf(mine)
    kv_r, want, _ = read_gguf(ref)
    assert got.keys() == want.keys()
    for name, (qtype, data) in want.items():
        assert got[name] == (qtype, data), f"{name} ({qtype.name}) differs from llama-quantize's with our imatrix"
    keys = [k for k in kv_r if k.startswith("quantize.imatrix.")]
    assert set(keys) == {"quantize.imatrix.file", "quantize.imatrix.dataset", "quantize.imatrix.entries_count",
                         "quantize.imatrix.chunks_count"}
    assert {k: kv_m.get(k) for k in keys} == {k: kv_r[k] for k in keys}
    _, plain, _ = read_gguf(smollm2_gguf("Q3_K_S"))
    assert sum(got[n][1] != plain[n][1] for n in got) > 100  # the imatrix changed the bytes


# ---- edges -------------------------------------------------------------------------------------------------
def _cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env or dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.timeout(600)
def test_killed_run_leaves_no_file(smollm2_gguf, tmp_path):
    out = tmp_path / "out" / "im.gguf"
    out.parent.mkdir()
    proc = _cli("imatrix", str(smollm2_gguf("Q8_0")), "--chunk-size", "64", "--threads", "1", "-o", str(out))
    time.sleep(6)  # loaded and collecting (the built-in text is ~170 chunks of 64 tokens: minutes)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert list(out.parent.iterdir()) == []
    cache = Path(os.environ["DISTILLDESK_CACHE_DIR"]) if os.environ.get("DISTILLDESK_CACHE_DIR") else None
    if cache is not None and (cache / "imatrix").exists():
        assert not any(p.suffix == ".gguf" and not p.name.startswith(".") for p in (cache / "imatrix").iterdir())


def test_short_text_gets_a_message(smollm2_gguf, tmp_path):
    text = tmp_path / "short.txt"
    text.write_text("Only a few words here.", encoding="utf-8")
    out = tmp_path / "im.gguf"
    proc = _cli("imatrix", str(smollm2_gguf("Q8_0")), "--text", str(text), "-o", str(out))
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "tokens but one chunk needs 512" in lines[0] and "longer text" in lines[0], stderr
    assert not out.exists()
    with pytest.raises(CalibrationTextError, match="one chunk needs 512"):
        compute_imatrix(smollm2_gguf("Q8_0"), out, text="Only a few words here.", options=OPTIONS)


@pytest.mark.timeout(600)
def test_cancel_and_cache(smollm2_gguf, tmp_path):
    model = smollm2_gguf("Q8_0")
    cancel = threading.Event()
    seen = []

    def progress(p):
        seen.append(p)
        cancel.set()

    out = tmp_path / "im.gguf"
    with pytest.raises(ImatrixCancelled):
        compute_imatrix(model, out, chunk_size=64, options=OPTIONS, progress=progress, cancel=cancel)
    assert len(seen) == 1 and seen[0].chunk == 1 and seen[0].n_chunks > 100
    assert list(tmp_path.iterdir()) == []
    first = compute_imatrix(model, out, chunk_size=64, n_chunks=2, options=OPTIONS, progress=seen.append)
    assert not first.cached and first.n_chunks == 2 and out.is_file()
    again = compute_imatrix(model, tmp_path / "again.gguf", chunk_size=64, n_chunks=2, options=OPTIONS)
    assert again.cached and again.path.read_bytes() == out.read_bytes()
    other = compute_imatrix(model, tmp_path / "other.gguf", text=builtin_calibration_text()[::-1], chunk_size=64,
                            n_chunks=2, options=OPTIONS)
    assert not other.cached  # another text is another result


# ---- MoE: MUL_MAT_ID per expert ----------------------------------------------------------------------------
N_EXPERT, N_USED, N_EMBD, N_FF, N_LAYER = 4, 2, 64, 128, 2


def _tiny_moe(path: Path, tokenizer_from: Path) -> Path:
    """A random llama-architecture MoE (Mixtral layout: ffn_gate_inp + 3-D *_exps tensors, 4 experts, 2 used)
    with SmolLM2's tokenizer, F32."""
    src = gguf.GGUFReader(tokenizer_from)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_type("model")
    w.add_name("tiny-moe")
    for k, f in src.fields.items():
        if k.startswith("tokenizer.") and k != "tokenizer.chat_template":
            types = [gguf.GGUFValueType(t) for t in f.types]
            w.add_key_value(k, f.contents(), types[0], sub_type=types[1] if len(types) > 1 else None)
    n_vocab = len(src.fields["tokenizer.ggml.tokens"].contents())
    w.add_context_length(256)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_dimension_count(N_EMBD // 4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_expert_count(N_EXPERT)
    w.add_expert_used_count(N_USED)
    w.add_file_type(0)
    rng = np.random.default_rng(3)

    def r(*shape, s=0.1):
        return (rng.standard_normal(shape) * s).astype(np.float32)

    w.add_tensor("token_embd.weight", r(n_vocab, N_EMBD, s=1.0))
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, np.float32))
    w.add_tensor("output.weight", r(n_vocab, N_EMBD))
    for i in range(N_LAYER):
        b = f"blk.{i}."
        w.add_tensor(b + "attn_norm.weight", np.ones(N_EMBD, np.float32))
        w.add_tensor(b + "attn_q.weight", r(N_EMBD, N_EMBD))
        w.add_tensor(b + "attn_k.weight", r(N_EMBD // 2, N_EMBD))
        w.add_tensor(b + "attn_v.weight", r(N_EMBD // 2, N_EMBD))
        w.add_tensor(b + "attn_output.weight", r(N_EMBD, N_EMBD))
        w.add_tensor(b + "ffn_norm.weight", np.ones(N_EMBD, np.float32))
        w.add_tensor(b + "ffn_gate_inp.weight", r(N_EXPERT, N_EMBD, s=1.0))
        w.add_tensor(b + "ffn_gate_exps.weight", r(N_EXPERT, N_FF, N_EMBD))
        w.add_tensor(b + "ffn_up_exps.weight", r(N_EXPERT, N_FF, N_EMBD))
        w.add_tensor(b + "ffn_down_exps.weight", r(N_EXPERT, N_EMBD, N_FF))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.timeout(600)
def test_moe_experts_equal_llama_imatrix(smollm2_gguf, tmp_path):
    """MUL_MAT_ID: per-expert sums and counts (following the router's choices) equal llama-imatrix's."""
    model = _tiny_moe(tmp_path / "tiny-moe.gguf", smollm2_gguf("Q8_0"))
    chunk, n = 64, 4
    text = tmp_path / "text.txt"
    text.write_text(builtin_calibration_text(), encoding="utf-8")
    ref = tmp_path / "llama.gguf"
    subprocess.run([str(llama_tool("imatrix")), "-m", str(model), "-f", str(text), "-o", str(ref), "-c", str(chunk),
                    "-b", str(chunk), "-ub", str(chunk), "-fa", "off", "--no-ppl", "-t", str(THREADS),
                    "--chunks", str(n)], check=True, env=tool_env(), capture_output=True)
    ours = compute_imatrix(model, tmp_path / "ours.gguf", text=text.read_text(encoding="utf-8"),
                           dataset=str(text), chunk_size=chunk, n_chunks=n, options=OPTIONS, use_cache=False).path
    kv_o, t_o, order_o = _tensors(ours)
    kv_r, t_r, order_r = _tensors(ref)
    assert kv_o == kv_r and order_o == order_r
    for name in order_r:
        if name.endswith(".counts"):
            assert np.array_equal(t_o[name], t_r[name]), name
        else:
            np.testing.assert_allclose(t_o[name], t_r[name], rtol=1e-5, atol=0, err_msg=name)
    counts = t_o["blk.1.ffn_down_exps.weight.counts"].reshape(-1)
    assert counts.shape == (N_EXPERT,) and counts.sum() == n * chunk * N_USED  # every token went to 2 experts
    assert t_o["blk.1.ffn_down_exps.weight.in_sum2"].shape == (N_EXPERT, N_FF)
