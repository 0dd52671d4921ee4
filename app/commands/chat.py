"""``distilldesk chat MODEL.gguf [--prompt TEXT]``: chat with a GGUF model in the terminal.

With ``--prompt``: one reply, then exit.  Without: an interactive chat reading lines from stdin (``/quit`` or
Ctrl-D to leave, ``/new`` for a new conversation); Ctrl-C stops the current reply, not the program.

The answer goes to stdout; the reasoning (``thinking: ...``, dimmed on a terminal), notices and the stats line
after each reply go to stderr, so ``--prompt`` output can be piped.  Conversations are saved in the history
database (``--no-history`` to skip).
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any, TextIO

from app.commands import _args as A
from app.core.chat_types import Message, Reply, SamplingSettings
from app.core.thinking import Segment

from .device_flags import add_device_flags

DIM, RESET = "\x1b[2m", "\x1b[0m"
THINKING = "thinking: "


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    d = SamplingSettings()
    p = subparsers.add_parser(
        "chat", help="chat with a GGUF model in the terminal",
        description="Chat with a GGUF model using its own chat template. The reasoning of R1-style models is "
                    "shown apart from the answer (on stderr); conversations are saved in the history.")
    p.add_argument("model", metavar="MODEL.gguf", help="the model file")
    p.add_argument("--prompt", type=A.prompt, help="send this one message, print the reply and exit")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--greedy", action="store_true", help="always take the most likely token (deterministic)")
    p.add_argument("--seed", type=int, default=None, help="seed for sampling (default: random)")
    p.add_argument("--temperature", type=A.temperature, default=d.temperature,
                   help=f"sampling temperature (default {d.temperature}, DeepSeek's R1 recommendation)")
    p.add_argument("--top-p", type=A.probability, default=d.top_p,
                   help=f"nucleus sampling, 0 to 1 (default {d.top_p})")
    p.add_argument("--max-tokens", type=A.positive_int, default=d.max_tokens, metavar="N",
                   help=f"most tokens per reply, reasoning included (default {d.max_tokens})")
    p.add_argument("--overthinking-penalty", type=float, default=0.0, metavar="B",
                   help="logit bias taken off ~50 hesitation markers ('Wait', 'Alternatively'...) to shorten "
                        "reasoning chains (default 0 = off)")
    p.add_argument("--ctx", type=A.context_size, default=4096, metavar="N",
                   help="context window in tokens (default 4096; 0 = the model's trained length)")
    p.add_argument("--threads", type=A.threads, default="auto", metavar="N",
                   help="CPU threads (default: the physical cores)")
    add_device_flags(p)
    p.add_argument("--no-history", action="store_true", help="do not save this conversation")
    return p


class Printer:
    """Writes streamed segments: answer to ``out``; reasoning to ``err``, each line prefixed ``thinking:``
    (and dimmed when ``err`` is a terminal)."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out, self.err = out, err
        self.dim = err.isatty()
        self._kind: str | None = None
        self._line_start = True

    def __call__(self, seg: Segment) -> None:
        if seg.kind == "reasoning":
            text = seg.text
            if self._kind != "reasoning":
                self._kind, self._line_start = "reasoning", True
            parts = text.split("\n")
            for i, part in enumerate(parts):
                if i > 0:
                    self._write_err("\n")
                    self._line_start = True
                if part:
                    self._write_err((THINKING if self._line_start else "") + part)
                    self._line_start = False
            self.err.flush()
        else:
            if self._kind == "reasoning":
                self.err.write("\n")
                self.err.flush()
            self._kind = "answer"
            self.out.write(seg.text)
            self.out.flush()

    def _write_err(self, s: str) -> None:
        self.err.write(f"{DIM}{s}{RESET}" if self.dim and s.strip() else s)

    def end(self, reply: Reply) -> None:
        if self._kind == "reasoning":
            self.err.write("\n")
        if self._kind == "answer":
            self.out.write("\n")
            self.out.flush()
        self._kind = None
        notes = []
        if reply.finish_reason == "cancelled":
            notes.append("[stopped]")
        elif reply.finish_reason == "length" and not reply.context_full:   # a full context: the notice says so
            notes.append("[reply cut at the token limit: raise --max-tokens for longer replies]")
        if reply.unterminated:
            notes.append("[the reasoning never finished]")
        elif reply.skipped_reasoning and reply.reasoning == "" and "<think>" in reply.text:
            notes.append("[the model skipped its reasoning]")
        if reply.notice:
            notes.append(reply.notice)
        for n in notes:
            self.err.write(n + "\n")
        self.err.write(f"[{reply.stats.summary()}]\n")
        self.err.flush()


