"""Tokenizer export against llama.cpp: the tokenizer part of a published DeepSeek-R1-Distill-Qwen-7B GGUF."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import pytest

from quantizer.arch import get_arch, resolve_config
from quantizer.errors import TokenizerError
from quantizer.tokenizer import export_vocab, pre_tokenizer_hash
from quantizer.writer import StreamingGGUFWriter

from . import tiny_models as tm

R1 = tm.R1_TOKENIZER
R1_GGUF = R1 / "ggml-vocab-deepseek-r1-qwen.gguf"


def _folder(tmp: Path, tokenizer: Path, config: Path | dict) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tokenizer / f).exists():
            shutil.copyfile(tokenizer / f, tmp / f)
    cfg = json.loads(config.read_text()) if isinstance(config, Path) else config
    (tmp / "config.json").write_text(json.dumps(cfg))
    return tmp


def _export(folder: Path, **kw) -> list:
    cfg = json.loads((folder / "config.json").read_text())
    arch = get_arch(cfg)
    return export_vocab(folder, resolve_config(arch, cfg), arch, **kw)


@pytest.fixture(scope="module")
def r1_export(tmp_path_factory) -> list:
    """Our export of the R1 tokenizer files (config-7b.json for the vocab size)."""
    return _export(_folder(tmp_path_factory.mktemp("r1"), R1, R1 / "config-7b.json"))


@pytest.fixture(scope="module")
def r1_vocab_gguf(r1_export, tmp_path_factory) -> Path:
    """The export written as a vocab-only GGUF by our streaming writer."""
    out = tmp_path_factory.mktemp("r1gguf") / "vocab.gguf"
    with StreamingGGUFWriter(out, "qwen2") as w:
        for key, value, vtype in r1_export:
            w.add_kv(key, value, vtype)
        w.begin()
        w.commit()
    return out


@pytest.fixture(scope="module")
def published() -> dict:
    return {k: v for k, v in tm.read_gguf(R1_GGUF)[0].items() if k.startswith("tokenizer.")}


_ITEM_TYPES = {str: gguf.GGUFValueType.STRING, int: gguf.GGUFValueType.INT32, bool: gguf.GGUFValueType.BOOL}


def test_every_tokenizer_field_of_the_published_gguf(r1_export, published):
    ours = {k: (v, t) for k, v, t in r1_export}
    assert set(published) <= set(ours)
    for key, (value, types) in published.items():
        got, vtype = ours[key]
        assert vtype == types[0], key
        if vtype == gguf.GGUFValueType.ARRAY:  # what GGUFWriter.add_array infers for the items
            assert {_ITEM_TYPES[type(x)] for x in got} == {types[1]}, key
        assert got == value, key
    assert ours["tokenizer.ggml.pre"][0] == "deepseek-r1-qwen"
    assert len(ours["tokenizer.ggml.tokens"][0]) == 152064  # padded to config-7b's vocab_size
    # the only extra key is the one llama.cpp 0.3.36's converter adds (the published file predates it)
    assert set(ours) - set(published) == {"tokenizer.ggml.add_sep_token"}
    assert ours["tokenizer.ggml.add_sep_token"][0] is False


def test_padding_tokens_are_unused(r1_export):
    kv = {k: v for k, v, _ in r1_export}
    tokens, types = kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.token_type"]
    assert tokens[151665] == "[PAD151665]" and tokens[-1] == "[PAD152063]"
    assert set(types[151665:]) == {int(gguf.TokenType.UNUSED)}
    assert types[151643] == int(gguf.TokenType.CONTROL) and types[1000] == int(gguf.TokenType.NORMAL)


def test_our_vocab_gguf_reads_back_equal(r1_export, r1_vocab_gguf):
    assert tm.read_gguf(r1_vocab_gguf)[0] == {k: (v, [t] if t != gguf.GGUFValueType.ARRAY else [t, {
        str: gguf.GGUFValueType.STRING, int: gguf.GGUFValueType.INT32}[type(v[0])]]) for k, v, t in r1_export} | {
        "general.architecture": ("qwen2", [gguf.GGUFValueType.STRING])}


def test_llama_cpp_tokenizes_like_the_published_vocab(r1_vocab_gguf):
    from llama_cpp import Llama

    ours = Llama(model_path=str(r1_vocab_gguf), vocab_only=True, verbose=False)
    theirs = Llama(model_path=str(R1_GGUF), vocab_only=True, verbose=False)
    texts = ["Hello world", "<｜User｜>What is 12345 * 678?<｜Assistant｜><think>\n", "  spaces\tand\nlines ü 日本"]
    for text in texts:
        assert ours.tokenize(text.encode(), add_bos=True, special=True) == \
            theirs.tokenize(text.encode(), add_bos=True, special=True)


def test_smollm2_pre_tokenizer_is_smollm(tmp_path):
    folder = _folder(tmp_path, tm.SMOL_TOKENIZER, tm.make_config("llama", 49152))
    kv = {k: v for k, v, _ in _export(folder)}
    assert kv["tokenizer.ggml.pre"] == "smollm"
    assert kv["tokenizer.ggml.add_bos_token"] is False  # llama.cpp's rule for 49152-token vocabularies


def test_qwen2_tokenizer_hash_is_qwen2(tmp_path):
    """Qwen2's own tokenizer is R1's without the BOS the distills prepend: llama.cpp calls that 'qwen2'."""
    folder = _folder(tmp_path, R1, tm.make_config("qwen2", 151936))
    tj = json.loads((folder / "tokenizer.json").read_text())
    tj["post_processor"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                            "use_regex": False}
    (folder / "tokenizer.json").write_text(json.dumps(tj))
    tc = json.loads((folder / "tokenizer_config.json").read_text())
    tc.update(tokenizer_class="Qwen2Tokenizer", add_bos_token=False)
    (folder / "tokenizer_config.json").write_text(json.dumps(tc))
    kv = {k: v for k, v, _ in _export(folder)}
    assert kv["tokenizer.ggml.pre"] == "qwen2"
    assert kv["tokenizer.ggml.add_bos_token"] is False  # from the ByteLevel post-processor


def test_hash_follows_transformers_for_llama_tokenizer_fast(tmp_path):
    """LlamaTokenizerFast adds BOS from add_bos_token even when tokenizer.json's post-processor does not."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(R1 / "tokenizer.json"))
    tcfg = json.loads((R1 / "tokenizer_config.json").read_text())
    with_bos = pre_tokenizer_hash(tok, tcfg)
    tok.post_processor = None
    assert pre_tokenizer_hash(tok, tcfg) == with_bos
    assert pre_tokenizer_hash(tok, {**tcfg, "tokenizer_class": "PreTrainedTokenizerFast"}) != with_bos


