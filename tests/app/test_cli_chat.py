"""``distilldesk chat`` end to end on the real SmolLM2 model."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import main
from app.commands.chat import THINKING, Printer
from app.core.engine import Engine, SamplingSettings
from app.core.history import History
from app.core.thinking import ThinkingParser

ROOT = Path(__file__).resolve().parents[2]
TRANSCRIPTS = Path(__file__).resolve().parent.parent / "data" / "transcripts"
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def model_path(smollm2_gguf) -> Path:
    return smollm2_gguf("Q8_0")


def _greedy_reference(model_path, messages, max_tokens):
    with Engine(model_path, n_ctx=512, n_threads=2) as e:
        return e.chat(messages, settings=SamplingSettings(greedy=True, max_tokens=max_tokens))


def test_one_prompt_prints_the_answer_and_stats_and_saves_history(model_path, capsys):
    rc = main(["chat", str(model_path), "--prompt", QUESTION, "--greedy", "--max-tokens", "30", "--ctx", "512",
               "--threads", "2", "--system", "Answer briefly."])
    out, err = capsys.readouterr()
    assert rc == 0
    ref = _greedy_reference(model_path, [{"role": "system", "content": "Answer briefly."},
                                         {"role": "user", "content": QUESTION}], 30)
    assert out == ref.answer + "\n"
    assert "generated" in err and "tok/s" in err and "first token after" in err
    with History() as h:
        (conv,) = h.conversations()
        msgs = h.messages(conv.id)
    assert [(m.role, m.content) for m in msgs] == [("system", "Answer briefly."), ("user", QUESTION),
                                                  ("assistant", ref.answer)]
    assert msgs[-1].stats["generated_tokens"] == ref.stats.generated_tokens
    assert msgs[-1].stats["finish_reason"] == ref.finish_reason
    assert conv.model_path == str(model_path) and conv.settings["greedy"] is True


def test_interactive_multi_turn_from_stdin(model_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{QUESTION}\n\n/new\nHi!\nName a colour.\n/quit\nignored\n"))
    rc = main(["chat", str(model_path), "--greedy", "--max-tokens", "16", "--ctx", "512", "--threads", "2",
               "--no-history"])
    out, err = capsys.readouterr()
    assert rc == 0 and "[new conversation]" in err and err.count("tok/s") >= 3
    # the same calls on one engine (llama.cpp is not batch-invariant, so the KV cache history matters)
    greedy = SamplingSettings(greedy=True, max_tokens=16)
    with Engine(model_path, n_ctx=512, n_threads=2) as e:
        first = e.chat([{"role": "user", "content": QUESTION}], settings=greedy)
        hi = e.chat([{"role": "user", "content": "Hi!"}], settings=greedy)
        colour = e.chat([{"role": "user", "content": "Hi!"}, hi.as_message(),
                         {"role": "user", "content": "Name a colour."}], settings=greedy)
    assert out == f"{first.answer}\n{hi.answer}\n{colour.answer}\n"   # /new forgot the first exchange
    with History() as h:
        assert h.conversations() == []                               # --no-history


def test_ctrl_c_stops_the_reply_not_the_program(model_path, tmp_path):
    env = {**os.environ, "DISTILLDESK_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "chat", str(model_path), "--greedy", "--ctx", "512",
                             "--max-tokens", "100", "--threads", "2"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        proc.stdin.write(b"Write a very long story about a lighthouse keeper.\n")
        proc.stdin.flush()
        assert proc.stdout.read(1)               # the reply has started streaming
        proc.send_signal(signal.SIGINT)
        proc.stdin.write(b"Thanks!\n/quit\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    err_text = err.decode()
    assert proc.returncode == 0, err_text
    assert "[stopped]" in err_text and err_text.count(" generated (") == 2   # the second message got its reply too
    with History(tmp_path / "data" / "history.sqlite3") as h:
        (conv,) = h.conversations()
        msgs = h.messages(conv.id)
    assert [m.role for m in msgs] == ["user", "assistant", "user", "assistant"]
    assert msgs[1].stats["finish_reason"] == "cancelled" and msgs[1].stats["generated_tokens"] < 100


def test_a_small_context_answers_and_says_when_the_context_cut_the_reply(model_path, capsys):
    """--ctx 1024 with the default --max-tokens (2048): answered (it used to exit 2, "the reply may take up to
    2048 ... the context holds 1024"); a reply that runs into the end of the context says so."""
    rc = main(["chat", str(model_path), "--ctx", "1024", "--prompt", "hi", "--greedy", "--threads", "2",
               "--no-history"])
    out, err = capsys.readouterr()
    assert rc == 0 and out.strip() and "error" not in err
    filler = "You are a patient assistant who lists numbers in full. " * 12
    rc = main(["chat", str(model_path), "--ctx", "256", "--system", filler, "--prompt",
               "Count from 1 to 500, separated by commas.", "--greedy", "--threads", "2", "--no-history"])
    out, err = capsys.readouterr()
    assert rc == 0 and out.startswith("1, 2, 3")
    assert "The reply was cut where the context (256 tokens) ends" in err and "token limit" not in err
    rc = main(["chat", str(model_path), "--ctx", "1024", "--prompt", "Count from 1 to 500, separated by commas.",
               "--greedy", "--max-tokens", "6", "--threads", "2", "--no-history"])
    err = capsys.readouterr().err
    assert rc == 0 and "[reply cut at the token limit: raise --max-tokens" in err and "context" not in err


def test_a_damaged_history_is_set_aside_and_said_once(model_path, tmp_path):
    """In a real process (logging configured by the CLI, not pytest): the notice used to come twice, once as a
    logged warning and once as the CLI's note."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "history.sqlite3").write_bytes(b"this is not an SQLite database\n" * 4)
    env = {**os.environ, "DISTILLDESK_DATA_DIR": str(data), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "app.cli", "chat", str(model_path), "--prompt", "Hi", "--greedy",
                           "--max-tokens", "3", "--ctx", "256", "--threads", "2"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("set aside") == 1 and proc.stderr.startswith("note: The chat history was damaged")
    [aside] = data.glob("history.sqlite3.corrupt-*")
    assert aside.read_bytes().startswith(b"this is not an SQLite database")
    with History(data / "history.sqlite3") as h:
        assert len(h.conversations()) == 1                          # the new history holds this chat


def test_bad_model_file_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "x.gguf"
    bad.write_text("not a model")
    assert main(["chat", str(bad), "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("distilldesk: error: x.gguf is not a GGUF file") and err.count("\n") == 1


def test_printer_shows_reasoning_apart_from_the_answer():
    out, err = io.StringIO(), io.StringIO()
    printer = Printer(out, err)
    text = (TRANSCRIPTS / "r1_arithmetic.txt").read_text(encoding="utf-8")
    parser = ThinkingParser()
    for i in range(0, len(text), 3):
        for seg in parser.feed(text[i:i + 3]):
            printer(seg)
    for seg in parser.flush():
        printer(seg)
    res = parser.finish()
    assert out.getvalue() == res.answer
    reasoning_lines = err.getvalue().rstrip("\n").split("\n")
    assert reasoning_lines[0].startswith(THINKING + "Okay, so I need")
    assert all(line.startswith(THINKING) or line == "" for line in reasoning_lines)
    assert "\n".join(line.removeprefix(THINKING) for line in reasoning_lines) == res.reasoning
