"""app.core.gguf_header: the one GGUF header reader (engine check, compare/eval facts, Library scan) and its
cache keyed by (path, size, mtime_ns)."""
from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from app.core import compare, evaluate, gguf_header, library, logits
from app.core.errors import ModelLoadError

DATA = Path(__file__).resolve().parents[1] / "data"
TOKENS = ["<unk>", "hello", " world", "é", "ß", "\u2581the", "".join(chr(0x4E00 + i) for i in range(5))]


def write_gguf(path: Path, tokens=TOKENS, ftype: int = 15) -> Path:
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_file_type(ftype)
    w.add_context_length(128)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_tensor("a.weight", np.zeros((4, 32), dtype=np.float32))     # 128 params, 512 bytes
    w.add_tensor("b.weight", np.zeros((2, 64), dtype=np.float16))     # 128 params, 256 bytes
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(autouse=True)
def _fresh_cache():
    gguf_header.clear_cache()
    yield
    gguf_header.clear_cache()


def test_header_facts_against_an_independent_computation(tmp_path):
    h = gguf_header.read_header(write_gguf(tmp_path / "tiny-Q4_K_M.gguf"))
    assert (h.architecture, h.name, h.file_type, h.file_type_name) == ("llama", "tiny", 15, "Q4_K_M")
    assert h.n_tensors == 2 and h.n_params == 256 and h.data_bytes == 512 + 256
    assert h.bits_per_weight == pytest.approx(768 * 8 / 256)
    assert h.n_vocab == len(TOKENS) and h.tokenizer_model == "llama" and h.arch_value("context_length") == 128
    stored = b"".join(struct.pack("<Q", len(t.encode())) + t.encode() for t in TOKENS)   # the array as GGUF stores it
    assert h.vocab_sha256 == hashlib.sha256(stored).hexdigest()
    assert h.size_bytes == h.file_size == (tmp_path / "tiny-Q4_K_M.gguf").stat().st_size


def test_vocabulary_fingerprint_tells_different_tokens_apart(tmp_path):
    a = gguf_header.read_header(write_gguf(tmp_path / "a.gguf"))
    b = gguf_header.read_header(write_gguf(tmp_path / "b.gguf", tokens=[*TOKENS[:-1], "other"]))
    c = gguf_header.read_header(write_gguf(tmp_path / "c.gguf", ftype=7))
    assert a.n_vocab == b.n_vocab and a.vocab_sha256 != b.vocab_sha256
    assert a.vocab_sha256 == c.vocab_sha256 and c.file_type_name == "Q8_0"


def test_the_real_r1_vocabulary_file():
    h = gguf_header.read_header(DATA / "deepseek-r1-distill-qwen" / "ggml-vocab-deepseek-r1-qwen.gguf")
    assert h.architecture == "qwen2" and h.n_vocab == 152064 and h.n_tensors == 0
    assert len(h.vocab_sha256) == 64 and h.tokenizer_model == "gpt2"


def test_one_reader_serves_engine_compare_eval_and_library():
    # compare/eval take their facts from gguf_header, and the duplicate readers are gone
    assert compare.read_header is gguf_header.read_header and evaluate.read_header is gguf_header.read_header
    assert library.read_header is gguf_header.read_header
    assert not hasattr(logits, "read_gguf_info") and not hasattr(logits, "GgufInfo")


def test_unchanged_files_are_read_once_changed_files_again(tmp_path, monkeypatch):
    path = write_gguf(tmp_path / "m-Q4_K_M.gguf")
    reads = []
    real = gguf_header._read
    monkeypatch.setattr(gguf_header, "_read", lambda p, size: reads.append(p) or real(p, size))
    first = gguf_header.read_header(path)
    assert gguf_header.read_header(path) is first and len(reads) == 1
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))      # touched: read again
    assert gguf_header.read_header(path) is not first and len(reads) == 2
    write_gguf(path, ftype=7)                                             # rewritten: new facts
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000))
    assert gguf_header.read_header(path).file_type_name == "Q8_0" and len(reads) == 3


def test_broken_files_keep_failing_from_the_cache(tmp_path, monkeypatch):
    good = write_gguf(tmp_path / "good.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good[:-100])
    reads = []
    real = gguf_header._read
    monkeypatch.setattr(gguf_header, "_read", lambda p, size: reads.append(p) or real(p, size))
    for _ in range(2):
        with pytest.raises(ModelLoadError, match="truncated"):
            gguf_header.read_header(cut)
    assert len(reads) == 1
    cut.write_bytes(good)                                                 # fixed (new size): read again
    assert gguf_header.read_header(cut).n_tensors == 2 and len(reads) == 2


def test_a_library_rescan_does_not_parse_unchanged_files_again(monkeypatch):
    from app.core import paths

    folder = paths.models_dir() / "tiny"
    folder.mkdir(parents=True)
    for t in (1, 7, 15):
        write_gguf(folder / f"tiny-{gguf_header.file_type_name(t)}.gguf", ftype=t)
    reads = []
    real = gguf_header._read
    monkeypatch.setattr(gguf_header, "_read", lambda p, size: reads.append(p) or real(p, size))
    [g1] = library.scan()
    [g2] = library.scan()
    assert len(reads) == 3 and g1.ggufs == g2.ggufs
    assert [e.file_type for e in g2.ggufs] == ["F16", "Q8_0", "Q4_K_M"] and g2.ggufs[0].bpw == pytest.approx(24.0)
