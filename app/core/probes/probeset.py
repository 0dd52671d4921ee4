"""Probe sets: a small TOML file of prompt templates x subjects, read with the standard library's ``tomllib``.

Format (every key but ``templates`` and ``subjects`` is optional)::

    # Purpose: what this set measures (comments are for people; "description" is shown in the app)
    name = "Same question, different name"
    description = "..."
    system = "optional system prompt"
    samples = 1                 # samples per cell (template x subject x model)
    seed = 1234                 # sample k of a cell uses seed + k (each probe's seed is recorded)
    subjects = ["Angela Merkel", "Xi Jinping"]          # plain names, or tables (below)

    [sampling]                  # app.core.chat_types.SamplingSettings fields
    greedy = true               # temperature, top_p, top_k, min_p, max_tokens, greedy
    max_tokens = 1024
    overthinking_penalty = 0.0  # logit bias subtracted from hesitation markers (0 = off; see penalty.py)

    [[templates]]
    id = "joke"                 # optional; default t1, t2, ...
    text = "Tell me a joke about {subject}."

A subject given as a table carries its own placeholders and, for checkable sets, the expected numeric answer::

    [[subjects]]
    name = "apples"             # fills {subject}
    question = "Ann has 3 apples and buys 4 more. How many now?"   # fills {question}
    answer = 7

Placeholders are ``{identifier}``; other braces (``\\boxed{}``) are plain text.  Every placeholder of every
template must be given by every subject.  A bad file raises :class:`~app.core.errors.ProbeSetError` naming the
file and line: TOML syntax errors with tomllib's position, the rest with the line of the offending key or table.
"""
from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..chat_types import SamplingSettings
from ..errors import ProbeSetError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_TOP_KEYS = {"name", "description", "system", "samples", "seed", "subjects", "sampling", "templates", "kind"}
_SAMPLING_KEYS = {f.name for f in fields(SamplingSettings)} - {"seed"}
MAX_SAMPLES = 1000


@dataclass(frozen=True)
class Template:
    id: str
    text: str

    def placeholders(self) -> set[str]:
        return set(PLACEHOLDER.findall(self.text))


@dataclass(frozen=True)
class Subject:
    name: str
    answer: float | None = None
    values: dict[str, str] = field(default_factory=dict)   # extra placeholders


@dataclass(frozen=True)
class Probe:
    """One cell's prompt: (template, subject, sample) -- the model is added by the run."""

    template: str
    subject: str
    sample: int
    seed: int
    prompt: str
    expected: float | None


@dataclass(frozen=True)
class ProbeSet:
    name: str
    description: str
    templates: tuple[Template, ...]
    subjects: tuple[Subject, ...]
    system: str = ""
    samples: int = 1
    seed: int = 0
    sampling: SamplingSettings = field(default_factory=lambda: SamplingSettings(greedy=True, max_tokens=1024))
    source: str = ""            # the TOML text (stored with each run)
    path: str = ""

    @property
    def checkable(self) -> bool:
        return any(s.answer is not None for s in self.subjects)

    def digest(self) -> str:
        return hashlib.sha256(self.source.encode("utf-8")).hexdigest()[:16]

    def with_samples(self, samples: int) -> ProbeSet:
        from dataclasses import replace

        if not 1 <= samples <= MAX_SAMPLES:
            raise ProbeSetError(f"samples must be between 1 and {MAX_SAMPLES}, not {samples}")
        return replace(self, samples=samples)

    def probes(self) -> Iterator[Probe]:
        """Every (template x subject x sample), in a fixed order."""
        for t in self.templates:
            for s in self.subjects:
                values = {"subject": s.name, **s.values}
                text = PLACEHOLDER.sub(lambda m, v=values: v[m.group(1)], t.text)
                for k in range(self.samples):
                    yield Probe(t.id, s.name, k, self.seed + k, text, s.answer)

    def count(self) -> int:
        return len(self.templates) * len(self.subjects) * self.samples


