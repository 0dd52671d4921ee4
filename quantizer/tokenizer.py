"""Tokenizer export: a Hugging Face byte-level BPE tokenizer -> the ``tokenizer.*`` keys of a llama.cpp GGUF.

Mirrors llama.cpp's converter (``TextModel._set_vocab_gpt2`` / ``get_vocab_base`` / ``get_vocab_base_pre`` and
gguf-py's ``SpecialVocab``) using the ``tokenizers`` library instead of transformers:

* tokens by id, padded to config.json's ``vocab_size`` with ``[PAD<i>]`` tokens of type UNUSED;
* token types: NORMAL, CONTROL (special added tokens and ones that look special, e.g. ``<|...|>``),
  USER_DEFINED (other added tokens);
* ``tokenizer.ggml.pre`` from the sha256 of the token ids of llama.cpp's check text (see pretokenizers.py);
  an unknown hash is refused unless ``pre_tokenizer=`` names one explicitly;
* merges, bos/eos/unk/sep/pad ids, add_bos/add_eos/add_sep, the chat template.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from string import ascii_letters, digits
from typing import Any

from gguf import GGUFValueType as V
from gguf import TokenType

from .arch import Arch
from .checkpoint import load_json
from .errors import MissingFileError, TokenizerError, UnknownPreTokenizerError
from .pretokenizers import CHECK_TEXT, KNOWN_PRE_TOKENIZERS, PRE_TOKENIZER_HASHES

log = logging.getLogger(__name__)

KV = tuple[str, Any, V]
_SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
_ID_KEYS = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "sep": "seperator_token_id",
            "pad": "padding_token_id", "cls": "cls_token_id", "mask": "mask_token_id", "eot": "eot_token_id",
            "eom": "eom_token_id"}
# tokenizer classes whose transformers implementation rebuilds the post-processor from add_bos/add_eos_token
_REBUILDS_POST_PROCESSOR = ("LlamaTokenizerFast", "CodeLlamaTokenizerFast", "GemmaTokenizerFast")
_SPACE_TO_G = {ord(" "): ord(" ") + 256}  # how llama.cpp writes a space inside a merge's part


def export_vocab(folder: Path, cfg: Mapping[str, Any], arch: Arch, *, pre_tokenizer: str | None = None) -> list[KV]:
    """Every ``tokenizer.*`` key llama.cpp's converter writes for this checkpoint, in its order."""
    tok, tj, tcfg = _load(folder)
    out: list[KV] = []
    if arch.vocab_add_space_prefix and tcfg.get("add_prefix_space") is not None:
        out.append(("tokenizer.ggml.add_space_prefix", bool(tcfg["add_prefix_space"]), V.BOOL))
    tokens, types, vocab_size = _tokens(tok, tcfg, cfg)
    out += [("tokenizer.ggml.model", "gpt2", V.STRING),
            ("tokenizer.ggml.pre", choose_pre_tokenizer(tok, tcfg, pre_tokenizer), V.STRING),
            ("tokenizer.ggml.tokens", tokens, V.ARRAY), ("tokenizer.ggml.token_type", types, V.ARRAY)]
    out += _special_vocab(folder, tj, tcfg)
    if vocab_size in arch.vocab_no_bos_sizes:  # LlamaModel.set_vocab: "granite small models"
        out = _set(out, ("tokenizer.ggml.add_bos_token", False, V.BOOL))
    return out


def _set(kvs: list[KV], kv: KV) -> list[KV]:
    """Overwrite a key in place (as GGUFWriter does for a duplicate) or append it."""
    for i, old in enumerate(kvs):
        if old[0] == kv[0]:
            return kvs[:i] + [kv] + kvs[i + 1:]
    return kvs + [kv]


def _load(folder: Path) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    from tokenizers import Tokenizer

    path = folder / "tokenizer.json"
    if not path.is_file():
        extra = " (a SentencePiece tokenizer.model alone is not supported)" if (folder / "tokenizer.model").exists() \
            else ""
        raise MissingFileError(f"{folder} has no tokenizer.json{extra}; download the model's tokenizer.json")
    tj = load_json(path, "tokenizer.json")
    if not isinstance(tj, dict) or (tj.get("model") or {}).get("type") != "BPE":
        raise TokenizerError(f"{path} is not a byte-level BPE tokenizer; DistillDesk exports only those (the "
                             f"Qwen2/Qwen3/Llama-3/SmolLM kind)")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust side raises plain Exceptions for malformed files
        raise TokenizerError(f"{path} cannot be loaded ({e}); download it again") from None
    cfg_path = folder / "tokenizer_config.json"
    tcfg = load_json(cfg_path, "tokenizer_config.json") if cfg_path.is_file() else {}
    if not isinstance(tcfg, dict):
        raise TokenizerError(f"{cfg_path} is not a JSON object; download it again")
    return tok, tj, tcfg


