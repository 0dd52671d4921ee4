"""The inference engine on the real SmolLM2 model and the real llama.cpp (and R1's real tokenizer + template)."""
from __future__ import annotations

import logging
import os
import shutil
import struct
import threading
from pathlib import Path

import llama_cpp
import numpy as np
import pytest

from app.core.chat_template import ChatTemplate
from app.core.engine import Engine, Message, SamplingSettings, gpu_backend
from app.core.errors import (
    ChatTemplateError,
    ContextOverflowError,
    EngineBusyError,
    EngineError,
    GpuUnavailableError,
    ModelLoadError,
)
from app.core.thinking import prompt_opens_thinking

R1_DIR = Path(__file__).resolve().parent.parent / "data" / "deepseek-r1-distill-qwen"
R1_VOCAB = R1_DIR / "ggml-vocab-deepseek-r1-qwen.gguf"
GREEDY = SamplingSettings(greedy=True, max_tokens=24)


@pytest.fixture(scope="module")
def model_path(smollm2_gguf) -> Path:
    return smollm2_gguf("Q8_0")


@pytest.fixture(scope="module")
def engine(model_path):
    with Engine(model_path, n_ctx=1024, n_threads=2, seed=1) as e:
        yield e


@pytest.fixture(scope="module")
def plain_llama(model_path):
    """llama-cpp-python used directly: the independent oracle for what the model says."""
    llm = llama_cpp.Llama(str(model_path), n_ctx=1024, n_threads=2, verbose=False)
    yield llm
    llm.close()


# ---- loading ----------------------------------------------------------------------------------------------------
def test_info_and_backend(engine, model_path):
    info = engine.info
    assert info.architecture == "llama" and info.vocab_size == 49152 and info.context_length == 8192
    assert info.file_type == "Q8_0" and info.size_bytes == model_path.stat().st_size
    assert 130_000_000 < info.n_params < 140_000_000          # SmolLM2-135M
    assert info.n_ctx == engine.n_ctx == 1024
    assert "<|im_start|>" in info.chat_template
    assert engine.backend == info.backend == "CPU"


def test_gpu_layers_refused_on_a_cpu_build(model_path):
    if gpu_backend() is not None:          # a GPU build: offload is allowed and named
        with Engine(model_path, n_ctx=256, n_gpu_layers=1) as e:
            assert e.backend == gpu_backend()
        return
    # (llama_supports_gpu_offload() is true for any build with RPC: a device is what counts)
    with pytest.raises(GpuUnavailableError, match="no GPU offload.*set GPU layers to 0"):
        Engine(model_path, n_ctx=256, n_gpu_layers=10)


