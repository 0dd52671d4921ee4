"""Settings shows this machine's devices and takes RPC workers; the status bar says where a model runs."""
from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QDialogButtonBox, QLabel, QLineEdit, QPushButton, QSpinBox

from tests.app.offload_check import require_vulkan
from tests.app.ui.gui_driver import click, trigger_menu, wait_for


def _settings_dialog(window):
    from app.ui.settings_dialog import SettingsDialog

    trigger_menu(window, "File", "Settings…")
    assert wait_for(lambda: isinstance(QApplication.activeModalWidget(), SettingsDialog)
                    and QApplication.activeModalWidget().isVisible())
    return QApplication.activeModalWidget()


def test_settings_shows_the_gpu_and_the_status_bar_the_offload(window, library_models, qtbot):
    device = require_vulkan()
    dlg = _settings_dialog(window)
    devices = dlg.findChild(QLabel, "devicesLabel")
    assert device.name in devices.text() and " GB" in devices.text() and "CPU" in devices.text()
    layers = dlg.gpu_layers
    assert isinstance(layers, QSpinBox) and layers.isEnabled()
    layers.setFocus()
    layers.selectAll()
    QTest.keyClicks(layers, "-1")                           # "all"
    click(dlg.findChild(QDialogButtonBox).button(QDialogButtonBox.StandardButton.Ok))
    assert window.settings.gpu_layers == -1
    (q8,) = library_models("Q8_0")
    with qtbot.waitSignal(window.chat.modelLoaded, timeout=180000):
        window.open_chat(q8)
    text = window.backend_status.text()
    assert text.startswith("backend: Vulkan") and "31/31 layers offloaded" in text and device.name in text


def test_workers_are_added_in_settings_and_enable_gpu_layers(window):
    dlg = _settings_dialog(window)
    entry = dlg.findChild(QLineEdit, "workerEntry")
    entry.setFocus()
    QTest.keyClicks(entry, "not an address")
    click(dlg.findChild(QPushButton, "addWorker"))
    assert dlg.workers.count() == 0 and "is not a worker address" in dlg.workers_hint.text()
    entry.clear()
    QTest.keyClicks(entry, "127.0.0.1:50052")
    click(dlg.findChild(QPushButton, "addWorker"))
    assert dlg.workers.count() == 1 and dlg.gpu_layers.isEnabled()
    assert "remote worker" in dlg.gpu_reason.text()
    QTest.keyClicks(entry, "[::1]:50053")
    QTest.keyClick(entry, Qt.Key.Key_Return)        # Enter adds it, and (as in any dialog) accepts
    assert wait_for(lambda: not dlg.isVisible())
    assert window.settings.rpc_workers == ["127.0.0.1:50052", "[::1]:50053"]
    assert window.settings.load_options().rpc_workers == ("127.0.0.1:50052", "[::1]:50053")
    dlg = _settings_dialog(window)
    dlg.workers.setCurrentRow(0)
    click(dlg.findChild(QPushButton, "removeWorker"))
    dlg.workers.setCurrentRow(0)
    click(dlg.findChild(QPushButton, "removeWorker"))
    if dlg._gpu is None:                             # no local GPU: nothing left to offload to
        assert not dlg.gpu_layers.isEnabled()
    click(dlg.findChild(QDialogButtonBox).button(QDialogButtonBox.StandardButton.Ok))
    assert window.settings.rpc_workers == []


def test_a_worker_lost_mid_reply_is_named_and_the_app_keeps_the_conversation(window, library_models, error_reports,
                                                                           qtbot, monkeypatch):
    """ggml aborts the process that holds a model when a worker connection breaks: the app runs worker-backed
    models in a child process (app.core.engine_process), so it survives, names the worker and keeps the chat."""
    from tests.app.test_rpc import start_worker

    monkeypatch.delenv("GGML_VK_VISIBLE_DEVICES")       # the model's process: the workers' devices only
    procs = [start_worker(), start_worker()]
    try:
        (a, b) = [endpoint for _, endpoint in procs]
        window.settings.rpc_workers, window.settings.gpu_layers = [a, b], -1
        (q8,) = library_models("Q8_0")
        with qtbot.waitSignal(window.chat.modelLoaded, timeout=180000):
            window.open_chat(q8)
        assert f"on remote workers {a}, {b}" in window.backend_status.text()
        chat = window.chat
        chat.max_tokens.setValue(3000)
        chat.greedy.setChecked(False)
        qtbot.keyClicks(chat.prompt, "Write a long story about a dragon who learns to cook.")
        qtbot.mouseClick(chat.send_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: chat.model.rowCount() == 2 and chat.model.message(1).answer_tokens
                        + chat.model.message(1).reasoning_tokens >= 3, timeout=120000)
        procs[1][0].kill()
        qtbot.waitUntil(lambda: bool(error_reports), timeout=60000)
        (r,) = error_reports
        assert r.title == "A worker was lost" and b in r.message and a not in r.message
        qtbot.waitUntil(lambda: not chat.is_busy(), timeout=30000)
        assert chat.model.message(0).content.startswith("Write a long story")   # the conversation is kept
        assert window.isVisible()
    finally:
        for p, _ in procs:
            p.kill()
            p.wait(10)
            p.stderr.close()


def test_compare_on_workers_runs_apart_and_a_lost_worker_in_the_ladder_is_named(window, library_models,
                                                                                error_reports, qtbot, monkeypatch):
    """Compare and the eval ladder with workers run in a child process (app.ui.worker_jobs): results come back;
    a worker killed mid-run is named in the error and the app carries on."""
    from tests.app.test_rpc import start_worker

    monkeypatch.delenv("GGML_VK_VISIBLE_DEVICES")
    procs = [start_worker(), start_worker()]
    try:
        (a, b) = [endpoint for _, endpoint in procs]
        window.settings.rpc_workers, window.settings.gpu_layers = [a, b], -1
        window.settings.context_size = 1024
        q8, q4 = library_models("Q8_0", "Q4_K_M")
        window.library.refresh_now()
        view = window.compare
        view.set_groups(window.library.groups())
        view.set_pair(q8, q4)
        view.prompt.setPlainText("What is 17 times 24?")
        view.max_tokens.setValue(12)
        with qtbot.waitSignal(view.compareFinished, timeout=300000) as sig:
            qtbot.mouseClick(view.run_button, Qt.MouseButton.LeftButton)
        assert sig.args[0].load["rpc"] and sig.args[0].candidate_tokens
        qtbot.waitUntil(lambda: not view.is_busy(), timeout=10000)
        ladder = view.ladder
        ladder.chunks.setValue(8)
        ladder.ctx.setValue(128)
        qtbot.mouseClick(ladder.run_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: ladder.is_busy(), timeout=10000)
        qtbot.wait(3000)                                   # the child has loaded the reference on the workers
        procs[1][0].kill()
        qtbot.waitUntil(lambda: bool(error_reports), timeout=120000)
        (r,) = error_reports
        assert r.title == "A worker was lost" and b in r.message and a not in r.message
        qtbot.waitUntil(lambda: not ladder.is_busy(), timeout=30000)
        assert window.isVisible()
    finally:
        for p, _ in procs:
            p.kill()
            p.wait(10)
            p.stderr.close()
