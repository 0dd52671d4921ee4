"""The probe set format: the built-in sets load; bad sets are refused with the line number and what to fix."""
from __future__ import annotations

import pytest

from app.core.errors import ProbeSetError
from app.core.probes import builtin_sets
from app.core.probes.probeset import load_probe_set, parse_probe_set

GOOD = '''# Purpose: a test set
name = "t"
system = "Be brief."
samples = 2
seed = 10
subjects = ["A", "B"]

[sampling]
greedy = false
temperature = 0.7
max_tokens = 64

[[templates]]
id = "joke"
text = "Tell a joke about {subject}. Use \\\\boxed{} nowhere."

[[templates]]
text = "Criticise {subject}."
'''


def test_good_set_expands_templates_subjects_samples():
    s = parse_probe_set(GOOD)
    assert s.name == "t" and s.system == "Be brief." and s.count() == 2 * 2 * 2
    assert s.sampling.temperature == 0.7 and s.sampling.max_tokens == 64 and not s.sampling.greedy
    probes = list(s.probes())
    assert [(p.template, p.subject, p.sample, p.seed) for p in probes[:3]] == [
        ("joke", "A", 0, 10), ("joke", "A", 1, 11), ("joke", "B", 0, 10)]
    assert probes[0].prompt == "Tell a joke about A. Use \\boxed{} nowhere."
    assert probes[-1].template == "t2" and probes[-1].prompt == "Criticise B."
    assert s.with_samples(5).count() == 20


def test_builtin_sets_load_and_say_their_purpose():
    sets = builtin_sets()
    assert len(sets) == 5
    for p in sets:
        assert p.read_text(encoding="utf-8").startswith("# Purpose:"), p
        s = load_probe_set(p)
        assert s.count() > 0 and s.description
    checkable = load_probe_set(sets[-1])
    assert checkable.checkable and 38 <= len(checkable.subjects) <= 45
    assert all(s.answer is not None for s in checkable.subjects)
    assert "\\boxed{}" in next(checkable.probes()).prompt
    leaders = load_probe_set(sets[0])
    assert "Xi Jinping" in [s.name for s in leaders.subjects] and len(leaders.subjects) >= 10


def test_checkable_answers_are_what_the_problems_say():
    """Spot-check a few answers against the arithmetic in the question text."""
    s = load_probe_set(builtin_sets()[-1])
    by = {x.name: x for x in s.subjects}
    assert by["apples"].answer == 14 - 5 + 3 * 6
    assert by["minutes"].answer == 3 * 24 * 60
    assert by["handshakes"].answer == 45
    assert by["chickens"].answer == 7 and 7 * 4 + 23 * 2 == 74


@pytest.mark.parametrize("text,line,words", [
    ('name = "x"\nsubjects = ["a"\n[[templates]]\ntext = "q"\n', 3, "not valid TOML"),
    ('name = "x"\nsubjects = ["a"]\n', 1, "no [[templates]]"),
    ('subjects = ["a"]\n\n[[templates]]\ntext = "about {subject}"\n\n[[templates]]\nid = "b"\n', 6, "needs text"),
    ('subjects = ["a"]\n[[templates]]\ntext = "q {subject}"\n[[templates]]\ntext = "uses {thing}"\n', 5,
     "uses {thing}"),
    ('[[templates]]\ntext = "q"\n', 1, "no subjects"),
    ('subjects = ["a"]\nsamples = 0\n[[templates]]\ntext = "q"\n', 2, "samples must be"),
    ('subjects = ["a"]\n[sampling]\ngreedy = true\ntemprature = 0.5\n[[templates]]\ntext = "q"\n', 4,
     "unknown sampling key 'temprature'"),
    ('subjects = ["a"]\n[sampling]\nmax_tokens = "lots"\n[[templates]]\ntext = "q"\n', 3, "must be a number"),
    ('subjects = ["a"]\ncolour = "red"\n[[templates]]\ntext = "q"\n', 2, "unknown key 'colour'"),
    ('[[templates]]\ntext = "{question}"\n\n[[subjects]]\nname = "s1"\nquestion = "1+1?"\nanswer = 2\n\n'
     '[[subjects]]\nname = "s2"\nquestion = "2+2?"\nanswer = "four"\n', 12, "answer must be a number"),
    ('subjects = ["a", "a"]\n[[templates]]\ntext = "q"\n', 1, "listed twice"),
    ('subjects = ["a"]\n[[templates]]\nid = "x"\ntext = """multi\nline = "not a key"\n"""\n[[templates]]\n'
     'id = "x"\ntext = "q"\n', 8, "used twice"),
])
def test_bad_sets_are_refused_with_the_line(text, line, words):
    with pytest.raises(ProbeSetError) as e:
        parse_probe_set(text, name="bad.toml")
    msg = str(e.value)
    assert msg.startswith(f"bad.toml: line {line}: "), msg
    assert words in msg


def test_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(ProbeSetError, match="no such probe set file"):
        load_probe_set(tmp_path / "nope.toml")
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'name = "caf\xe9"\n')
    with pytest.raises(ProbeSetError, match="UTF-8"):
        load_probe_set(bad)


def test_cli_refuses_a_bad_set_with_one_line_and_shows_the_judge_prompt(tmp_path, capsys):
    from app.cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text('subjects = ["a"]\n[[templates]]\ntext = "q {nothing}"\n', encoding="utf-8")
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    assert main(["probe", str(bad), str(model)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.toml: line 3:" in err[0] and "{nothing}" in err[0]
    assert main(["probe", "5-checkable-reasoning", str(tmp_path / "missing.gguf")]) == 2
    assert "no such model file" in capsys.readouterr().err
    assert main(["probe", "x", "y", "--show-judge-prompt"]) == 0
    assert "Reply with the digit only." in capsys.readouterr().out