def test_user_defined_token(tmp_path):
    folder = _folder(tmp_path, tm.SMOL_TOKENIZER, tm.make_config("llama", 49160))
    tj = json.loads((folder / "tokenizer.json").read_text())
    tj["added_tokens"].append({"id": 49152, "content": "my\u2581word", "single_word": False, "lstrip": False,
                               "rstrip": False, "normalized": False, "special": False})
    (folder / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False))
    kv = {k: v for k, v, _ in _export(folder)}
    assert kv["tokenizer.ggml.tokens"][49152] == "my word"
    assert kv["tokenizer.ggml.token_type"][49152] == int(gguf.TokenType.USER_DEFINED)
    assert kv["tokenizer.ggml.tokens"][49153:] == [f"[PAD{i}]" for i in range(49153, 49160)]


def test_chat_template_sources(tmp_path):
    folder = _folder(tmp_path, tm.SMOL_TOKENIZER, tm.make_config("llama", 49152))
    tc = json.loads((folder / "tokenizer_config.json").read_text())
    tc.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(tc))
    jinja = (folder / "chat_template.jinja").read_text()
    assert {k: v for k, v, _ in _export(folder)}["tokenizer.chat_template"] == jinja
    tc["chat_template"] = "{{ messages[0]['content'] }}"
    (folder / "tokenizer_config.json").write_text(json.dumps(tc))
    assert {k: v for k, v, _ in _export(folder)}["tokenizer.chat_template"] == "{{ messages[0]['content'] }}"


def test_vocab_larger_than_config_is_refused(tmp_path):
    folder = _folder(tmp_path, tm.SMOL_TOKENIZER, tm.make_config("llama", 1000))
    with pytest.raises(TokenizerError, match="vocab_size = 1000"):
        _export(folder)