# ---- tokens and types (get_vocab_base) ---------------------------------------------------------------------
def looks_special(token: str) -> bool:
    """TextModel.does_token_look_special."""
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<｜") and token.endswith("｜>"))
            or (token.startswith("<unused") and token.endswith(">")))


def _tokens(tok: Any, tcfg: Mapping[str, Any], cfg: Mapping[str, Any]) -> tuple[list[str], list[int], int]:
    vocab: dict[str, int] = tok.get_vocab(with_added_tokens=True)
    vocab_size = int(cfg.get("vocab_size") or len(vocab))
    if max(vocab.values()) >= vocab_size:
        raise TokenizerError(f"the tokenizer has token id {max(vocab.values())} but config.json says vocab_size "
                             f"= {vocab_size}; tokenizer and config belong to different models")
    by_id: list[str | None] = [None] * vocab_size
    for t, i in vocab.items():  # a repeated id keeps its last token, as a reversed dict would
        by_id[i] = t
    tokens = [f"[PAD{i}]" if t is None else t for i, t in enumerate(by_id)]
    normal, unused = int(TokenType.NORMAL), int(TokenType.UNUSED)
    types = [unused if t is None else normal for t in by_id]
    added = tok.get_added_tokens_decoder()
    for i in sorted(added):
        if not 0 <= i < vocab_size or by_id[i] is None:
            continue
        token = by_id[i]
        if not added[i].normalized:  # llama.cpp assumes CONTROL/USER_DEFINED tokens are pre-normalized
            token = _decode(tok, tok.encode(token, add_special_tokens=False).ids, tcfg)
        if added[i].special or looks_special(token):
            types[i] = int(TokenType.CONTROL)
        else:
            token = token.replace("\u2581", " ")  # pre-normalize user-defined spaces
            types[i] = int(TokenType.USER_DEFINED)
        tokens[i] = token
    return tokens, types, vocab_size


