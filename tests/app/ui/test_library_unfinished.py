"""The Library shows the partial GGUF a killed quantize left behind (issue 14 §5), until a quantize into that folder
removes it: the user sees where the disk space went, and that it is going away."""
from __future__ import annotations

import subprocess
import sys

import quantizer
from app.core.units import format_size
from tests.app.ui.gui_driver import click


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_killed_conversions_partial_is_shown_until_the_next_quantize_removes_it(window, library_models, qtbot,
                                                                                 smollm2_checkpoint):
    (q8,) = library_models("Q8_0")
    lib = window.library
    partial = q8.parent / f".{q8.parent.name}-Q4_0.gguf.{_dead_pid()}.k1ll3d00.partial"
    with qtbot.waitSignal(lib.refreshed, timeout=30000):
        lib.refresh()  # the listing of the model the fixture just put there (the empty state has no Refresh)
    assert not lib.unfinished.isVisible()
    partial.write_bytes(b"\0" * 3_000_000)
    with qtbot.waitSignal(lib.refreshed, timeout=30000):
        click(lib.buttons["refresh"])
    assert lib.unfinished.isVisible()
    text = lib.unfinished.text()
    assert text.startswith("Unfinished conversions:")
    assert (f"{q8.parent.name}-Q4_0.gguf: {format_size(3_000_000)} left by a conversion that was killed; the next "
            f"quantize into that folder removes it ({partial})") in text
    # the next conversion into that folder (what the Quantize dialog runs) removes it; the Library stops showing it
    quantizer.convert(smollm2_checkpoint, q8.parent / f"{q8.parent.name}-Q4_0.gguf", "Q4_0")
    assert not partial.exists()
    with qtbot.waitSignal(lib.refreshed, timeout=30000):
        click(lib.buttons["refresh"])
    assert not lib.unfinished.isVisible() and lib.unfinished.text() == ""
