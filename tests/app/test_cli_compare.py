"""``distilldesk compare`` and ``distilldesk eval`` end to end (app.cli.main) on the real SmolLM2 GGUFs."""
from __future__ import annotations

import csv
import io
import json

import pytest

from app.cli import main

PROMPT = "What is the capital of France? Answer in one sentence."


@pytest.fixture(scope="module")
def ggufs(smollm2_gguf):
    return {r: str(smollm2_gguf(r)) for r in ("F16", "Q4_K_M", "Q2_K")}


def test_compare_json(ggufs, capsys):
    rc = main(["compare", ggufs["F16"], ggufs["Q4_K_M"], "--prompt", PROMPT, "--max-tokens", "16", "--ctx", "256",
               "--threads", "1", "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    d = json.loads(out)
    for key in ("mean_kld", "median_kld", "max_kld", "top1_agreement", "ppl_reference", "ppl_candidate",
                "first_divergence", "reference_text", "candidate_text"):
        assert key in d, key
    assert d["mean_kld"] > 0 and 0 <= d["top1_agreement"] <= 1 and d["reference_text"]
    assert d["candidate"]["file_type"] == "Q4_K_M" and len(d["tokens"]) >= 1


def test_compare_human_output(ggufs, capsys):
    rc = main(["compare", ggufs["F16"], ggufs["F16"], "--prompt", PROMPT, "--max-tokens", "16", "--ctx", "256",
               "--threads", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "=== reference answer ===" in out and "=== candidate answer ===" in out
    assert "the greedy answers are identical" in out
    assert "mean 0.000000" in out and "top-1 agreement 100.00 %" in out


def test_eval_csv_json_and_table(ggufs, capsys):
    base = ["eval", ggufs["F16"], ggufs["Q4_K_M"], ggufs["Q2_K"], "--ctx", "128", "--chunks", "1",
            "--threads", "1", "--no-save"]
    assert main(base + ["--csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["file_type"] for r in rows] == ["F16", "Q4_K_M", "Q2_K"]
    assert float(rows[1]["mean_kld"]) < float(rows[2]["mean_kld"])
    assert main(base + ["--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert [r["file_type"] for r in js] == ["F16", "Q4_K_M", "Q2_K"] and js[0]["is_reference"]
    assert js[2]["mean_kld"] == pytest.approx(float(rows[2]["mean_kld"]))
    assert main(base) == 0
    out = capsys.readouterr().out
    assert "1 chunks x 128 tokens of sample.txt" in out and "mean KL" in out and "Q2_K" in out


def test_errors_exit_2_with_one_line(ggufs, tmp_path, capsys):
    bad = tmp_path / "bad.gguf"
    bad.write_text("not a model")
    assert main(["compare", ggufs["F16"], str(bad), "--prompt", PROMPT]) == 2
    err = capsys.readouterr().err
    assert err.startswith("distilldesk: error:") and "not a GGUF" in err and len(err.strip().splitlines()) == 1
    from tests.conftest import DATA

    qwen = str(DATA / "deepseek-r1-distill-qwen" / "ggml-vocab-deepseek-r1-qwen.gguf")
    assert main(["eval", ggufs["F16"], qwen, "--no-save"]) == 2
    assert "vocabulary" in capsys.readouterr().err


def test_compare_says_when_the_stored_reference_is_used_and_no_cache_recomputes(ggufs, capsys):
    args = ["compare", ggufs["F16"], ggufs["Q4_K_M"], "--prompt", PROMPT, "--max-tokens", "12", "--ctx", "256",
            "--threads", "1"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "stored answer" not in first
    assert main(["compare", ggufs["F16"], ggufs["Q2_K"], *args[3:]]) == 0
    second = capsys.readouterr().out
    assert "(stored answer and distributions, computed earlier: --no-cache recomputes)" in second
    assert main(["compare", ggufs["F16"], ggufs["Q2_K"], *args[3:], "--no-cache"]) == 0
    assert "stored answer" not in capsys.readouterr().out
    assert main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["reference_cached"] is True


def test_compare_refuses_an_empty_prompt_and_bad_load_settings(ggufs, capsys):
    with pytest.raises(SystemExit) as e:            # refused by the argument parser: one usage line
        main(["compare", ggufs["F16"], ggufs["Q2_K"], "--prompt", "   "])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "prompt is empty" in err and len(err.strip().splitlines()) == 1
    assert main(["compare", ggufs["F16"], ggufs["Q2_K"], "--prompt", PROMPT, "--kv-type", "q8_0",
                 "--flash-attn", "off"]) == 2
    assert "needs flash attention" in capsys.readouterr().err


def test_eval_save_base_then_base_and_chunk_note(ggufs, tmp_path, capsys):
    base = tmp_path / "f16.kld"
    common = ["--ctx", "128", "--threads", "1", "--no-save", "--json"]
    assert main(["eval", ggufs["F16"], ggufs["Q4_K_M"], "--chunks", "1000", "--save-base", str(base), *common]) == 0
    out = capsys.readouterr()
    ours = json.loads(out.out)
    n = ours[0]["n_chunks"]
    assert 1 <= n < 1000 and f"scored {n}, not 1000" in out.err and base.read_bytes()[:8] == b"_logits_"
    assert f"wrote {base}" in out.err
    assert main(["eval", "--base", str(base), ggufs["Q4_K_M"], *common]) == 0
    theirs = json.loads(capsys.readouterr().out)
    assert theirs[0]["file_type"] == "base file" and theirs[1]["mean_kld"] == ours[1]["mean_kld"]
    assert main(["eval", ggufs["F16"], ggufs["Q2_K"], "--chunks", "1000", *common]) == 0
    assert "stored from an earlier run" in capsys.readouterr().err
    (tmp_path / "bad.kld").write_bytes(b"_logits_" + b"\0" * 8)
    assert main(["eval", "--base", str(tmp_path / "bad.kld"), ggufs["Q2_K"], *common]) == 2
    err = capsys.readouterr().err
    assert "bad.kld" in err and len(err.strip().splitlines()) == 1
