"""Chat history in SQLite: round trips, durability against SIGKILL, corrupt files set aside."""
from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from app.core import paths
from app.core.engine import Message, ReplyStats, SamplingSettings
from app.core.errors import CorruptHistoryError, HistoryError
from app.core.history import History

ROOT = Path(__file__).resolve().parents[2]
STATS = ReplyStats(time_to_first_token_s=0.25, prompt_tokens=40, prompt_tokens_evaluated=12,
                   prompt_tokens_per_s=48.0, generated_tokens=30, decode_tokens_per_s=20.5, total_s=1.7,
                   reasoning_tokens=22, reasoning_s=1.1)


def test_round_trip_in_the_user_data_folder():
    with History() as h:
        assert h.path == paths.history_db() and h.notice is None
        cid = h.create(model_path="/models/r1-Q4_K_M.gguf", settings=SamplingSettings(seed=7))
        h.add_message(cid, Message("system", "Be brief."))
        h.add_message(cid, {"role": "user", "content": "What is 17 × 24?\nShow steps."})
        pos = h.add_message(cid, Message("assistant", "**408**", reasoning="17×20=340, 17×4=68, 408"), stats=STATS)
        assert pos == 2
        conv = h.get(cid)
    with History() as h:                       # reopened: everything is there
        again = h.get(cid)
    assert again == conv
    assert conv.title == "What is 17 × 24? Show steps." and conv.model_path == "/models/r1-Q4_K_M.gguf"
    assert SamplingSettings.from_dict(conv.settings) == SamplingSettings(seed=7)
    assert [m.role for m in conv.messages] == ["system", "user", "assistant"]
    last = conv.messages[-1]
    assert (last.content, last.reasoning) == ("**408**", "17×20=340, 17×4=68, 408")
    assert ReplyStats(**last.stats) == STATS
    assert conv.chat_messages()[-1] == Message("assistant", "**408**", "17×20=340, 17×4=68, 408")


def test_list_rename_delete_truncate(tmp_path):
    with History(tmp_path / "h.sqlite3") as h:
        a = h.create(title="first")
        b = h.create()
        h.add_message(a, Message("user", "x" * 200))
        assert [c.id for c in h.conversations()] == [a, b]        # most recently updated first
        assert h.get(a).title == "first"                            # an explicit title is kept
        h.add_message(b, Message("user", "word " * 30))
        assert h.get(b).title.endswith("…") and len(h.get(b).title) == 60
        h.rename(b, "renamed")
        assert h.get(b).title == "renamed" and h.conversations()[0].id == b
        for i in range(4):
            h.add_message(b, Message("assistant" if i % 2 == 0 else "user", f"m{i}"))
        assert h.truncate(b, 2) == 3                                 # edit-and-resend of message 2
        h.add_message(b, Message("user", "edited"))
        assert [m.content for m in h.messages(b)][-2:] == ["m0", "edited"]
        assert [m.position for m in h.messages(b)] == [0, 1, 2]
        h.set_model(b, "/m.gguf", {"greedy": True})
        assert h.get(b).model_path == "/m.gguf" and h.get(b).settings == {"greedy": True}
        h.delete(a)
        assert [c.id for c in h.conversations()] == [b]
        with pytest.raises(KeyError):
            h.add_message(a, Message("user", "to nowhere"))
        with pytest.raises(KeyError):
            h.get(a)
        n_orphans = h._query("SELECT COUNT(*) FROM messages WHERE conversation_id = ?", (a,))[0][0]
        assert n_orphans == 0
    mode = sqlite3.connect(tmp_path / "h.sqlite3").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from app.core.history import History
    from app.core.engine import Message
    h = History({path!r})
    cid = h.create()
    h.add_message(cid, Message("user", "Is 221 prime?"))
    h.add_message(cid, Message("assistant", "No: 13 x 17.", reasoning="try 13"))
    h.add_message(cid, Message("user", "And 223?"))
    # the next answer is being written when the process is killed: a transaction that never commits
    h._conn.execute("BEGIN IMMEDIATE")
    h._conn.execute("INSERT INTO messages (conversation_id, position, role, content, created) "
                    "VALUES (?, 3, 'assistant', 'half an ans', 0)", (cid,))
    print("READY", flush=True)
    time.sleep(60)
""")


def test_sigkill_mid_answer_loses_nothing_complete(tmp_path):
    path = tmp_path / "history.sqlite3"
    proc = subprocess.Popen([sys.executable, "-c", CHILD.format(root=str(ROOT), path=str(path))],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "READY"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    with History(path) as h:
        assert h.notice is None
        (conv,) = h.conversations()
        msgs = h.messages(conv.id)
    assert [(m.role, m.content, m.reasoning) for m in msgs] == [
        ("user", "Is 221 prime?", ""), ("assistant", "No: 13 x 17.", "try 13"), ("user", "And 223?", "")]


def test_a_file_that_is_not_a_database_is_set_aside(tmp_path):
    path = tmp_path / "history.sqlite3"
    junk = b"this is not sqlite at all\n" * 50
    path.write_bytes(junk)
    with pytest.raises(CorruptHistoryError, match="move it away"):
        History(path, recover=False)
    assert path.read_bytes() == junk                        # untouched without recovery
    with History(path) as h:
        assert h.set_aside is not None and h.set_aside.name.startswith("history.sqlite3.corrupt-")
        assert h.set_aside.read_bytes() == junk             # kept, never overwritten
        assert h.set_aside.name in h.notice
        cid = h.create()
        h.add_message(cid, Message("user", "fresh start"))
    with History(path) as h:
        assert h.notice is None and h.messages(cid)[0].content == "fresh start"


def test_damaged_pages_are_detected_and_set_aside(tmp_path):
    path = tmp_path / "history.sqlite3"
    with History(path) as h:
        cid = h.create()
        for i in range(200):
            h.add_message(cid, Message("user", f"message {i} " + "lorem ipsum " * 20))
    con = sqlite3.connect(path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = con.execute("PRAGMA page_size").fetchone()[0]
    con.close()
    data = bytearray(path.read_bytes())
    assert len(data) > 6 * page
    data[3 * page: 5 * page] = b"\xa5" * (2 * page)         # scribble over two b-tree pages
    path.write_bytes(bytes(data))
    with History(path) as h:
        assert h.set_aside is not None and h.set_aside.read_bytes() == bytes(data)
        assert h.conversations() == []


def test_history_from_a_newer_version_is_refused_not_touched(tmp_path):
    path = tmp_path / "history.sqlite3"
    con = sqlite3.connect(path)
    con.execute("PRAGMA user_version=99")
    con.close()
    before = path.read_bytes()
    with pytest.raises(HistoryError, match="newer DistillDesk"):
        History(path)
    assert path.read_bytes() == before
