"""The Library's actions driven with real clicks: Delete… on our GGUF, on the user's own GGUF (remove from the
library, or delete after a second question naming the path), on a checkpoint in the Hugging Face cache; and a
double-click on an unreadable file, which must not unload the working model."""
from __future__ import annotations

import os
import shutil

from app.core import paths
from app.core.evaluate import eval_ladder
from app.core.units import format_size
from tests.app.ui.gui_driver import Answers, click, click_tree_row, double_click_tree_row, trigger_menu, type_file_name

NAME = "SmolLM2-135M-Instruct"


def _row_index(lib, path):
    assert lib.select_path(path), f"{path} is not listed"
    return lib.tree.currentIndex()


def _click_row(lib, path):
    click_tree_row(lib.tree, _row_index(lib, path))
    assert lib.selected_path() == path


def _listed(lib):
    return [e.path for g in lib.groups() for e in g.ggufs]


def test_delete_our_file_names_the_path_and_what_uses_it(window, library_models, error_reports, qtbot):
    f16, q4 = library_models("F16", "Q4_K_M")
    eval_ladder(f16, [q4], n_ctx=128, n_chunks=1, threads=2)  # measured results with F16 as the reference
    lib = window.library
    with qtbot.waitSignal(lib.refreshed, timeout=30000):
        lib.refresh()
    _click_row(lib, f16)
    with qtbot.waitSignal(window.chat.modelLoaded, timeout=60000):
        click(lib.buttons["chat"])
    window.tabs.setCurrentWidget(lib)
    _click_row(lib, f16)
    with Answers(["Cancel"]) as seen:
        click(lib.buttons["delete"])
    (q,) = seen
    assert str(f16) in q.text and format_size(f16.stat().st_size) in q.text
    assert "loaded in Chat" in q.text and "reference of measured results for 1 other file" in q.text
    assert "Remove from library" not in q.buttons  # ours: no such choice
    assert f16.exists()
    _click_row(lib, q4)
    with Answers([f"Delete {q4.name}"]) as seen, qtbot.waitSignal(lib.refreshed, timeout=30000):
        click(lib.buttons["delete"])
    assert str(q4) in seen[0].text and "loaded" not in seen[0].text
    assert not q4.exists() and f16.exists() and _listed(lib) == [f16]
    assert window.chat.loaded_info() is not None and error_reports == []


def test_the_users_own_file_is_removed_from_the_library_not_deleted(window, smollm2_gguf, error_reports, tmp_path,
                                                                    qtbot):
    mine = tmp_path / "my-models" / "my-Q8_0.gguf"
    mine.parent.mkdir()
    shutil.copyfile(smollm2_gguf("Q8_0"), mine)
    lib = window.library
    with Answers([type_file_name(mine)]), qtbot.waitSignal(lib.refreshed, timeout=30000):
        trigger_menu(window, "File", "Add GGUF file…")
    assert _listed(lib) == [mine] and window.settings.extra_gguf_files == [str(mine)]
    _click_row(lib, mine)
    with Answers(["Remove from library"]) as seen, qtbot.waitSignal(lib.refreshed, timeout=30000):
        click(lib.buttons["delete"])
    assert "your own file" in seen[0].text and str(mine) in seen[0].text and "leaves the file" in seen[0].text
    assert mine.exists() and _listed(lib) == [] and window.settings.extra_gguf_files == []

    # a file in an extra folder: removed from the library, it stays on disk and stays unlisted after a restart
    window.settings.extra_model_dirs = [str(mine.parent)]
    with qtbot.waitSignal(lib.refreshed, timeout=30000):
        lib.refresh()
    _click_row(lib, mine)
    with Answers(["Remove from library"]), qtbot.waitSignal(lib.refreshed, timeout=30000):
        click(lib.buttons["delete"])
    assert mine.exists() and _listed(lib) == []
    from app.ui.settings import load_settings

    assert load_settings().hidden_gguf_files == [str(mine)]

    # deleting it takes a second, explicit question naming the path; Cancel there keeps it
    window.settings.hidden_gguf_files = []
    with qtbot.waitSignal(lib.refreshed, timeout=30000):
        lib.refresh()
    _click_row(lib, mine)
    with Answers(["Delete file", "Cancel"]) as seen:
        click(lib.buttons["delete"])
    assert mine.exists() and len(seen) == 2 and str(mine) in seen[1].text and "not in DistillDesk" in seen[1].text
    with Answers(["Delete file", f"Delete {mine.name}"]), qtbot.waitSignal(lib.refreshed, timeout=30000):
        click(lib.buttons["delete"])
    assert not mine.exists() and _listed(lib) == [] and error_reports == []


