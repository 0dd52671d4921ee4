"""What Library → Delete… asks before anything leaves the disk.

* A GGUF we made (under the models folder): one question that names the file's full path and size, and says
  what else depends on it (loaded in Chat, the reference of measured results).
* A GGUF we did not make (added with Add GGUF, or found in an extra folder): the user's own file.  The first
  choice is "Remove from library" (the file stays where it is); deleting it takes a second, explicit question
  that names the path.
* A checkpoint in the Hugging Face cache: its size and the cache folder that goes (GGUFs made from it stay).

Each question is a modal message box whose buttons say what they do; Cancel (Escape) is the default.
"""
from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QMessageBox, QWidget

from app.core.units import format_size

from . import library_model as lm

REMOVE, DELETE = "remove", "delete"


def _ask(parent: QWidget | None, title: str, text: str, info: str, choices: list[tuple[str, str]]) -> str | None:
    """A modal question; ``choices``: (button text, answer).  Returns the answer, None for Cancel / Escape."""
    box = QMessageBox(QMessageBox.Icon.Warning, title, text, QMessageBox.StandardButton.NoButton, parent)
    box.setInformativeText(info)
    answers = {}
    for label, answer in choices:
        b = box.addButton(label, QMessageBox.ButtonRole.DestructiveRole if answer == DELETE
                          else QMessageBox.ButtonRole.AcceptRole)
        answers[b] = answer
    cancel = box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(cancel)
    box.setEscapeButton(cancel)
    box.exec()
    return answers.get(box.clickedButton())


def saved_results_note(path: Path) -> str:
    """A note when ``path`` is the reference of saved eval-ladder results (they are keyed by the reference file:
    without it they are never shown again)."""
    from app.core.evaluate import load_saved_rows

    try:
        n = len({r.path for r in load_saved_rows(path)})
    except OSError:
        return ""
    if not n:
        return ""
    return (f"It is the reference of measured results for {n} other file{'s' if n > 1 else ''} (mean KL and top-1 "
            "in Compare's eval ladder): without it they are no longer shown, and new measurements need a new "
            "reference.")


def ask_delete_gguf(parent: QWidget | None, entry: lm.GgufEntry, notes: list[str]) -> str | None:
    """REMOVE (from the library only), DELETE (from the disk) or None, for the GGUF ``entry``."""
    p = entry.path
    size = format_size(p.stat().st_size) if p.exists() else format_size(entry.size_bytes)
    notes = [n for n in [*notes, saved_results_note(p)] if n]
    warn = ("\n\n" + "\n\n".join(notes)) if notes else ""
    if lm.made_by_us(p):
        answer = _ask(parent, "Delete model file", f"Delete {p.name} ({size}) from the disk?",
                      f"{p}{warn}\n\nThis cannot be undone.", [(f"Delete {p.name}", DELETE)])
        return answer
    answer = _ask(parent, "Remove from library",
                  f"{p.name} is your own file: DistillDesk did not make it, and it lies outside the models "
                  "folder.",
                  f"{p}\n\n\"Remove from library\" stops listing it and leaves the file where it is.{warn}",
                  [("Remove from library", REMOVE), ("Delete file…", "ask")])
    if answer != "ask":
        return answer
    return _ask(parent, "Delete your file", f"Delete {p.name} ({size}) from the disk?",
                f"{p}\n\nThis file is not in DistillDesk's models folder. Deleting it cannot be undone.{warn}",
                [(f"Delete {p.name}", DELETE)])


def ask_delete_checkpoint(parent: QWidget | None, ck: lm.CheckpointEntry) -> bool:
    folder = repo_folder(ck)
    size = format_size(ck.size_bytes + ck.partial_bytes)
    answer = _ask(parent, "Delete checkpoint",
                  f"Delete the checkpoint {ck.repo_id} ({size}) from the Hugging Face cache?",
                  f"{folder}\n\nThe GGUFs made from it stay. Without the checkpoint no other bit-width can be made "
                  "until it is downloaded again (Download…).", [("Delete checkpoint", DELETE)])
    return answer == DELETE


def repo_folder(ck: lm.CheckpointEntry) -> Path:
    """The cache folder of the checkpoint's repo (``models--org--name``; the snapshot is two levels below)."""
    return ck.path.parent.parent if ck.path.parent.name == "snapshots" else ck.path
