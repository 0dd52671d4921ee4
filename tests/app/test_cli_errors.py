"""Every way a model file is refused, through the CLI as a user meets it (``chat``, ``compare``, ``eval``): exit 2,
exactly one line on stderr, one sentence that names the file, says what is wrong (with a reason, never an empty
one) and what to do, and says nothing twice (a ModelLoadError wrapped in another used to repeat itself)."""
from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from app.cli import main
from tests.conftest import DATA

QWEN_VOCAB = DATA / "deepseek-r1-distill-qwen" / "ggml-vocab-deepseek-r1-qwen.gguf"
AGAIN = "probably an interrupted download or copy: download or convert it again"


@pytest.fixture(scope="module")
def good(smollm2_gguf) -> Path:
    return smollm2_gguf("Q2_K")


def _version(data: bytes, v: int) -> bytes:
    return data[:4] + struct.pack("<I", v) + data[8:]


# file name -> (its bytes from the good GGUF's bytes, the whole message after "distilldesk: error: ")
CASES = {
    "notes.gguf": (lambda d: b"these are my notes, not model weights\n" * 20,
                   r"notes\.gguf is not a GGUF file: choose a \.gguf model, or make one with `distilldesk quantize`"),
    "empty.gguf": (lambda d: b"", rf"empty\.gguf is empty \(0 bytes\), {AGAIN}"),
    "stub.gguf": (lambda d: d[:20], rf"stub\.gguf is truncated: it ends after 20 bytes, inside its header, {AGAIN}"),
    "k1.gguf": (lambda d: d[:1000],
                rf"k1\.gguf is truncated or corrupt: its header runs past the end of the file \(1,000 bytes\), "
                rf"{AGAIN}"),
    "half.gguf": (lambda d: d[:len(d) // 2],
                  rf"half\.gguf is truncated: its tensors need [\d,]+ bytes but the file has [\d,]+, {AGAIN}"),
    "magic.gguf": (lambda d: b"GGUX" + d[4:100_000],
                   r"magic\.gguf is not a GGUF file: choose a \.gguf model, or make one with `distilldesk quantize`"),
    "v7.gguf": (lambda d: _version(d[:100_000], 7),
                r"v7\.gguf is GGUF version 7; only versions 2 and 3 are supported: convert the model again with a "
                r"current tool"),
}


def _one_clean_line(capsys, argv: list[str], pattern: str) -> str:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.endswith("\n") and err.count("\n") == 1, err        # exactly one line
    msg = err.removeprefix("distilldesk: error: ").rstrip("\n")
    assert err.startswith("distilldesk: error: ") and re.fullmatch(pattern, msg), msg
    assert not re.search(r"\.\s+[A-Z]", msg), msg                   # one sentence
    assert not re.search(r"\(\s*\)|:\s*\)|:\s*$", msg), msg         # no empty reason
    words = re.findall(r"[\w.']+", msg.lower())
    grams = [" ".join(words[i:i + 4]) for i in range(len(words) - 3)]
    assert len(grams) == len(set(grams)), f"a phrase is said twice: {msg}"
    return msg


@pytest.mark.parametrize("name", list(CASES))
def test_a_bad_model_file_is_one_clean_line_exit_2(good, tmp_path, capsys, name):
    make, pattern = CASES[name]
    bad = tmp_path / name
    bad.write_bytes(make(good.read_bytes()))
    _one_clean_line(capsys, ["chat", str(bad), "--prompt", "hi", "--no-history"], pattern)
    _one_clean_line(capsys, ["compare", str(good), str(bad), "--prompt", "hi"], pattern)
    _one_clean_line(capsys, ["compare", str(bad), str(good), "--prompt", "hi"], pattern)
    _one_clean_line(capsys, ["eval", str(good), str(bad), "--no-save"], pattern)


def test_an_unknown_architecture_is_one_clean_line(good, tmp_path, capsys):
    odd = tmp_path / "odd-arch.gguf"
    data = bytearray(good.read_bytes())
    value = data.index(b"general.architecture") + len(b"general.architecture") + 4 + 8   # type u32, length u64
    assert data[value:value + 5] == b"llama"
    data[value:value + 5] = b"zzzzz"
    odd.write_bytes(data)
    _one_clean_line(capsys, ["chat", str(odd), "--prompt", "hi", "--ctx", "256", "--no-history"],
                    r"llama\.cpp could not load odd-arch\.gguf: unknown model architecture: 'zzzzz'; if the "
                    r"architecture is new, update DistillDesk, otherwise download or convert the model again")


def test_different_vocabularies_and_a_long_prompt_are_one_clean_line(good, capsys):
    vocab = (r"ggml-vocab-deepseek-r1-qwen\.gguf has a vocabulary of 152064 tokens and smollm2-Q2_K\.gguf one of "
             r"49152: they are different models; compare a quantization with the model it was made from")
    _one_clean_line(capsys, ["compare", str(good), str(QWEN_VOCAB), "--prompt", "hi"], vocab)
    _one_clean_line(capsys, ["eval", str(good), str(QWEN_VOCAB), "--no-save"], vocab)
    _one_clean_line(capsys, ["compare", str(good), str(good), "--prompt", "Tell me about bread. " * 80, "--ctx",
                             "256"],
                    r"the prompt takes \d+ tokens but the context holds 256: shorten the prompt or raise the context "
                    r"size \(--ctx\)")
    _one_clean_line(capsys, ["chat", str(good), "--prompt", "Tell me about bread. " * 80, "--ctx", "256",
                             "--no-history"],
                    r"the last message takes \d+ tokens, which leaves less than 64 tokens for the reply in a context "
                    r"of 256: shorten the message, or load the model with a larger context")