class Session:
    """One conversation: the engine, the messages so far, and (optionally) the history record."""

    def __init__(self, engine: Any, settings: SamplingSettings, system: str | None, history: Any) -> None:
        self.engine, self.settings, self.system, self.history = engine, settings, system, history
        self.new()

    def new(self) -> None:
        self.messages: list[Message] = [Message("system", self.system)] if self.system else []
        self.conversation_id: int | None = None

    def _save(self, message: Message, stats: dict[str, Any] | None = None) -> None:
        if self.history is None:
            return
        if self.conversation_id is None:
            self.conversation_id = self.history.create(model_path=self.engine.info.path, settings=self.settings)
            for m in self.messages[:-1]:         # the system prompt
                self.history.add_message(self.conversation_id, m)
        self.history.add_message(self.conversation_id, message, stats=stats)

    def ask(self, text: str, printer: Printer) -> Reply:
        """Send one user message and stream the reply; Ctrl-C (SIGINT) stops the reply."""
        self.messages.append(Message("user", text))
        self._save(self.messages[-1])
        cancel = threading.Event()
        previous = _on_sigint(lambda *_: cancel.set())
        try:
            reply = self.engine.chat(self.messages, settings=self.settings, on_text=printer, cancel=cancel)
        except BaseException:
            self.messages.pop()
            raise
        finally:
            _on_sigint(previous)
        printer.end(reply)
        self.messages.append(reply.as_message())
        stats = {**reply.stats.to_dict(), "finish_reason": reply.finish_reason,
                 "dropped_turns": reply.dropped_turns, "context_full": reply.context_full,
                 "unterminated": reply.unterminated,
                 "skipped_reasoning": reply.skipped_reasoning}
        self._save(self.messages[-1], stats)
        return reply


def _on_sigint(handler: Any) -> Any:
    """Install a SIGINT handler when we can (main thread); returns the previous one."""
    if threading.current_thread() is not threading.main_thread():
        return None
    if handler is None:
        return None
    return signal.signal(signal.SIGINT, handler)


def run(args: argparse.Namespace) -> int:
    from app.core.engine import Engine
    from app.core.history import History
    from app.core.load_options import LoadOptions

    from .device_flags import device_fields

    settings = SamplingSettings(temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
                                greedy=args.greedy, seed=args.seed,
                                overthinking_penalty=args.overthinking_penalty)
    out, err = sys.stdout, sys.stderr
    history = None if args.no_history else History()
    if history is not None and history.notice:
        err.write(f"note: {history.notice}\n")
    try:
        options = LoadOptions(n_threads=args.threads, **device_fields(args))
        with Engine(args.model, n_ctx=args.ctx, seed=args.seed, options=options) as engine:
            session = Session(engine, settings, args.system, history)
            if args.prompt is not None:
                reply = session.ask(args.prompt, Printer(out, err))
                return 130 if reply.finish_reason == "cancelled" else 0
            return _interactive(session, out, err)
    finally:
        if history is not None:
            history.close()


def _interactive(session: Session, out: TextIO, err: TextIO) -> int:
    info = session.engine.info
    err.write(f"{info.name} ({info.file_type}, {session.engine.backend}, context {info.n_ctx}). "
              f"Type a message; /new starts over, /quit or Ctrl-D leaves, Ctrl-C stops a reply.\n")
    tty = sys.stdin.isatty()
    while True:
        if tty:
            err.write("you> ")
            err.flush()
        try:
            line = sys.stdin.readline()
        except KeyboardInterrupt:
            err.write("\n")
            return 0
        if not line:
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            return 0
        if text == "/new":
            session.new()
            err.write("[new conversation]\n")
            continue
        session.ask(text, Printer(out, err))
