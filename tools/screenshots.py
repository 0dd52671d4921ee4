"""Render every view of the app (offscreen) into screenshots/ (git-ignored), on real models: the demo SmolLM2
converted by our quantizer, a real chat reply, a real comparison and eval ladder, plus the reasoning panel fed by
a recorded DeepSeek-R1 transcript (SmolLM2 does not reason).  Everything runs in temporary data folders.

    .venv/bin/python tools/screenshots.py [--out screenshots]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _wait(ms: int) -> None:
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def _wait_for(cond, timeout_s: float = 600) -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError("timed out waiting for the app")
        _wait(50)


def _save(widget, out: Path, name: str) -> None:
    _wait(150)
    path = out / f"{name}.png"
    widget.grab().save(str(path))
    print(f"wrote {path}")


def _stream_r1(chat, transcript: Path) -> None:
    """A recorded R1 reply streamed into the chat as the model worker streams (cut at R1 tokenizer tokens)."""
    from tokenizers import Tokenizer

    from app.core.thinking import ThinkingParser
    from app.ui.chat_model import ChatMessage

    text = transcript.read_text(encoding="utf-8")
    tok = Tokenizer.from_file(str(ROOT / "tests/data/deepseek-r1-distill-qwen/tokenizer.json"))
    pos, pieces = 0, []
    for _s, e in tok.encode(text, add_special_tokens=False).offsets:
        if e > pos:
            pieces.append(text[pos:e])
            pos = e
    chat.model.append(ChatMessage("user", "What is 17 times 24?"))
    row = chat.model.append(ChatMessage("assistant", streaming=True, model="DeepSeek-R1-Distill-Qwen-7B · Q4_K_M "
                                        "(recorded)"))
    chat.reasoning.show_message(chat.model.message(row))
    parser = ThinkingParser()
    for i, piece in enumerate(pieces):
        for seg in parser.feed(piece):
            chat.model.append_text(row, seg.kind, seg.text)
        if i == len(pieces) // 3:
            return  # leave it mid-thought: the live state is what the panel is for
        _wait(15)  # paced like a fast model, so the panel's "Thinking… N s" counts real seconds


def main(argv: list[str] | None = None) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="distilldesk-shots-"))
    try:
        return _render(argv, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the demo models made there take ~750 MB


def _render(argv: list[str] | None, tmp: Path) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "screenshots"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ["DISTILLDESK_DATA_DIR"] = str(tmp / "data")
    os.environ["DISTILLDESK_CACHE_DIR"] = str(tmp / "cache")
    os.environ["HF_HOME"] = str(tmp / "hf")
    os.environ["HF_HUB_OFFLINE"] = "1"  # screenshots never touch the network

    import app.ui.errors as errors
    from app.ui.main import create_main_window

    errors.HOOK = lambda r: print(f"(error dialog) {r.title}: {r.message}")
    win = create_main_window()
    win.resize(1360, 860)
    win.show()
    _wait_for(lambda: win.library.stack.currentIndex() == 1)  # the first scan found nothing: the empty state
    _save(win, out, "01-library-first-run")

    dlg = win.start_demo(chat=True)
    if dlg is not None:
        _wait_for(lambda: dlg.bar.value() > 0)
        _save(dlg, out, "02-demo-setup")
    _wait_for(lambda: win.chat.loaded_info() is not None)
    _wait_for(lambda: win.library.group("SmolLM2-135M-Instruct") is not None
              and len(win.library.group("SmolLM2-135M-Instruct").ggufs) == 2)
    chat = win.chat
    chat.max_tokens.setValue(80)
    chat.send("Give me three tips for writing clear code, as a short list.")
    _wait_for(lambda: not chat.is_busy())
    _save(win, out, "04-chat")

    # the quantize dialog, after making a Q8_0 through it
    g = win.library.group("SmolLM2-135M-Instruct")
    qd = win.open_quantize(g)
    _wait_for(lambda: qd.facts is not None)
    qd.select_recipe("Q8_0")
    qd.start()
    _wait_for(lambda: not qd.is_running())
    _save(qd, out, "05-quantize-dialog")
    qd.close()

    # compare F16 vs Q4_K_M, then the eval ladder over Q8_0 and Q4_K_M
    win.tabs.setCurrentWidget(win.compare)
    cv = win.compare
    f16 = g.reference().path if g.reference() else None
    win.library.refresh_now()
    cv.set_groups(win.library.groups())
    q4 = next(e.path for e in win.library.group("SmolLM2-135M-Instruct").ggufs if e.file_type == "Q4_K_M")
    cv.set_pair(f16, q4)
    cv.max_tokens.setValue(60)
    cv.start()
    _wait_for(lambda: not cv.is_busy())
    cv.ladder.chunks.setValue(2)
    cv.ladder.ctx.setValue(256)
    cv.ladder.start()
    _wait_for(lambda: not cv.ladder.is_busy())
    _save(win, out, "06-compare")

    win.tabs.setCurrentWidget(win.library)
    win.library.refresh_now()
    _save(win, out, "07-library")

    chat.new_conversation()
    win.tabs.setCurrentWidget(chat)
    _stream_r1(chat, ROOT / "tests/data/transcripts/r1_arithmetic.txt")
    _save(win, out, "03-chat-reasoning-live")

    sd = win.open_settings()
    _save(sd, out, "08-settings")
    sd.reject()

    dd = win.open_download()
    dd.catalog.selectRow(1)
    _save(dd, out, "10-download")
    dd.close()

    errors.HOOK = None
    bad = tmp / "broken.gguf"
    bad.write_bytes(b"not a gguf" * 100)
    win.library.add_file(bad)
    _wait_for(lambda: bool(errors._OPEN_BOXES))
    box = errors._OPEN_BOXES[0]
    _save(box, out, "09-error-dialog")
    box.close()

    win.close()
    print(f"screenshots in {out} (work folder {tmp})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
