"""The download dialog against a local Hub (tests/app/hub_server.py): the catalog with predicted sizes, search,
what a repo needs, download with progress into the HF cache (the Library then lists the checkpoint), cancel and
resume, offline."""
from __future__ import annotations

from PySide6.QtCore import Qt

from app.core import catalog
from app.core.units import format_params, format_size
from app.ui.download_view import DownloadDialog
from tests.app import hub_server
from tests.app.hub_server import SHARDS, SMALL_REPO

hub, small_files, small_repo = hub_server.hub, hub_server.small_files, hub_server.small_repo  # fixtures
BIG = SHARDS[1]


def _open(window, qtbot) -> DownloadDialog:
    qtbot.mouseClick(window.library.buttons["download"], Qt.MouseButton.LeftButton)
    return next(d for d in window._dialogs if isinstance(d, DownloadDialog))


def _pick_search_result(dlg, qtbot, repo_id):
    qtbot.keyClicks(dlg.search_edit, "SmolLM2")
    qtbot.keyClick(dlg.search_edit, Qt.Key.Key_Return)  # Enter searches
    assert "search" in dlg._jobs
    qtbot.waitUntil(lambda: "search" not in dlg._jobs, timeout=30000)
    rows = [dlg.results.item(r, 0).text() for r in range(dlg.results.rowCount())]
    assert repo_id in rows
    dlg.results.selectRow(rows.index(repo_id))
    qtbot.waitUntil(lambda: dlg.listing is not None, timeout=30000)


def test_catalog_search_download_then_the_library_lists_it(window, small_repo, small_files, qtbot):
    dlg = _open(window, qtbot)
    models = catalog.load_catalog()
    assert dlg.catalog.rowCount() == len(models) >= 7
    first = models[0]
    assert dlg.catalog.item(0, 0).text() == first.name
    assert dlg.catalog.item(0, 3).text() == format_size(first.estimate("Q4_K_M").size_bytes)
    assert not dlg.download_button.isEnabled()  # nothing picked yet

    _pick_search_result(dlg, qtbot, SMALL_REPO)
    needed = dlg.listing.needed_bytes
    assert f"{len(dlg.listing.needed)} of {len(dlg.listing.files)} files needed" in dlg.info.text()
    assert format_size(needed) in dlg.info.text()
    totals = []
    assert dlg.download_button.isEnabled() and not dlg.total_bar.isVisibleTo(dlg)
    qtbot.mouseClick(dlg.download_button, Qt.MouseButton.LeftButton)
    assert dlg.total_bar.isVisibleTo(dlg) and dlg.file_bar.isVisibleTo(dlg)
    dlg._jobs["download"].progress.connect(lambda p: totals.append((p.done, p.total)))
    with qtbot.waitSignal(window.library.refreshed, timeout=60000):
        with qtbot.waitSignal(dlg.downloaded, timeout=60000) as sig:
            pass
    r = sig.args[0]
    # the listing marks what the download fetches: only the shards the index names
    assert r.repo_id == SMALL_REPO and r.bytes_total == needed
    assert r.bytes_fetched == r.bytes_total - len(small_files["model.safetensors.index.json"])  # came with the list
    assert (r.path / BIG).read_bytes() == small_files[BIG]
    assert totals[-1] == (r.bytes_total, r.bytes_total) and dlg.total_bar.value() == 1000
    assert "Done" in dlg.file_label.text()
    g = window.library.group("SmolLM2-mini")
    assert g is not None and g.checkpoint.repo_id == SMALL_REPO and g.checkpoint.complete
    dlg.close()


def test_cancel_keeps_the_bytes_and_download_again_resumes(window, small_repo, small_files, qtbot):
    dlg = _open(window, qtbot)
    _pick_search_result(dlg, qtbot, SMALL_REPO)
    small_repo.stall(BIG, after=2_500_000)  # the network hangs in the middle of the big shard
    qtbot.mouseClick(dlg.download_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dlg.file_label.text().startswith(BIG) and dlg.file_bar.value() > 0, timeout=60000)
    assert dlg.cancel_button.text() == "Cancel"
    qtbot.mouseClick(dlg.cancel_button, Qt.MouseButton.LeftButton)
    small_repo._release.set()  # the hung connection ends; the download sees the cancel
    qtbot.waitUntil(lambda: not dlg.is_running(), timeout=60000)
    assert "Download again resumes" in dlg.file_label.text()
    kept = small_repo.body_bytes(BIG)
    assert 1_000_000 < kept < len(small_files[BIG])

    small_repo._release.clear()
    small_repo.heal()
    with qtbot.waitSignal(dlg.downloaded, timeout=60000) as sig:
        qtbot.mouseClick(dlg.download_button, Qt.MouseButton.LeftButton)
    r = sig.args[0]
    assert r.bytes_fetched < len(small_files[BIG])  # only the rest of the big shard came over the wire
    assert (r.path / BIG).read_bytes() == small_files[BIG]
    dlg.close()


def test_offline_says_so_once_not_per_click(window, hub, error_reports, monkeypatch, qtbot):
    from tests.app.ui.gui_driver import Answers, click_tree_row

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dlg = _open(window, qtbot)
    assert dlg.banner.isVisibleTo(dlg) and "Offline" in dlg.banner.text() and not dlg.search_button.isEnabled()
    assert not dlg.total_bar.isVisibleTo(dlg) and not dlg.file_bar.isVisibleTo(dlg)  # no download: no bars
    models = catalog.load_catalog()
    assert dlg.catalog.item(0, 1).text() == "1.78B" == format_params(models[0].n_params)  # one format everywhere
    with Answers() as boxes:  # any modal box would be recorded (and dismissed)
        for row in (0, 1, 0):
            click_tree_row(dlg.catalog, dlg.catalog.model().index(row, 0))
            qtbot.wait(300)
            assert dlg.repo_id == models[row].repo_id
            assert "needs the network" in dlg.info.text() and not dlg.download_button.isEnabled()
    assert boxes == [] and error_reports == []  # the banner said it; no box per click
    dlg.close()
    assert window.registry.live() == []