def _hf_copy(checkpoint, repo_id: str):
    """``checkpoint`` laid out in the (temporary) Hugging Face cache as the Hub client stores it: blobs (hard
    links, so deleting them leaves the test fixture alone) and a snapshot of symlinks."""
    from quantizer.checkpoint import hf_cache_dir

    repo = hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for i, f in enumerate(sorted(checkpoint.iterdir())):
        blob = repo / "blobs" / f"{i:040x}"
        try:
            os.link(f, blob)
        except OSError:
            shutil.copyfile(f, blob)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snap.name)
    return repo


def test_delete_a_checkpoint_from_the_hf_cache(window, smollm2_checkpoint, library_models, error_reports, qtbot):
    repo = _hf_copy(smollm2_checkpoint, "HuggingFaceTB/" + NAME)
    (q4,) = library_models("Q4_K_M")
    lib = window.library
    with qtbot.waitSignal(lib.refreshed, timeout=30000):
        lib.refresh()
    g = lib.group(NAME)
    assert g.checkpoint is not None and g.checkpoint.repo_id == "HuggingFaceTB/" + NAME
    assert lib.select_group(NAME)
    click_tree_row(lib.tree, lib.tree.currentIndex())
    assert lib.buttons["delete"].isEnabled()
    with Answers(["Cancel"]) as seen:
        click(lib.buttons["delete"])
    assert str(repo) in seen[0].text and format_size(g.checkpoint.size_bytes) in seen[0].text
    assert repo.exists()
    with Answers(["Delete checkpoint"]), qtbot.waitSignal(lib.refreshed, timeout=30000):
        click(lib.buttons["delete"])
    qtbot.waitUntil(lambda: lib.group(NAME) is not None and lib.group(NAME).checkpoint is None, timeout=30000)
    assert not repo.exists() and q4.exists()  # the GGUF made from it stays
    assert all(f.exists() for f in smollm2_checkpoint.iterdir()) and error_reports == []


def test_double_click_on_an_unreadable_file_keeps_the_loaded_model(window, library_models, error_reports, qtbot):
    (q8,) = library_models("Q8_0")
    broken = paths.models_dir() / NAME / f"{NAME}-Q2_K.gguf"
    with open(q8, "rb") as f:
        broken.write_bytes(f.read(q8.stat().st_size // 3))  # cut short
    lib = window.library
    with qtbot.waitSignal(lib.refreshed, timeout=30000):
        lib.refresh()
    with qtbot.waitSignal(window.chat.modelLoaded, timeout=60000):
        double_click_tree_row(lib.tree, _row_index(lib, q8))
    window.tabs.setCurrentWidget(lib)
    double_click_tree_row(lib.tree, _row_index(lib, broken))
    qtbot.waitUntil(lambda: bool(error_reports), timeout=30000)
    (r,) = error_reports
    assert r.title == "This model cannot be opened" and "truncated" in r.message and "Nothing was unloaded" in r.message
    qtbot.wait(200)
    assert window.chat.loaded_info() is not None and str(window.chat.loaded_info().path) == str(q8)
    assert "Q8_0" in window.model_status.text() and window.tabs.currentWidget() is lib
