"""Issue 14 §0: `QPushButton.clicked` (and QAction.triggered, toggled) pass `checked` to the slot when the slot
accepts a positional argument.  ChatView.send(text=None) got False as its text ("'bool' object has no attribute
'strip'").  This guards every such connection in app/ui: a method connected directly must not take an optional
positional parameter (or *args); wrap it in a lambda instead.  The GUI tests click the buttons too; this catches
the pattern in buttons no test reaches."""
from __future__ import annotations

import ast
from pathlib import Path

UI = Path(__file__).resolve().parents[3] / "app" / "ui"
SIGNALS = {"clicked", "triggered", "toggled"}


def _takes_checked(fn: ast.FunctionDef) -> bool:
    """True when PySide would pass a signal's bool into ``fn``: an optional positional parameter or *args (a
    required one would make the connection fail loudly at once; keyword-only ones receive nothing)."""
    params = fn.args.posonlyargs + fn.args.args
    if params and params[0].arg in ("self", "cls"):
        params = params[1:]
    return fn.args.vararg is not None or (bool(params) and len(fn.args.defaults) >= len(params))


def _all_defs() -> dict[str, list[ast.FunctionDef]]:
    defs: dict[str, list[ast.FunctionDef]] = {}
    for path in sorted(UI.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef):
                defs.setdefault(node.name, []).append(node)
    return defs


def connected_slots() -> list[tuple[str, int, str, ast.FunctionDef | None]]:
    """(file, line, slot, its def) of every `<x>.clicked|triggered|toggled.connect(self....method)` in app/ui.
    `self.method` is looked up in the enclosing class (None: a Qt method such as close()); `self.a.method` by
    name across app/ui when exactly one def has that name (else None)."""
    everywhere = _all_defs()
    out = []
    for path in sorted(UI.glob("*.py")):
        for cls in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(cls, ast.ClassDef):
                continue
            own = {f.name: f for f in cls.body if isinstance(f, ast.FunctionDef)}
            for node in ast.walk(cls):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr == "connect" and isinstance(node.func.value, ast.Attribute)
                        and node.func.value.attr in SIGNALS and node.args
                        and isinstance(node.args[0], ast.Attribute)):
                    continue
                slot = node.args[0]
                if isinstance(slot.value, ast.Name) and slot.value.id == "self":
                    fn = own.get(slot.attr)
                else:
                    found = everywhere.get(slot.attr, [])
                    fn = found[0] if len(found) == 1 else None
                out.append((path.name, node.lineno, slot.attr, fn))
    return out


def test_no_button_slot_can_receive_checked():
    slots = connected_slots()
    assert sum(fn is not None for *_, fn in slots) >= 8  # the scan resolves the real connections
    bad = [f"{file}:{line} connects {name}() (line {fn.lineno}), which takes an optional positional argument: "
           "connect a lambda that calls it without arguments"
           for file, line, name, fn in slots if fn is not None and _takes_checked(fn)]
    assert not bad, "\n".join(bad)


def test_the_check_sees_the_send_bug():
    bug = ast.parse("def send(self, text=None): ...").body[0]
    fine = [ast.parse(src).body[0] for src in ("def stop(self): ...", "def refresh(self, *, select=None): ...")]
    assert _takes_checked(bug) and not any(_takes_checked(f) for f in fine)