def test_bad_files_are_refused_with_what_to_do(tmp_path, model_path):
    with pytest.raises(ModelLoadError, match="not found"):
        Engine(tmp_path / "nope.gguf")
    with pytest.raises(ModelLoadError, match="not a file"):
        Engine(tmp_path)
    (tmp_path / "notes.gguf").write_text("hello, I am not a model")
    with pytest.raises(ModelLoadError, match="not a GGUF file.*quantize"):
        Engine(tmp_path / "notes.gguf")
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", 2) + b"{}")
    with pytest.raises(ModelLoadError, match="safetensors/pickle checkpoint"):
        Engine(tmp_path / "model.safetensors")

    data = model_path.read_bytes()
    (tmp_path / "half.gguf").write_bytes(data[: len(data) // 2])          # an interrupted download
    with pytest.raises(ModelLoadError, match=r"truncated: its tensors need [\d,]+ bytes but the file has"):
        Engine(tmp_path / "half.gguf")
    (tmp_path / "head.gguf").write_bytes(data[:5000])                      # cut inside the metadata
    with pytest.raises(ModelLoadError, match="truncated or corrupt"):
        Engine(tmp_path / "head.gguf")
    bad = bytearray(data[:4096])
    bad[16:24] = struct.pack("<Q", 1 << 40)                                 # absurd metadata count
    (tmp_path / "corrupt.gguf").write_bytes(bytes(bad))
    with pytest.raises(ModelLoadError, match=r"corrupt\.gguf is corrupt: its header cannot be read \(implausible"):
        Engine(tmp_path / "corrupt.gguf")


def test_unknown_architecture_is_refused(tmp_path):
    import gguf

    path = tmp_path / "alien.gguf"
    w = gguf.GGUFWriter(str(path), "notamodel")
    w.add_tensor("alien.weight", np.zeros((4, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelLoadError, match="'notamodel'.*update DistillDesk"):
        Engine(path, n_ctx=256)


def test_too_big_for_ram_without_mmap(tmp_path, model_path):
    big = tmp_path / "huge.gguf"
    shutil.copyfile(model_path, big)
    os.truncate(big, 1 << 42)                   # a 4 TiB sparse file: no machine has that much free memory
    with pytest.raises(ModelLoadError, match="memory mapping on"):
        Engine(big, use_mmap=False)


def test_larger_than_all_ram_is_refused_even_with_mmap(model_path, monkeypatch):
    import app.core.engine as engine_mod
    from app.core.llama_runtime import available_memory, total_memory

    assert total_memory() >= available_memory() > 0               # the real probes
    size = model_path.stat().st_size
    monkeypatch.setattr(engine_mod, "available_memory", lambda: 1)  # mmap on: what is free now does not matter
    monkeypatch.setattr(engine_mod, "total_memory", lambda: size - 1)
    mb = f"{size / 1e6:.1f} MB"
    with pytest.raises(ModelLoadError, match=rf"is {mb} but this machine has only {mb} of RAM in all.*smaller "
                                             rf"quantization"):
        Engine(model_path, n_ctx=256)
    with Engine(model_path, vocab_only=True) as e:                 # the tokenizer alone still loads
        assert e.tokenize("hi")
    monkeypatch.setattr(engine_mod, "total_memory", lambda: size + 1)
    with Engine(model_path, n_ctx=256, n_threads=2) as e:
        assert e.complete("Hi", settings=SamplingSettings(greedy=True, max_tokens=2)).tokens
    monkeypatch.setattr(engine_mod, "total_memory", lambda: None)  # unknown: not refused
    Engine(model_path, n_ctx=256).close()
    monkeypatch.setattr(engine_mod, "total_memory", lambda: 1 << 50)
    with pytest.raises(ModelLoadError, match="memory mapping on"):   # mmap off: what is free now matters
        Engine(model_path, n_ctx=256, use_mmap=False)


def test_llama_cpp_log_goes_to_logging_not_the_terminal(model_path, capfd, caplog):
    capfd.readouterr()
    with caplog.at_level(logging.DEBUG, logger="app.core.llama_cpp"):
        with Engine(model_path, n_ctx=256, n_threads=2) as e:
            e.complete("Hello", settings=SamplingSettings(greedy=True, max_tokens=4))
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    msgs = [r.getMessage() for r in caplog.records if r.name == "app.core.llama_cpp"]
    assert any("n_ctx" in m for m in msgs), msgs[:5]     # llama.cpp's context report arrived as log records


def test_close_frees_and_refuses_later_use(model_path):
    e = Engine(model_path, n_ctx=256)
    e.close()
    e.close()                                     # idempotent
    assert e.closed
    with pytest.raises(EngineError, match="closed"):
        e.complete("Hi", settings=GREEDY)


# ---- generation -------------------------------------------------------------------------------------------------
def test_greedy_completion_matches_plain_llama_cpp(engine, plain_llama):
    r = engine.complete("The capital of France is", settings=GREEDY)
    ref = plain_llama.create_completion("The capital of France is", temperature=0.0, max_tokens=24)
    assert "Paris" in r.text
    assert r.text == ref["choices"][0]["text"]
    assert r.finish_reason == "length" and r.stats.generated_tokens == 24 and len(r.tokens) == 24
    assert r.text == engine.detokenize(r.tokens)


def test_greedy_chat_matches_llama_cpp_chat_completion(engine, plain_llama):
    msgs = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    segs = []
    r = engine.chat(msgs, settings=SamplingSettings(greedy=True, max_tokens=40), on_text=segs.append)
    ref = plain_llama.create_chat_completion(msgs, temperature=0.0, max_tokens=40)
    assert r.text == ref["choices"][0]["message"]["content"]
    assert r.finish_reason == ("stop" if ref["choices"][0]["finish_reason"] == "stop" else "length")
    # SmolLM2 does not think: everything is answer, flagged as skipped reasoning
    assert r.reasoning == "" and r.skipped_reasoning and r.answer == r.text.strip()
    assert "".join(s.text for s in segs if s.kind == "answer") == r.answer
    st = r.stats
    assert st.prompt_tokens == len(engine.prepare(msgs, max_tokens=40).tokens)
    assert st.time_to_first_token_s > 0 and st.decode_tokens_per_s > 0 and st.prompt_tokens_per_s > 0


def test_multibyte_characters_split_across_tokens_are_decoded_whole(engine):
    import codecs

    text = "Grüße aus Zürich 😊 日本語のテキスト ✓"
    toks = engine.tokenize(text, special=False)
    pieces = [engine._piece(t) for t in toks]
    assert b"".join(pieces) == text.encode("utf-8")
    assert any(_invalid_utf8(p) for p in pieces), "this text should split a character across tokens"
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    assert "".join(dec.decode(p) for p in pieces) + dec.decode(b"", final=True) == text


def _invalid_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def test_cancel_mid_stream_keeps_the_partial_reply(engine):
    cancel = threading.Event()
    seen = []

    def on_text(seg):
        seen.append(seg)
        if len(seen) == 5:
            cancel.set()

    msgs = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
    r = engine.chat(msgs, settings=SamplingSettings(greedy=True, max_tokens=200), on_text=on_text, cancel=cancel)
    assert r.finish_reason == "cancelled"
    assert 5 <= r.stats.generated_tokens <= 8
    assert r.answer == "".join(s.text for s in seen).strip()
    # the engine is fine afterwards: the same request uncancelled starts with the same text
    full = engine.chat(msgs, settings=SamplingSettings(greedy=True, max_tokens=r.stats.generated_tokens + 5))
    assert full.text.startswith(r.text)


def test_cancel_before_start_stops_during_the_prompt(engine):
    cancel = threading.Event()
    cancel.set()
    r = engine.complete("Once upon a time", settings=SamplingSettings(max_tokens=50), cancel=cancel)
    assert r.finish_reason == "cancelled" and r.stats.generated_tokens == 0 and r.text == ""


class _SetAfter(threading.Event):
    """An event that turns itself on after ``n`` looks: a cancel that lands in the middle of the prompt."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.looks = n, 0

    def is_set(self) -> bool:
        self.looks += 1
        if self.looks >= self.n:
            self.set()
        return super().is_set()


def test_cancel_aborts_a_long_prompt_mid_evaluation_and_the_engine_recovers(engine, plain_llama):
    prompt = "The sea was calm that night. " * 60          # ~420 tokens, one batch: hundreds of graph nodes
    cancel = _SetAfter(40)
    r = engine.complete(prompt, settings=GREEDY, cancel=cancel)
    assert r.finish_reason == "cancelled" and r.stats.generated_tokens == 0
    assert 40 <= cancel.looks < 200                         # stopped by llama.cpp's abort callback, mid-graph
    again = engine.complete(prompt, settings=GREEDY)
    ref = plain_llama.create_completion(prompt, temperature=0.0, max_tokens=24)
    assert again.text == ref["choices"][0]["text"] and again.finish_reason == "length"


def test_seeded_sampling_is_reproducible(engine):
    s = SamplingSettings(seed=1234, max_tokens=10, temperature=1.0)
    a = engine.complete("My favourite animal is", settings=s).text
    b = engine.complete("My favourite animal is", settings=s).text
    assert a == b
    others = {engine.complete("My favourite animal is", settings=SamplingSettings(seed=k, max_tokens=10,
                                                                                 temperature=1.0)).text
              for k in range(3)}
    assert len(others) > 1            # different seeds do sample differently


def test_one_owner_a_second_call_while_generating_is_refused(engine):
    errors = []

    def on_text(_seg):
        if not errors:
            try:
                engine.complete("x", settings=GREEDY)
            except EngineBusyError as e:
                errors.append(e)

    engine.chat([{"role": "user", "content": "Hi"}], settings=SamplingSettings(greedy=True, max_tokens=3),
                on_text=on_text)
    assert errors and "already answering" in str(errors[0])


# ---- multi-turn ---------------------------------------------------------------------------------------------------
def test_earlier_reasoning_is_not_sent_back(engine):
    msgs = [Message("user", "Hi"), Message("assistant", "Hello there!", reasoning="SECRET-REASONING"),
            Message("user", "How are you?")]
    text = engine.prepare(msgs, max_tokens=10).text
    assert "Hello there!" in text and "SECRET" not in text
    # an answer that still holds its think block is cut at </think>
    msgs[1] = Message("assistant", "<think>\nSECRET\n</think>\n\nHello there!")
    assert "SECRET" not in engine.prepare(msgs, max_tokens=10).text


def test_follow_up_reuses_the_kv_cache_like_llama_cpp_python(model_path):
    """The second turn evaluates only the new tokens, and says exactly what llama-cpp-python's own chat (which
    reuses its cache the same way) says.  (A fresh engine may differ slightly: llama.cpp is not batch-invariant,
    and the first answer's KV entries were computed one token at a time.)"""
    msgs = [{"role": "user", "content": "Name a fruit."}]
    llm = llama_cpp.Llama(str(model_path), n_ctx=1024, n_threads=2, verbose=False)
    try:
        with Engine(model_path, n_ctx=1024, n_threads=2) as e:
            r1 = e.chat(msgs, settings=GREEDY)
            ref1 = llm.create_chat_completion(msgs, temperature=0.0, max_tokens=24)
            assert r1.text == ref1["choices"][0]["message"]["content"]
            msgs += [{"role": "assistant", "content": r1.text}, {"role": "user", "content": "Name another one."}]
            r2 = e.chat(msgs, settings=GREEDY)
            ref2 = llm.create_chat_completion(msgs, temperature=0.0, max_tokens=24)
    finally:
        llm.close()
    assert r2.stats.prompt_tokens_evaluated < r2.stats.prompt_tokens / 2
    assert r2.text == ref2["choices"][0]["message"]["content"]


def test_overflow_drops_the_oldest_turns_and_says_so(model_path):
    with Engine(model_path, n_ctx=256, n_threads=2) as e:
        msgs = [Message("system", "You are terse.")]
        for i in range(6):
            msgs += [Message("user", f"Question number {i}: " + "tell me about the sea " * 6),
                     Message("assistant", f"Answer number {i}: " + "the sea is large " * 6)]
        msgs.append(Message("user", "Last question: what colour is the sky?"))
        max_tokens = 32
        prep = e.prepare(msgs, max_tokens=max_tokens)
        assert prep.dropped_turns >= 1 and len(prep.tokens) + max_tokens <= 256
        assert "You are terse." in prep.text and "Last question" in prep.text
        assert "Question number 0" not in prep.text and "Answer number 5" in prep.text
        # dropping one turn fewer would not have fitted
        kept_more = [msgs[0]] + msgs[1 + 2 * (prep.dropped_turns - 1):]
        assert len(e.tokenize(e.render_prompt(kept_more))) + max_tokens > 256
        r = e.chat(msgs, settings=SamplingSettings(greedy=True, max_tokens=max_tokens))
        assert r.dropped_turns == prep.dropped_turns and r.notice and "oldest" in r.notice
        assert r.stats.prompt_tokens == len(prep.tokens)

        with pytest.raises(ContextOverflowError, match="the last message takes .* larger context"):
            e.chat([Message("user", "word " * 400)], settings=SamplingSettings(max_tokens=16))
        with pytest.raises(ContextOverflowError, match="the last message and the system prompt take"):
            e.chat([Message("system", "Be brief."), Message("user", "word " * 400)])
        with pytest.raises(ContextOverflowError, match="the prompt takes .* larger context"):
            e.complete("word " * 250, settings=SamplingSettings(max_tokens=16))


# a system prompt that fills most of a 512-token context (kept whole: only turns after it are left out)
FILLER = "You are a patient assistant who answers every question with care and lists numbers in full. " * 18
COUNT = "Count from 1 to 500, separated by commas."


def test_a_small_context_answers_with_default_settings_and_the_reply_stops_where_the_context_ends(model_path):
    """The default max_tokens (2048) is more than a 512-token context: the reply gets what the context leaves
    (it used to be refused, 2048 tokens being reserved for it).  Turns are left out only when the prompt leaves
    less than min(max_tokens, n_ctx // 4) = 128 tokens."""
    d = SamplingSettings()
    assert d.max_tokens > 512
    with Engine(model_path, n_ctx=512, n_threads=2, seed=3) as e:
        assert e.reply_room(d.max_tokens) == 128 and e.reply_room(16) == 16
        r = e.chat([Message("user", "Hi! How are you?")])                       # default settings, sampled
        assert r.tokens and r.stats.prompt_tokens + r.stats.generated_tokens <= 512
        msgs = [Message("system", FILLER), Message("user", COUNT)]
        prep = e.prepare(msgs, max_tokens=d.max_tokens)
        assert prep.dropped_turns == 0 and 300 < len(prep.tokens) <= 512 - 128
        greedy = SamplingSettings(greedy=True)
        r = e.chat(msgs, settings=greedy)
        assert r.finish_reason == "length" and r.context_full
        assert len(prep.tokens) + len(r.tokens) == 512 and r.stats.prompt_tokens == len(prep.tokens)
        assert r.notice == ("The reply was cut where the context (512 tokens) ends: start a new conversation, or "
                            "load the model with a larger context.")
        r5 = e.chat(msgs, settings=SamplingSettings(greedy=True, max_tokens=5))  # max_tokens cut it, not the context
        assert r5.finish_reason == "length" and not r5.context_full and r5.notice is None and len(r5.tokens) == 5
        assert r.text.startswith(r5.text)
        c = e.complete(list(prep.tokens), settings=greedy)                     # plain continuation: the same rule
        assert c.finish_reason == "length" and c.context_full and len(prep.tokens) + len(c.tokens) == 512
        # a conversation: the oldest turns go until the prompt leaves 128 tokens, and the reply says both things
        long = [Message("system", "You count.")]
        for i in range(8):
            long += [Message("user", f"Question {i}: " + "tell me about the sea " * 6),
                     Message("assistant", f"Answer {i}: " + "the sea is large " * 6)]
        long.append(Message("user", COUNT))
        prep = e.prepare(long, max_tokens=d.max_tokens)
        assert prep.dropped_turns >= 1 and len(prep.tokens) <= 512 - 128
        kept_more = [long[0]] + long[1 + 2 * (prep.dropped_turns - 1):]
        assert len(e.render_tokens(kept_more).tokens) > 512 - 128              # one turn fewer would not fit
        r = e.chat(long, settings=greedy)
        assert r.dropped_turns == prep.dropped_turns and r.stats.prompt_tokens == len(prep.tokens)
        assert f"the oldest {prep.dropped_turns} turns were left out" in r.notice
        assert ("context (512 tokens) ends" in r.notice) == r.context_full


@pytest.mark.parametrize("asked", [1, 64])
def test_short_contexts_are_rounded_like_llama_cpp_and_generate_past_the_asked_size(model_path, asked):
    """llama.cpp pads n_ctx to a multiple of 256; llama-cpp-python used to size its token buffer for the number
    asked, so Engine(n_ctx=64) dropped tokens past 64 and then crashed (numpy broadcast error) on the next turn."""
    with Engine(model_path, n_ctx=asked, n_threads=2) as e:
        assert e.n_ctx == e.info.n_ctx == 256
        assert len(e.llama.input_ids) >= 256                    # llama-cpp-python's buffer covers the context
        r1 = e.complete("Once upon a time", settings=SamplingSettings(greedy=True, max_tokens=70))
        assert len(r1.tokens) == 70 and r1.finish_reason == "length"          # 74 tokens in a context "of 64"
        msgs = [{"role": "user", "content": "Tell me a story about the sea. " * 8}]
        r2 = e.chat(msgs, settings=SamplingSettings(greedy=True, max_tokens=8))
        r3 = e.chat(msgs, settings=SamplingSettings(greedy=True, max_tokens=8))
    assert r2.stats.prompt_tokens > 64 and r2.text == r3.text
    assert r3.stats.prompt_tokens_evaluated == 1                # the cached prefix was recorded intact


def test_context_sizes_round_up_to_a_multiple_of_256(model_path):
    from app.core.engine import context_size

    assert [context_size(n) for n in (1, 255, 256, 257, 300, 4096)] == [256, 256, 256, 512, 512, 4096]
    assert context_size(0, trained=8192) == 8192 and context_size(0, trained=2000) == 2048
    with Engine(model_path, n_ctx=300, n_threads=2) as e:
        assert e.n_ctx == 512 and len(e.llama.input_ids) >= 512


@pytest.mark.parametrize("bad", [-1, 1.5, "4096", True, None, 1 << 30])
def test_nonsense_context_sizes_are_refused(model_path, bad):
    from app.core.errors import EngineSettingError

    with pytest.raises(EngineSettingError, match="context size .* is not valid"):
        Engine(model_path, n_ctx=bad)
    with pytest.raises(ValueError):
        Engine(model_path, n_ctx=bad)


def test_context_zero_is_the_trained_length(model_path):
    with Engine(model_path, n_ctx=0, n_threads=2) as e:
        assert e.n_ctx == e.info.context_length == 8192


def test_conversation_must_end_with_the_user(engine):
    with pytest.raises(ValueError, match="end with a user message"):
        engine.prepare([Message("user", "a"), Message("assistant", "b")], max_tokens=4)


# ---- R1's real template (tokenizer-only GGUF) -------------------------------------------------------------------
@pytest.fixture(scope="module")
def r1():
    with Engine(R1_VOCAB, vocab_only=True) as e:
        yield e


def test_r1_template_renders_like_deepseek_with_reasoning_dropped(r1):
    msgs = [Message("system", "You are a helpful assistant."), Message("user", "What is 2+2?"),
            Message("assistant", "2 + 2 = **4**.", reasoning="Simple: 2 plus 2 is 4."),
            Message("user", "And 3+3?")]
    text = r1.render_prompt(msgs)
    assert text == ("<｜begin▁of▁sentence｜>You are a helpful assistant.<｜User｜>What is 2+2?<｜Assistant｜>"
                    "2 + 2 = **4**.<｜end▁of▁sentence｜><｜User｜>And 3+3?<｜Assistant｜>")
    assert r1.info.chat_template == (R1_DIR / "chat_template.jinja").read_text(encoding="utf-8").strip()
    prep = r1.prepare(msgs, max_tokens=64)
    bos = r1.llama.token_bos()
    assert prep.tokens[0] == bos and prep.tokens.count(bos) == 1       # BOS from the template, not doubled
    assert prep.tokens[-1] == 151645 and not prep.starts_in_reasoning    # <｜Assistant｜>
    with pytest.raises(EngineError, match="vocabulary only"):
        r1.chat(msgs)


def test_newer_r1_template_opens_the_think_block(r1, monkeypatch):
    src = r1.info.chat_template.replace("{{'<｜Assistant｜>'}}{% endif %}",
                                        "{{'<｜Assistant｜><think>\\n'}}{% endif %}")
    assert src != r1.info.chat_template
    monkeypatch.setattr(r1, "_template", ChatTemplate(src, bos_token="<｜begin▁of▁sentence｜>"))
    prep = r1.prepare([Message("user", "Hi")], max_tokens=16)
    assert prep.text.endswith("<｜Assistant｜><think>\n") and prep.starts_in_reasoning
    assert prompt_opens_thinking(prep.text)
    assert 151648 in prep.tokens                                           # <think> is one token


def test_templates_run_in_a_sandbox():
    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(ChatTemplateError, match="unsafe"):
        ChatTemplate(evil).render([{"role": "user", "content": "x"}])
    mutate = "{% set _ = messages.append({'role': 'user', 'content': 'x'}) %}ok"
    with pytest.raises(ChatTemplateError):
        ChatTemplate(mutate).render([{"role": "user", "content": "x"}])
    refusing = "{% if messages[0]['role'] != 'system' %}{{ raise_exception('System first!') }}{% endif %}"
    with pytest.raises(ChatTemplateError, match="System first!"):
        ChatTemplate(refusing).render([{"role": "user", "content": "x"}])
    dated = "{{ strftime_now('%Y') }}|{{ messages | tojson }}"
    out = ChatTemplate(dated).render([{"role": "user", "content": "héllo"}])
    assert out[:4].isdigit() and '"héllo"' in out
    with pytest.raises(ChatTemplateError, match="not valid Jinja"):
        ChatTemplate("{% for %}")
