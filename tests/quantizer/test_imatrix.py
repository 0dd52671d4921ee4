"""quantizer.imatrix: both llama.cpp imatrix formats, written here exactly as llama-imatrix writes them
(tools/imatrix/imatrix.cpp save_imatrix / save_imatrix_legacy), read back, validated, looked up."""
from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from quantizer.errors import ImatrixFileError, QuantizerError
from quantizer.imatrix import Imatrix, imatrix_for, load_imatrix, read_imatrix

CHUNK = 512  # tokens per chunk (n_ctx / n_parallel)


def _stats(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Collector state: name -> (values = sums of squared activations, counts = tokens per matrix)."""
    rng = np.random.default_rng(seed)
    return {
        "blk.0.attn_q.weight": (rng.random(64, dtype=np.float32) * 900, np.array([1536])),
        "blk.0.ffn_down.weight": (rng.random(96, dtype=np.float32) * 50, np.array([1024])),
        # 3 experts of 32 columns; expert 1 saw no tokens
        "blk.1.ffn_up_exps.weight": (rng.random(96, dtype=np.float32) * 70, np.array([640, 0, 128])),
    }


def _expected(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    per = values.reshape(counts.size, -1).astype(np.float32)
    out = np.ones_like(per)
    for j, c in enumerate(counts):
        if c > 0:
            out[j] = per[j] / np.float32(c)
    return out.reshape(-1)


def write_gguf_imatrix(path: Path, stats, *, datasets=("calib.txt",), chunk_count=3, metadata=True,
                       drop: str | None = None, counts_type=np.float32) -> Path:
    w = gguf.GGUFWriter(str(path), "")
    w.kv_data[0].pop("general.architecture", None)  # llama-imatrix writes no architecture
    w.add_type("imatrix")
    if metadata:
        w.add_array("imatrix.datasets", list(datasets))
        w.add_uint32("imatrix.chunk_count", chunk_count)
        w.add_uint32("imatrix.chunk_size", CHUNK)
    for name in sorted(stats):
        values, counts = stats[name]
        if drop != f"{name}.in_sum2":
            w.add_tensor(f"{name}.in_sum2", values.reshape(counts.size, -1).astype(np.float32))
        if drop != f"{name}.counts":
            w.add_tensor(f"{name}.counts", counts.reshape(counts.size, 1).astype(counts_type))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_legacy_imatrix(path: Path, stats, *, trailer: bool = True, chunk_count: int = 3,
                         dataset: str = "calib.txt") -> Path:
    out = bytearray(struct.pack("<i", len(stats)))
    for name in sorted(stats):
        values, counts = stats[name]
        ncall = (int(counts.max()) + CHUNK - 1) // CHUNK
        per = values.reshape(counts.size, -1).astype(np.float32)
        tmp = np.empty_like(per)
        for j, c in enumerate(counts):  # partial data: value 1, count 1
            tmp[j] = (per[j] / np.float32(c) if c else np.float32(1.0)) * np.float32(ncall)
        out += struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", ncall, values.size)
        out += tmp.astype("<f4").tobytes()
    if trailer:
        out += struct.pack("<ii", chunk_count, len(dataset)) + dataset.encode()
    path.write_bytes(bytes(out))
    return path


def test_gguf_format_round_trip(tmp_path):
    stats = _stats()
    im = load_imatrix(write_gguf_imatrix(tmp_path / "im.gguf", stats, datasets=("a.txt", "b.txt")))
    assert isinstance(im, Imatrix) and im.format == "gguf"
    assert im.datasets == ["a.txt", "b.txt"] and im.chunk_count == 3 and im.chunk_size == CHUNK
    assert set(im.weights) == set(stats)
    for name, (values, counts) in stats.items():
        w = im.weights[name]
        assert w.dtype == np.float32 and w.shape == (values.size,)
        np.testing.assert_array_equal(w, _expected(values, counts))
    # the unused expert gets weight 1, the others sum/count
    exps = im.weights["blk.1.ffn_up_exps.weight"].reshape(3, 32)
    assert np.all(exps[1] == 1) and not np.all(exps[0] == 1)


def test_legacy_format_round_trip(tmp_path):
    stats = _stats(1)
    im = load_imatrix(write_legacy_imatrix(tmp_path / "im.dat", stats, chunk_count=7, dataset="wiki.txt"))
    assert im.format == "legacy" and im.chunk_count == 7 and im.datasets == ["wiki.txt"]
    for name, (values, counts) in stats.items():
        # legacy stores (sum/count)*ncall; reading divides by ncall again: float rounding only
        np.testing.assert_allclose(im.weights[name], _expected(values, counts), rtol=1e-6)
    assert read_imatrix(tmp_path / "im.dat").keys() == stats.keys()


def test_legacy_without_trailer_and_zero_ncall(tmp_path):
    p = write_legacy_imatrix(tmp_path / "im.dat", _stats(), trailer=False)
    im = load_imatrix(p)
    assert im.chunk_count == 0 and im.datasets == []
    raw = struct.pack("<i", 1) + struct.pack("<i", 3) + b"a.w" + struct.pack("<ii", 0, 2)
    raw += np.array([2.5, 4.0], "<f4").tobytes()
    (tmp_path / "zero.dat").write_bytes(raw)
    np.testing.assert_array_equal(read_imatrix(tmp_path / "zero.dat")["a.w"], [2.5, 4.0])


@pytest.mark.parametrize("case, needle", [
    ("missing", "does not exist"),
    ("empty", "no entries"),
    ("truncated", "truncated"),
    ("bad_nval", "values"),
    ("gguf_no_metadata", "metadata"),
    ("gguf_model", "not an importance matrix"),
    ("gguf_unpaired", "not counts"),
    ("gguf_no_pairs", "in_sum2"),
    ("gguf_f16_counts", "F32"),
    ("gguf_corrupt", "cannot be parsed"),
    ("nan", "NaN"),
    ("negative", "negative"),
])
def test_bad_files_raise_typed_errors(tmp_path, case, needle):
    p = tmp_path / "im.bin"
    stats = _stats()
    if case == "empty":
        p.write_bytes(b"")
    elif case == "truncated":
        raw = write_legacy_imatrix(tmp_path / "ok.dat", stats, trailer=False).read_bytes()
        p.write_bytes(raw[:-10])
    elif case == "bad_nval":
        p.write_bytes(struct.pack("<i", 1) + struct.pack("<i", 1) + b"x" + struct.pack("<ii", 1, 0))
    elif case == "gguf_no_metadata":
        write_gguf_imatrix(p, stats, metadata=False)
    elif case == "gguf_model":
        w = gguf.GGUFWriter(str(p), "llama")
        w.add_type("model")
        w.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    elif case == "gguf_unpaired":
        write_gguf_imatrix(p, stats, drop="blk.0.attn_q.weight.counts")
    elif case == "gguf_no_pairs":
        write_gguf_imatrix(p, {})
    elif case == "gguf_f16_counts":
        write_gguf_imatrix(p, stats, counts_type=np.float16)
    elif case == "gguf_corrupt":
        p.write_bytes(write_gguf_imatrix(tmp_path / "ok.gguf", stats).read_bytes()[:200])
    elif case in ("nan", "negative"):
        bad = dict(stats)
        v = stats["blk.0.ffn_down.weight"][0].copy()
        v[5] = np.nan if case == "nan" else -3.0
        bad["blk.0.ffn_down.weight"] = (v, stats["blk.0.ffn_down.weight"][1])
        write_gguf_imatrix(p, bad)
    with pytest.raises(ImatrixFileError, match=needle) as ei:
        load_imatrix(p)
    assert isinstance(ei.value, QuantizerError) and isinstance(ei.value, ValueError)
    assert "llama-imatrix" in str(ei.value) or "check the path" in str(ei.value)


def test_imatrix_for_picks_like_llama_quantize(tmp_path):
    stats = _stats()
    im = load_imatrix(write_gguf_imatrix(tmp_path / "im.gguf", stats))
    w = imatrix_for(im, "blk.0.attn_q.weight", (576, 64))
    np.testing.assert_array_equal(w, im.weights["blk.0.attn_q.weight"])
    assert imatrix_for(im, "blk.0.attn_k.weight", (192, 64)) is None  # no entry: quantized without
    assert imatrix_for(None, "blk.0.attn_q.weight", (576, 64)) is None
    exps = imatrix_for(im.weights, "blk.1.ffn_up_exps.weight", (3, 100, 32))
    assert exps.shape == (3, 32) and np.all(exps[1] == 1)
    with pytest.raises(ImatrixFileError, match="different model"):
        imatrix_for(im, "blk.0.ffn_down.weight", (64, 128))
    # a wrongly sized token-embedding entry is ignored, as llama.cpp does
    assert imatrix_for({"token_embd.weight": np.ones(10, np.float32)}, "token_embd.weight", (100, 64)) is None