def _decode(tok: Any, ids: list[int], tcfg: Mapping[str, Any]) -> str:
    text = tok.decode(ids, skip_special_tokens=False)
    if tcfg.get("clean_up_tokenization_spaces"):  # transformers' clean_up_tokenization
        for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                     (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
            text = text.replace(a, b)
    return text


# ---- pre-tokenizer (get_vocab_base_pre) --------------------------------------------------------------------
def pre_tokenizer_hash(tok: Any, tcfg: Mapping[str, Any]) -> str:
    """sha256 of ``str(token ids)`` of llama.cpp's check text, encoded as transformers' AutoTokenizer would."""
    if tcfg.get("tokenizer_class") in _REBUILDS_POST_PROCESSOR:
        ids = tok.encode(CHECK_TEXT, add_special_tokens=False).ids
        vocab = tok.get_vocab(with_added_tokens=True)
        bos, eos = (_token_content(tcfg.get(k)) for k in ("bos_token", "eos_token"))
        if tcfg.get("add_bos_token", True) and bos in vocab:
            ids = [vocab[bos]] + ids
        if tcfg.get("add_eos_token", False) and eos in vocab:
            ids = ids + [vocab[eos]]
    else:
        ids = tok.encode(CHECK_TEXT).ids
    return hashlib.sha256(str(list(ids)).encode()).hexdigest()


def choose_pre_tokenizer(tok: Any, tcfg: Mapping[str, Any], override: str | None) -> str:
    if override is not None:
        if override not in KNOWN_PRE_TOKENIZERS:
            raise UnknownPreTokenizerError(
                f"pre-tokenizer {override!r} is not one llama.cpp knows; choose one of: "
                f"{', '.join(sorted(KNOWN_PRE_TOKENIZERS))}")
        return override
    h = pre_tokenizer_hash(tok, tcfg)
    name = PRE_TOKENIZER_HASHES.get(h)
    if name is None:
        raise UnknownPreTokenizerError(
            f"this tokenizer's pre-tokenizer (hash {h}) is not one llama.cpp recognises, so the GGUF could split "
            f"text differently from the original model; if you know which it is, pass it explicitly "
            f"(--pre-tokenizer NAME / pre_tokenizer=NAME, e.g. qwen2, llama-bpe, deepseek-r1-qwen)")
    return name


def _token_content(entry: Any) -> str | None:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and isinstance(entry.get("content"), str):
        return entry["content"]
    return None


# ---- special vocabulary (gguf-py SpecialVocab, as vendored with llama.cpp) ---------------------------------
class _Special:
    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.add: dict[str, bool] = {}
        self.types: tuple[str, ...] = _SPECIAL_TYPES

    def set_id(self, typ: str, tid: Any) -> None:
        if not isinstance(tid, int) or isinstance(tid, bool):
            return
        if tid < 0:
            raise TokenizerError(f"invalid {typ} token id {tid}; fix tokenizer_config.json/config.json")
        self.ids.setdefault(typ, tid)


def _special_vocab(folder: Path, tj: Mapping[str, Any], tcfg_in: Mapping[str, Any]) -> list[KV]:
    sv = _Special()
    tcfg: dict[str, Any] = dict(tcfg_in)
    merges = _merges(tj)
    lowercase, strip_accents = _normalizer_flags(tj.get("normalizer"))
    added_tokens = tj.get("added_tokens") or []
    if tcfg:
        if not tcfg.get("bos_token") and tcfg.get("cls_token"):
            tcfg["bos_token"] = tcfg["cls_token"]
        if not tcfg.get("eos_token") and tcfg.get("sep_token"):
            tcfg["eos_token"] = tcfg["sep_token"]
    if pp := tj.get("post_processor"):
        for proc in pp.get("processors", [pp]):
            _post_processor(sv, proc, tcfg)
    template = None
    if tcfg:
        template = tcfg.get("chat_template", _chat_template_file(folder))
        for typ in sv.types:
            entry = tcfg.get(f"add_{typ}_token")
            if isinstance(entry, bool) and typ not in sv.add:
                sv.add[typ] = entry
            content = _token_content(tcfg.get(f"{typ}_token"))
            if content is not None:
                sv.set_id(typ, next((a.get("id") for a in added_tokens if a.get("content") == content), None))
    config_path = folder / "config.json"
    if config_path.is_file():
        config = load_json(config_path, "config.json")
        for typ in sv.types:
            tid = config.get(f"{typ}_token_id")
            if tid is None and isinstance(config.get("text_config"), dict):
                tid = config["text_config"].get(f"{typ}_token_id")
            sv.set_id(typ, tid)
    out: list[KV] = []
    if merges:
        out.append(("tokenizer.ggml.merges", merges, V.ARRAY))
    else:
        log.warning("the tokenizer has no merges; the GGUF's tokenizer may not work")
    for typ, tid in sv.ids.items():
        if typ in _ID_KEYS:
            out.append((f"tokenizer.ggml.{_ID_KEYS[typ]}", tid, V.UINT32))
    for typ, value in sv.add.items():
        if typ in ("bos", "eos", "sep"):
            out.append((f"tokenizer.ggml.add_{typ}_token", value, V.BOOL))
    out += _chat_template_kv(template)
    if lowercase is not None:
        out.append(("tokenizer.ggml.normalizer.lowercase", lowercase, V.BOOL))
    if strip_accents is not None:
        out.append(("tokenizer.ggml.normalizer.strip_accents", strip_accents, V.BOOL))
    return out


def _merges(tj: Mapping[str, Any]) -> list[str]:
    merges = (tj.get("model") or {}).get("merges") or []
    if not merges or isinstance(merges[0], str):
        return list(merges)
    if isinstance(merges[0], list) and len(merges[0]) == 2:
        # transformers >= 4.45 stores pairs; llama.cpp joins them with a space, encoding spaces as U+0120 + 256
        if set(map(len, merges)) == {2}:
            return [f"{a.translate(_SPACE_TO_G)} {b.translate(_SPACE_TO_G)}" for a, b in merges]
        return [" ".join(part.translate(_SPACE_TO_G) for part in pair) for pair in merges]
    raise TokenizerError("tokenizer.json has merges in an unknown format; download it again")


def _normalizer_flags(norm: Any) -> tuple[bool | None, bool | None]:
    lower = strip = None
    stack = [norm] if isinstance(norm, dict) else []
    while stack:
        n = stack.pop(0)
        t = n.get("type")
        if t == "Lowercase":
            lower = True
        elif t == "StripAccents":
            strip = True
        elif t == "BertNormalizer":
            lower = n.get("lowercase", lower)
            strip = n.get("strip_accents", strip)
        elif t == "Sequence":
            stack = list(n.get("normalizers", [])) + stack
    return lower, strip


def _post_processor(sv: _Special, proc: Mapping[str, Any], tcfg: dict[str, Any]) -> None:
    kind = proc.get("type")
    if kind == "ByteLevel":
        sv.add.setdefault("bos", False)
        sv.add.setdefault("eos", False)
    elif kind == "RobertaProcessing":
        sv.add.update(bos=True, eos=True, sep=True)
        if not tcfg.get("cls_token") and tcfg:
            tcfg["cls_token"] = proc.get("cls", [tcfg.get("bos_token")])[0]
        if not tcfg.get("sep_token") and tcfg:
            tcfg["sep_token"] = proc.get("sep", [tcfg.get("eos_token")])[0]
    elif kind == "TemplateProcessing":
        _template_processing(sv, proc, tcfg)


def _special_of(item: Mapping[str, Any]) -> str | None:
    return (item.get("SpecialToken") or {}).get("id")


def _template_processing(sv: _Special, proc: Mapping[str, Any], tcfg: dict[str, Any]) -> None:
    """SpecialVocab's crude reading of a TemplateProcessing: which special tokens wrap a single sequence."""
    single, pair = proc.get("single", []), proc.get("pair", [])
    first = last = None
    if len(single) > 1:
        bos, cls, eos = (_token_content(tcfg.get(k)) for k in ("bos_token", "cls_token", "eos_token"))
        if first := _special_of(single[0]):
            if not tcfg:
                bos = first
            elif first not in (bos, cls):
                if not bos:
                    tcfg["bos_token"] = bos = first
                if not cls:
                    tcfg["cls_token"] = cls = first
            sv.add["bos"] = first in (bos, cls)
        if last := _special_of(single[-1]):
            if not tcfg:
                eos = last
            elif last != eos:
                for extra in ("eot", "eom"):
                    if extra not in sv.types:
                        sv.types = (*sv.types, extra)
                        tcfg[f"{extra}_token"] = eos
                        break
                tcfg["eos_token"] = eos = last
            sv.add["eos"] = last == eos
    if not pair:
        return
    start = 1 if first and _special_of(pair[0]) == first else 0
    stop = -1 if last and _special_of(pair[-1]) == last else None
    inner = pair[start:stop]
    if not inner or (inner[0].get("Sequence") or {}).get("id") != "A" or (inner[-1].get("Sequence") or {}).get(
            "id") != "B" or not inner[1:-1]:
        return
    seps = (_token_content(tcfg.get("sep_token")), _token_content(tcfg.get("eos_token")))
    middle = inner[1:-1]
    add_sep = bool(_special_of(middle[0]) in seps and not last)
    if len(middle) == 2 and _special_of(middle[1]) in seps:
        add_sep = True
    sv.add["sep"] = add_sep
    if add_sep and not tcfg.get("sep_token") and tcfg:
        tcfg["sep_token"] = tcfg.get("eos_token")


def _chat_template_file(folder: Path) -> Any:
    jinja, js = folder / "chat_template.jinja", folder / "chat_template.json"
    if jinja.is_file():
        template: Any = jinja.read_text(encoding="utf-8")
        extra = sorted((folder / "additional_chat_templates").glob("*.jinja"))
        if extra:
            template = [{"name": "default", "template": template}] + [
                {"name": p.stem, "template": p.read_text(encoding="utf-8")} for p in extra]
        return template
    if js.is_file():
        return json.loads(js.read_text(encoding="utf-8")).get("chat_template")
    return None


def _chat_template_kv(template: Any) -> list[KV]:
    if isinstance(template, str):
        return [("tokenizer.chat_template", template, V.STRING)]
    if not isinstance(template, list):
        return []
    out: list[KV] = []
    names: list[str] = []
    default = None
    for choice in template:
        name = "".join(c if c in ascii_letters + digits else "_" for c in choice.get("name", ""))
        if name and choice.get("template") is not None:
            if name == "default":
                default = choice["template"]
            else:
                names.append(name)
                out.append((f"tokenizer.chat_template.{name}", choice["template"], V.STRING))
    if names:
        out.append(("tokenizer.chat_templates", names, V.ARRAY))
    if default is not None:
        out.append(("tokenizer.chat_template", default, V.STRING))
    return out
