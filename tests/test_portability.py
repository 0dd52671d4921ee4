"""DistillDesk runs where POSIX-only pieces are missing (Windows; macOS for the Linux-only calls).

Each test runs a real Python process with tests/posixless/sitecustomize.py on its path: the project's modules
cannot import ``resource``, ``fcntl``, ``termios``, ``pwd`` or ``grp``, and ``os.fork``, ``os.forkpty``,
``os.sched_getaffinity``, ``os.sync_file_range`` and ``os.posix_fadvise`` are gone.  Every module must import,
the offscreen GUI and the self-test must run, and each use of a missing piece must fall back to something that
gives the same result (the same GGUF bytes without forked workers, the same usable cores without
``sched_getaffinity``, the current memory without ``resource``).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT
from tests.quantizer import tiny_models as tm

PACKAGES = ("kernels", "quantizer", "app", "resources")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "posixless"), str(ROOT)]),
            "DISTILLDESK_PROJECT_ROOT": str(ROOT), "QT_QPA_PLATFORM": "offscreen"}


def posixless(code: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -c code args`` (or ``python args`` when ``code`` is empty) in the simulated environment."""
    return subprocess.run([sys.executable, *(["-c", code] if code else []), *args], env=_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_the_simulation_blocks_what_it_says():
    """Guard: without this, the other tests would prove nothing (the old main_window's ``import resource``)."""
    code = r"""
import os, sys
assert "distilldesk_posixless" in sys.modules
missing = [n for n in ("fork", "sched_getaffinity", "sync_file_range", "posix_fadvise", "pwrite") if hasattr(os, n)]
assert not missing, missing
ns = {"__file__": os.path.join(os.environ["DISTILLDESK_PROJECT_ROOT"], "app", "ui", "main_window.py")}
for mod in ("resource", "fcntl", "termios", "pwd", "grp"):
    try:
        exec(f"import {mod}", ns)
    except ModuleNotFoundError:
        continue
    raise SystemExit(f"{mod} was importable from the project")
print("blocked")
"""
    proc = posixless(code)
    assert proc.returncode == 0 and proc.stdout.strip() == "blocked", proc.stderr


def test_every_module_imports():
    code = r"""
import importlib, json, pkgutil
bad = {}
for pkg in PACKAGES:
    mod = importlib.import_module(pkg)
    for info in pkgutil.walk_packages(mod.__path__, pkg + "."):
        try:
            importlib.import_module(info.name)
        except Exception as e:
            bad[info.name] = f"{type(e).__name__}: {e}"
print(json.dumps(bad))
""".replace("PACKAGES", repr(PACKAGES))
    proc = posixless(code)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {}


def test_the_gui_self_test_runs(smollm2_checkpoint, tmp_path):
    """``distilldesk --self-test MODEL``: the main window offscreen (its status bar shows the memory), a model
    loaded and generating, our kernels."""
    import quantizer

    model = quantizer.convert(smollm2_checkpoint, tmp_path / "smollm2-Q4_0.gguf", "Q4_0").path
    proc = posixless("", "-m", "app.cli", "--self-test", str(model), timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "self-test: all steps passed" in proc.stdout


def test_the_machines_memory_is_known_without_sysconf():
    """The RAM checks before a load (llama_runtime) read the OS's counters through psutil, not /proc or sysconf
    (the project's code never calls ``os.sysconf``: checked below, as it is absent on Windows)."""
    code = ("from app.core.llama_runtime import available_memory, total_memory\n"
            "print(available_memory(), total_memory())")
    proc = posixless(code)
    assert proc.returncode == 0, proc.stderr
    available, total = map(int, proc.stdout.split())
    assert 0 < available <= total
    users = [str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
             if "os.sysconf" in p.read_text(encoding="utf-8")]
    assert users == []
    if os.path.exists("/proc/meminfo"):
        meminfo = {ln.split(":")[0]: int(ln.split()[1]) * 1024 for ln in open("/proc/meminfo")}
        assert total == meminfo["MemTotal"]
        assert abs(available - meminfo["MemAvailable"]) < 512 << 20


def test_the_status_bar_memory_is_the_current_rss():
    code = r"""
import os
from PySide6.QtWidgets import QApplication
import psutil
from app.ui.main_window import rss_bytes
app = QApplication([])
blob = bytearray(200 << 20)  # 200 MiB touched: the current RSS rises
before_free = rss_bytes()
del blob
after_free = rss_bytes()
print(before_free, after_free, psutil.Process().memory_info().rss)
"""
    proc = posixless(code)
    assert proc.returncode == 0, proc.stderr
    with_blob, without, psutil_now = map(int, proc.stdout.split())
    assert with_blob - without > 150 << 20  # the current value, not a peak that never falls
    assert abs(without - psutil_now) < 32 << 20


def test_threads_without_sched_getaffinity_follow_the_affinity_mask():
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no affinity masks on this OS")
    code = "from quantizer.cpus import usable_cores, default_threads; print(usable_cores(), default_threads())"
    proc = posixless(code)
    assert proc.returncode == 0, proc.stderr
    usable, default = map(int, proc.stdout.split())
    assert usable == len(os.sched_getaffinity(0))
    assert 1 <= default <= usable
    if shutil.which("taskset") is None:
        return
    # a process restricted to one core (taskset) is told one core, without sched_getaffinity (psutil's mask)
    proc = subprocess.run(
        ["taskset", "-c", str(min(os.sched_getaffinity(0))), sys.executable, "-c", code], env=_env(), cwd=ROOT,
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1", "1"]


def test_quantize_without_fork_writes_the_same_file(tmp_path):
    """No ``os.fork``: the quantizer's workers are threads; no ``os.pwrite``: they seek and write under a lock;
    the GGUF is byte for byte the forked one."""
    cfg = tm.make_config("llama", 49152)
    ckpt = tm.write_checkpoint(tmp_path / "ckpt", cfg, tm.make_weights(cfg), dtype=np.float16,
                               tokenizer=tm.SMOL_TOKENIZER)
    import quantizer
    from quantizer.forkpool import fork_available

    forked = quantizer.convert(ckpt, tmp_path / "forked.gguf", "Q4_K_M", threads=2).path
    code = ("import sys, quantizer\nfrom quantizer.forkpool import fork_available\nassert not fork_available()\n"
            "quantizer.convert(sys.argv[1], sys.argv[2], 'Q4_K_M', threads=2)")
    proc = posixless(code, str(ckpt), str(tmp_path / "threads.gguf"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "threads.gguf").read_bytes() == forked.read_bytes()
    assert fork_available() == sys.platform.startswith("linux")


def test_the_offscreen_gui_smoke_test_passes():
    """The GUI test a first-run user's path follows (Library -> demo -> chat), under pytest-qt, in the simulation."""
    proc = posixless("", "-m", "pytest", "-q", "-p", "no:cacheprovider",
                     "tests/app/ui/test_main_window.py::test_first_run_offers_the_demo_then_chats", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 passed" in proc.stdout