# ---- reading ----------------------------------------------------------------------------------------------------
def load_probe_set(path: str | Path) -> ProbeSet:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProbeSetError(f"{p}: no such probe set file: check the path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ProbeSetError(f"{p}: cannot read the probe set ({e}): it must be a UTF-8 TOML file") from None
    return parse_probe_set(text, name=p.name, path=str(p))


def parse_probe_set(text: str, *, name: str = "<probe set>", path: str = "") -> ProbeSet:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ProbeSetError(f"{name}: line {_toml_line(e)}: not valid TOML ({_toml_reason(e)}): fix the syntax "
                            f"there") from None
    return _Builder(text, data, name, path).build()


def _toml_line(e: Exception) -> int:
    line = getattr(e, "lineno", None)           # Python >= 3.14 has it; older ones only write it in the message
    if line is None:
        m = re.search(r"line (\d+)", str(e))
        line = int(m.group(1)) if m else 1
    return int(line)


def _toml_reason(e: Exception) -> str:
    return re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", str(getattr(e, "msg", e))).strip()


class _Lines:
    """Where keys and tables are in the TOML text (tomllib keeps no positions): ``line(table, index, key)``."""

    def __init__(self, text: str) -> None:
        self._at: dict[tuple[str, int, str], int] = {}
        table, index, counts = "", 0, {}
        in_multiline = False
        for no, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if in_multiline:
                if line.count('"""') % 2 == 1 or line.count("'''") % 2 == 1:
                    in_multiline = False
                continue
            m = re.match(r"^\[\[\s*([A-Za-z0-9_.-]+)\s*\]\]", line) or re.match(r"^\[\s*([A-Za-z0-9_.-]+)\s*\]", line)
            if m:
                table = m.group(1)
                index = counts.get(table, -1) + 1 if line.startswith("[[") else 0
                counts[table] = index
                self._at.setdefault((table, index, ""), no)
                continue
            k = re.match(r"^([A-Za-z0-9_-]+)\s*=", line)
            if k:
                self._at.setdefault((table, index, k.group(1)), no)
                rest = line[k.end():]
                if rest.count('"""') % 2 == 1 or rest.count("'''") % 2 == 1:
                    in_multiline = True

    def line(self, table: str, index: int = 0, key: str = "") -> int:
        return self._at.get((table, index, key)) or self._at.get((table, index, "")) or 1


class _Builder:
    def __init__(self, text: str, data: dict[str, Any], name: str, path: str) -> None:
        self.text, self.data, self.name, self.path = text, data, name, path
        self.lines = _Lines(text)

    def fail(self, line: int, what: str) -> ProbeSetError:
        return ProbeSetError(f"{self.name}: line {line}: {what}")

    def build(self) -> ProbeSet:
        d = self.data
        for key in d:
            if key not in _TOP_KEYS:
                raise self.fail(self.lines.line("", 0, key) if isinstance(d[key], (str, int, float, list, bool))
                                else self.lines.line(key), f"unknown key {key!r}: the keys are "
                                f"{', '.join(sorted(_TOP_KEYS))}")
        templates = self._templates()
        subjects = self._subjects()
        for t_index, t in enumerate(templates):
            for s_index, s in enumerate(subjects):
                missing = t.placeholders() - {"subject"} - set(s.values)
                if missing:
                    raise self.fail(self.lines.line("templates", t_index, "text"),
                                    f"template {t.id!r} uses {{{sorted(missing)[0]}}} but subject {s.name!r} (line "
                                    f"{self._subject_line(s_index)}) does not give it: add "
                                    f"{sorted(missing)[0]} = \"...\" to the subject or remove the placeholder")
        samples = self._int("samples", 1, 1, MAX_SAMPLES)
        seed = self._int("seed", 0, 0, 2**31 - 1)
        return ProbeSet(name=self._str("name", self.name.rsplit(".", 1)[0]), description=self._str("description", ""),
                        templates=tuple(templates), subjects=tuple(subjects), system=self._str("system", ""),
                        samples=samples, seed=seed, sampling=self._sampling(), source=self.text, path=self.path)

    def _str(self, key: str, default: str) -> str:
        v = self.data.get(key, default)
        if not isinstance(v, str):
            raise self.fail(self.lines.line("", 0, key), f"{key} must be a string")
        return v

    def _int(self, key: str, default: int, lo: int, hi: int) -> int:
        v = self.data.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise self.fail(self.lines.line("", 0, key), f"{key} must be a whole number from {lo} to {hi}")
        return v

    def _templates(self) -> list[Template]:
        raw = self.data.get("templates")
        if not isinstance(raw, list) or not raw:
            raise self.fail(self.lines.line("templates"), "the set has no [[templates]]: add at least one "
                            "[[templates]] table with text = \"... {subject} ...\"")
        out, seen = [], set()
        for i, t in enumerate(raw):
            line = self.lines.line("templates", i)
            if not isinstance(t, dict) or not isinstance(t.get("text"), str) or not t["text"].strip():
                raise self.fail(line, "each [[templates]] needs text = \"...\" (a non-empty string)")
            extra = set(t) - {"id", "text"}
            if extra:
                raise self.fail(self.lines.line("templates", i, sorted(extra)[0]),
                                f"unknown template key {sorted(extra)[0]!r}: a template has id and text")
            tid = str(t.get("id") or f"t{i + 1}")
            if tid in seen:
                raise self.fail(self.lines.line("templates", i, "id"), f"template id {tid!r} is used twice")
            seen.add(tid)
            out.append(Template(tid, t["text"]))
        return out

    def _subject_line(self, index: int) -> int:
        if isinstance(self.data.get("subjects"), list) and self.lines.line("subjects", index) != 1:
            return self.lines.line("subjects", index)
        return self.lines.line("", 0, "subjects")

    def _subjects(self) -> list[Subject]:
        raw = self.data.get("subjects")
        if not isinstance(raw, list) or not raw:
            raise self.fail(self.lines.line("", 0, "subjects"), "the set has no subjects: add subjects = [\"...\"] "
                            "or [[subjects]] tables with name = \"...\"")
        out, seen = [], set()
        for i, s in enumerate(raw):
            line = self._subject_line(i)
            if isinstance(s, str):
                s = {"name": s}
            if not isinstance(s, dict) or not isinstance(s.get("name"), str) or not s["name"].strip():
                raise self.fail(line, "each subject is a name (a string) or a table with name = \"...\"")
            answer = s.get("answer")
            if answer is not None and (isinstance(answer, bool) or not isinstance(answer, (int, float))):
                raise self.fail(self.lines.line("subjects", i, "answer"),
                                f"subject {s['name']!r}: answer must be a number (e.g. answer = 42)")
            values = {}
            for k, v in s.items():
                if k in ("name", "answer"):
                    continue
                if not isinstance(v, (str, int, float)) or isinstance(v, bool):
                    raise self.fail(self.lines.line("subjects", i, k), f"subject {s['name']!r}: {k} must be text")
                values[k] = str(v)
            if s["name"] in seen:
                raise self.fail(line, f"subject {s['name']!r} is listed twice")
            seen.add(s["name"])
            out.append(Subject(s["name"], float(answer) if answer is not None else None, values))
        return out

    def _sampling(self) -> SamplingSettings:
        raw = self.data.get("sampling", {})
        if not isinstance(raw, dict):
            raise self.fail(self.lines.line("", 0, "sampling"), "sampling must be a table: [sampling]")
        base = SamplingSettings(greedy=True, max_tokens=1024)
        kw: dict[str, Any] = {}
        for k, v in raw.items():
            line = self.lines.line("sampling", 0, k)
            if k not in _SAMPLING_KEYS:
                raise self.fail(line, f"unknown sampling key {k!r}: use {', '.join(sorted(_SAMPLING_KEYS))} (the "
                                f"seed is the set's top-level seed)")
            want = type(getattr(base, k))
            if want is bool and not isinstance(v, bool) or want in (int, float) and (
                    isinstance(v, bool) or not isinstance(v, (int, float)) or want is int and not isinstance(v, int)):
                raise self.fail(line, f"sampling {k} must be {'true or false' if want is bool else 'a number'}")
            if want is not bool and v < 0 or k == "max_tokens" and not 1 <= v <= 131072:
                raise self.fail(line, f"sampling {k} = {v} is out of range")
            kw[k] = v
        from dataclasses import replace

        return replace(base, **kw)
