"""The bad-input battery (issue 14 §5) as a user meets it on the command line: exit 2, one line on stderr, no
traceback, nothing left behind.  Model-file errors live in test_cli_errors.py, quantizer input errors in
tests/quantizer/test_errors.py; here: nonsense option values, broken chat templates, a data folder that is a file,
a missing subcommand module, --threads beyond the machine, and a quantize killed with SIGKILL."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.cli import main
from tests.conftest import ROOT


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse refusals
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err.rstrip("\n")


# ---- nonsense option values: refused by the parser, before any model is read --------------------------------
NONSENSE = [
    (["chat", "M.gguf", "--max-tokens", "0"], "--max-tokens", "at least 1"),
    (["chat", "M.gguf", "--max-tokens", "-1"], "--max-tokens", "at least 1"),
    (["chat", "M.gguf", "--ctx", "1"], "--ctx", "at least 64"),
    (["chat", "M.gguf", "--temperature", "-1"], "--temperature", "0 (always the most likely token) or more"),
    (["chat", "M.gguf", "--temperature", "nan"], "--temperature", "not a finite number"),
    (["chat", "M.gguf", "--top-p", "2"], "--top-p", "from 0 to 1"),
    (["chat", "M.gguf", "--threads", "0"], "--threads", "at least 1"),
    (["chat", "M.gguf", "--prompt", ""], "--prompt", "the prompt is empty"),
    (["chat", "M.gguf", "--prompt", "  \n "], "--prompt", "the prompt is empty"),
    (["compare", "R.gguf", "C.gguf", "--prompt", "hi", "--max-tokens", "0"], "--max-tokens", "at least 1"),
    (["compare", "R.gguf", "C.gguf", "--prompt", "hi", "--max-tokens", "-1"], "--max-tokens", "at least 1"),
    (["compare", "R.gguf", "C.gguf", "--prompt", "hi", "--threads", "0"], "--threads", "at least 1"),
    (["compare", "R.gguf", "C.gguf", "--prompt", "hi", "--threads", "-5"], "--threads", "at least 1"),
    (["compare", "R.gguf", "C.gguf", "--prompt", ""], "--prompt", "the prompt is empty"),
    (["eval", "R.gguf", "C.gguf", "--chunks", "0"], "--chunks", "at least 1"),
    (["eval", "R.gguf", "C.gguf", "--chunks", "-1"], "--chunks", "at least 1"),
    (["eval", "R.gguf", "C.gguf", "--text", "no-such-file.txt"], "--text", "does not exist"),
    (["quantize", "SRC", "-t", "Q8_0", "--threads", "0"], "--threads", "at least 1"),
]


@pytest.mark.parametrize("argv,option,says", NONSENSE, ids=[" ".join(a[0:1] + a[-2:]) for a, _, _ in NONSENSE])
def test_nonsense_values_are_refused_in_one_line(capsys, argv, option, says):
    code, out, err = run_cli(capsys, argv)
    assert code == 2
    line = one_line(err)
    assert line.startswith(f"distilldesk {argv[0]}: error: argument {option}") and says in line, line
    assert line.endswith(f"(see distilldesk {argv[0]} --help)")


def test_eval_text_that_is_a_folder(capsys, tmp_path):
    code, _, err = run_cli(capsys, ["eval", "R.gguf", "C.gguf", "--text", str(tmp_path)])
    assert code == 2 and f"{tmp_path} is a folder: give a UTF-8 text file" in one_line(err)


def test_ctx_zero_still_means_the_trained_length(capsys):
    from app.cli import build_parser

    assert build_parser().parse_args(["chat", "M.gguf", "--ctx", "0"]).ctx == 0
    assert "0 = the model's trained length" in " ".join(build_parser()._subparsers._group_actions[0]
                                                       .choices["chat"].format_help().split())


def test_threads_beyond_the_machine_are_capped_with_a_note(capsys):
    from app.cli import build_parser
    from quantizer.cpus import usable_cores

    for argv in (["chat", "M.gguf"], ["compare", "R.gguf", "C.gguf", "--prompt", "hi"], ["quantize", "S", "-t", "F16"]):
        args = build_parser().parse_args([*argv, "--threads", "10000"])
        assert args.threads == usable_cores()
        err = capsys.readouterr().err
        assert err == (f"distilldesk: note: --threads 10000 is more than the {usable_cores()} usable cores: using "
                       f"{usable_cores()}\n")


def test_quantize_with_10000_threads_starts_only_usable_workers(tmp_path, monkeypatch):
    """The library caps too: a caller asking for 10000 workers gets the usable cores (it started ~300 before)."""
    from quantizer import stream
    from quantizer.cpus import usable_cores

    assert stream._threads(10000) == usable_cores()
    assert stream._threads(None) >= 1


# ---- the environment ----------------------------------------------------------------------------------------
def test_models_when_the_data_folder_is_a_file(capsys, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("DISTILLDESK_DATA_DIR", str(blocker))
    code, _, err = run_cli(capsys, ["models"])
    assert code == 2
    line = one_line(err)
    assert line == (f"distilldesk: error: DistillDesk's data folder {blocker} cannot be created (a file is in the "
                    f"way): move that file away, or set DISTILLDESK_DATA_DIR to a folder you can write to")
    assert blocker.read_text() == "x"


def test_a_missing_subcommand_module_fails_loudly(monkeypatch):
    """A bundle that lost a command module must not start with the command silently gone."""
    from app import cli

    monkeypatch.setitem(sys.modules, "app.commands.eval", None)  # import of it raises ImportError
    with pytest.raises(ImportError, match="app.commands.eval"):
        cli.build_parser()


# ---- chat templates that are broken or hostile ------------------------------------------------------------------
TEMPLATES = {"syntax": "{% for m in messages %}{{ m.content }{% endfor %}",
             "range": "{% for i in range(10**9) %}x{% endfor %}{{ messages[0].content }}"}


@pytest.fixture(scope="module")
def bad_template_ggufs(smollm2_checkpoint, tmp_path_factory) -> dict[str, Path]:
    import quantizer

    out = {}
    base = tmp_path_factory.mktemp("templates")
    for name, template in TEMPLATES.items():
        folder = base / name
        folder.mkdir()
        for f in smollm2_checkpoint.iterdir():
            if f.name != "tokenizer_config.json":
                (folder / f.name).symlink_to(f)
        cfg = json.loads((smollm2_checkpoint / "tokenizer_config.json").read_text(encoding="utf-8"))
        cfg["chat_template"] = template
        (folder / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
        out[name] = quantizer.convert(folder, base / f"{name}-Q4_0.gguf", "Q4_0").path
    return out


@pytest.mark.parametrize("kind,says", [("syntax", "is not valid Jinja (unexpected '}')"),
                                       ("range", "chat template failed on this conversation (Range too big")])
@pytest.mark.parametrize("command", ["chat", "compare"])
def test_a_broken_chat_template_is_one_line(capsys, bad_template_ggufs, kind, says, command):
    model = str(bad_template_ggufs[kind])
    argv = (["chat", model, "--prompt", "hi", "--no-history", "--ctx", "512"] if command == "chat" else
            ["compare", model, model, "--prompt", "hi", "--max-tokens", "4", "--ctx", "512"])
    t0 = time.monotonic()
    code, out, err = run_cli(capsys, argv)
    assert code == 2 and time.monotonic() - t0 < 60  # the sandbox stops range(10**9) at once
    last = err.rstrip("\n").splitlines()[-1]
    assert "Traceback" not in err and last.startswith("distilldesk: error: ") and says in last, err
    assert [ln for ln in err.splitlines() if not ln.startswith("WARNING app.core.llama_cpp")] == [last], err


# ---- SIGKILL during quantize ------------------------------------------------------------------------------------
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="SIGKILL is POSIX")
def test_a_quantize_killed_with_sigkill_is_listed_then_cleaned_up_by_the_next_run(smollm2_checkpoint, tmp_path):
    """A real process killed outright leaves its ``.NAME.PID.XXXXXXXX.partial``; ``distilldesk models`` lists it
    as unfinished; the next quantize into that folder removes it and finishes."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = Path(env["DISTILLDESK_DATA_DIR"]) / "models" / "smollm2" / "smollm2-Q4_K_M.gguf"
    out.parent.mkdir(parents=True)
    cmd = [sys.executable, "-m", "app.cli", "quantize", str(smollm2_checkpoint), "-t", "Q4_K_M", "-o", str(out),
           "--threads", "1"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            partial = list(out.parent.glob(f".{out.name}.*.partial"))
            if partial and partial[0].stat().st_size > 1 << 20:  # data is being written
                break
            assert proc.poll() is None, "quantize finished before it could be killed"
            time.sleep(0.05)
        else:
            pytest.fail("no partial output appeared")
        os.killpg(proc.pid, signal.SIGKILL)  # the process and any worker it forked
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    partial = list(out.parent.glob(f".{out.name}.*.partial"))
    assert len(partial) == 1 and f".{proc.pid}." in partial[0].name and not out.exists()

    listed = subprocess.run([sys.executable, "-m", "app.cli", "models"], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    line = next(ln for ln in listed.stdout.splitlines() if ln.startswith("unfinished"))
    assert str(partial[0]) in line and "killed; the next quantize into that folder removes it" in line

    again = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert out.is_file() and list(out.parent.glob("*.partial")) == [] and not partial[0].exists()
    listed = subprocess.run([sys.executable, "-m", "app.cli", "models"], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert "unfinished" not in listed.stdout


def test_a_live_conversions_partial_is_never_removed(tmp_path):
    """Only a partial whose writer is gone is stale: this process's own, or a running process's, stays."""
    from quantizer.writer import partial_files, remove_stale_partials

    mine = tmp_path / f".m.gguf.{os.getpid()}.abcd1234.partial"
    mine.write_bytes(b"x")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.2)
        live = tmp_path / f".m.gguf.{sleeper.pid}.efgh5678.partial"
        live.write_bytes(b"y")
        dead_pid = _dead_pid()
        dead = tmp_path / f".m.gguf.{dead_pid}.ijkl9012.partial"
        dead.write_bytes(b"z")
        other = tmp_path / ".notes.txt.partial"  # not ours: wrong shape
        other.write_bytes(b"w")
        assert {f.path.name: f.stale for f in partial_files(tmp_path)} == {mine.name: False, live.name: False,
                                                                           dead.name: True}
        assert remove_stale_partials(tmp_path, "m.gguf") == [dead]
        assert mine.exists() and live.exists() and other.exists() and not dead.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid
