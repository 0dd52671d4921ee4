"""``distilldesk`` command line: the app's jobs headless, and the GUI when run with no subcommand.

Subcommands live in ``app/commands/<name>.py`` (``add_parser(subparsers)`` + ``run(args) -> int``).  Errors are
mapped here, in one place: typed errors from kernels/quantizer/app.core -> exit code 2 and one readable line
(traceback only with ``--debug``); Ctrl-C -> exit 130.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import NoReturn

from app import __version__

# Subcommand modules, in help order.  Every one must import: a missing module (say, one a bundle left out) fails
# loudly here rather than silently dropping a command.
COMMANDS = ["download", "models", "quantize", "imatrix", "chat", "compare", "eval", "probe", "worker"]


def _expected_errors() -> tuple[type[BaseException], ...]:
    errs: list[type[BaseException]] = []
    for mod, name in [("kernels.errors", "KernelError"), ("quantizer.errors", "QuantizerError"),
                      ("app.core.errors", "DistillDeskError"), ("app.core.demo", "DemoUnavailableError")]:
        errs.append(getattr(importlib.import_module(mod), name))
    return tuple(errs)


class _Parser(argparse.ArgumentParser):
    """Usage errors as every other error: exit 2 and one line (the usage is one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="distilldesk", description="Quantize, chat with and compare distilled "
                                "reasoning models. With no subcommand, opens the desktop app.")
    p.add_argument("--version", action="version", version=f"distilldesk {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.add_argument("--demo", action="store_true", help="open the app straight on the built-in SmolLM2 demo model")
    p.add_argument("--self-test", nargs="?", const="", metavar="MODEL.gguf|demo", default=None,
                   help="check this installation (window, inference, kernels) and exit 0, or non-zero naming "
                        "the failing step; on MODEL.gguf, on the demo model ('demo': downloaded once if this "
                        "installation has no copy), or, with neither, on a tiny model our quantizer makes")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        mod = importlib.import_module(f"app.commands.{name}")  # no fallback: a missing command is a broken install
        sp = mod.add_parser(sub)
        sp.set_defaults(_run=mod.run)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.self_test is not None:
            from app.selftest import run_self_test

            return run_self_test(args.self_test or None)
        if args.command is None:
            from app.ui.main import run_gui

            return run_gui(demo=args.demo)
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("distilldesk: interrupted", file=sys.stderr)
        return 130
    except _expected_errors() as e:
        if args.debug:
            raise
        print(f"distilldesk: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
