"""Probe runs in SQLite (``<data dir>/probes.sqlite3``): one row per run, one per finished probe.

Each probe's result is committed as soon as it is finished (WAL, ``synchronous=FULL``), so a run stopped, or
killed with SIGKILL, loses at most the probes that were being decoded; starting the same run again
(:meth:`ProbeStore.find_unfinished`, matched by :func:`run_key`) skips every probe already stored.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import ProbeRunError
from ..paths import data_dir

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    created REAL NOT NULL,
    set_name TEXT NOT NULL,
    set_path TEXT NOT NULL DEFAULT '',
    set_source TEXT NOT NULL,
    models_json TEXT NOT NULL,
    judge TEXT,
    samples INTEGER NOT NULL,
    settings_json TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'running'
);
CREATE TABLE IF NOT EXISTS results (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    model TEXT NOT NULL, template TEXT NOT NULL, subject TEXT NOT NULL, sample INTEGER NOT NULL,
    seed INTEGER NOT NULL, prompt TEXT NOT NULL, text TEXT NOT NULL, reasoning TEXT NOT NULL, answer TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL, reasoning_tokens INTEGER NOT NULL, answer_tokens INTEGER NOT NULL,
    wall_s REAL NOT NULL, finish TEXT NOT NULL, skipped_reasoning INTEGER NOT NULL, unterminated INTEGER NOT NULL,
    refusal TEXT, expected REAL, extracted TEXT, value REAL, correct INTEGER, lost_answer INTEGER NOT NULL,
    judge_score INTEGER, created REAL NOT NULL,
    PRIMARY KEY (run_id, model, template, subject, sample)
);
"""


@dataclass(frozen=True)
class ProbeResult:
    """One finished probe.  ``model`` is the GGUF's path; ``correct``/``expected`` are None for open sets;
    ``lost_answer``: the right number was in the reasoning but not the final answer."""

    model: str
    template: str
    subject: str
    sample: int
    seed: int
    prompt: str
    text: str
    reasoning: str
    answer: str
    prompt_tokens: int
    reasoning_tokens: int
    answer_tokens: int
    wall_s: float
    finish: str
    skipped_reasoning: bool
    unterminated: bool
    refusal: str | None
    expected: float | None
    extracted: str | None
    value: float | None
    correct: bool | None
    lost_answer: bool
    judge_score: int | None = None

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.model, self.template, self.subject, self.sample)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_COLS = [f.name for f in fields(ProbeResult)]


@dataclass(frozen=True)
class RunInfo:
    id: int
    created: float
    set_name: str
    set_path: str
    set_source: str
    models: list[str]
    judge: str | None
    samples: int
    settings: dict
    status: str


def run_key(set_source: str, models: Iterable[str], judge: str | None, samples: int, settings: dict) -> str:
    blob = json.dumps([set_source, [str(m) for m in models], judge, samples, settings], sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def probes_db() -> Path:
    return data_dir() / "probes.sqlite3"


class ProbeStore:
    """The runs database; one connection, serialised by a lock (the GUI reads while a worker writes)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else probes_db()
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise ProbeRunError(f"the probe database {self.path} cannot be used ({e}): move it away and start "
                                f"again") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- runs ---------------------------------------------------------------------------------------------------
    def create_run(self, *, key: str, set_name: str, set_path: str, set_source: str, models: list[str],
                   judge: str | None, samples: int, settings: dict) -> int:
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO runs (key, created, set_name, set_path, set_source, models_json, judge, samples, "
                "settings_json) VALUES (?,?,?,?,?,?,?,?,?)",
                (key, time.time(), set_name, set_path, set_source, json.dumps(models), judge, samples,
                 json.dumps(settings)))
            return int(cur.lastrowid)

    def find_unfinished(self, key: str) -> int | None:
        with self._lock:
            row = self._db.execute("SELECT id FROM runs WHERE key=? AND status!='done' ORDER BY id DESC LIMIT 1",
                                   (key,)).fetchone()
        return int(row[0]) if row else None

    def set_status(self, run_id: int, status: str) -> None:
        with self._lock:
            self._db.execute("UPDATE runs SET status=? WHERE id=?", (status, run_id))

    def run(self, run_id: int) -> RunInfo:
        with self._lock:
            row = self._db.execute("SELECT id, created, set_name, set_path, set_source, models_json, judge, samples, "
                                   "settings_json, status FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            raise ProbeRunError(f"there is no probe run {run_id}: list the runs with 'distilldesk probe --list'")
        return RunInfo(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]), row[6], row[7],
                       json.loads(row[8]), row[9])

    def runs(self) -> list[RunInfo]:
        with self._lock:
            ids = [r[0] for r in self._db.execute("SELECT id FROM runs ORDER BY id DESC")]
        return [self.run(i) for i in ids]

    # ---- results ------------------------------------------------------------------------------------------------
    def add(self, run_id: int, r: ProbeResult) -> None:
        values = [getattr(r, c) for c in _COLS]
        with self._lock:
            self._db.execute(f"INSERT OR REPLACE INTO results (run_id, {', '.join(_COLS)}, created) VALUES "
                             f"(?, {', '.join('?' * len(_COLS))}, ?)", [run_id, *values, time.time()])

    def set_judge_score(self, run_id: int, key: tuple[str, str, str, int], score: int) -> None:
        with self._lock:
            self._db.execute("UPDATE results SET judge_score=? WHERE run_id=? AND model=? AND template=? AND "
                             "subject=? AND sample=?", (score, run_id, *key))

    def done_keys(self, run_id: int) -> set[tuple[str, str, str, int]]:
        with self._lock:
            rows = self._db.execute("SELECT model, template, subject, sample FROM results WHERE run_id=?",
                                    (run_id,)).fetchall()
        return {(m, t, s, int(k)) for m, t, s, k in rows}

    def results(self, run_id: int) -> list[ProbeResult]:
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(_COLS)} FROM results WHERE run_id=? ORDER BY created, rowid",
                                    (run_id,)).fetchall()
        out = []
        for row in rows:
            d = dict(zip(_COLS, row, strict=True))
            for b in ("skipped_reasoning", "unterminated", "lost_answer"):
                d[b] = bool(d[b])
            d["correct"] = None if d["correct"] is None else bool(d["correct"])
            out.append(ProbeResult(**d))
        return out
