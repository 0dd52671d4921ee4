"""llama.cpp's own command-line tools, built from the llama-cpp-python sdist, as test and benchmark oracles.

The sdist we pin (llama-cpp-python 0.3.36) carries llama.cpp's sources; the installed wheel carries the libraries
(``libllama``, ``libllama-common``, ``libggml*`` under ``site-packages/llama_cpp/lib``).  A tool is then a single g++
call of a few seconds against those libraries, so the oracle runs exactly the llama.cpp code our app runs.

    exe = llama_tool("perplexity")            # builds (once) and returns the path of llama-perplexity
    subprocess.run([exe, ...], env=tool_env())

The sdist (~77 MB, from PyPI) and the binaries are cached in the user cache dir (outside the repo), keyed by the
wheel's library files, so CI's fresh clones on the same machine build nothing.  Nothing here is ever skipped: a
failure to fetch or build is a test failure.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

LLAMA_VERSION = "0.3.36"


def _cache() -> Path:
    import platformdirs

    p = Path(os.environ.get("DISTILLDESK_TEST_CACHE") or platformdirs.user_cache_dir("distilldesk")) / "llama-tools"
    p.mkdir(parents=True, exist_ok=True)
    return p


def wheel_lib_dir() -> Path:
    """``site-packages/llama_cpp/lib`` of the installed wheel (libllama, libllama-common, libggml*)."""
    import llama_cpp

    return Path(llama_cpp.__file__).resolve().parent / "lib"


def sdist_dir() -> Path:
    """The unpacked llama.cpp source tree (``vendor/llama.cpp``) of the pinned sdist, fetched once."""
    root = _cache() / f"llama_cpp_python-{LLAMA_VERSION}"
    src = root / "vendor" / "llama.cpp"
    if (src / "tools").is_dir():
        return src
    with tempfile.TemporaryDirectory(dir=_cache()) as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        "-d", tmp, f"llama-cpp-python=={LLAMA_VERSION}"], check=True)
        archive = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(archive) as tf:
            tf.extractall(tmp, filter="data")
        shutil.rmtree(root, ignore_errors=True)
        os.replace(Path(tmp) / f"llama_cpp_python-{LLAMA_VERSION}", root)
    return src


def _libs_key() -> str:
    h = hashlib.sha256()
    for f in sorted(wheel_lib_dir().glob("lib*.so*")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}".encode())
    return h.hexdigest()[:10]


def tool_env(base: dict | None = None) -> dict:
    """Environment for running a tool: the wheel's libraries on the loader path."""
    env = dict(os.environ if base is None else base)
    lib = str(wheel_lib_dir())
    env["LD_LIBRARY_PATH"] = lib + (os.pathsep + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    return env


def llama_tool(name: str) -> Path:
    """Build (once) and return llama.cpp's ``tools/<name>`` (e.g. "perplexity", "imatrix", "quantize")."""
    out_dir = _cache() / f"bin-{_libs_key()}"
    exe = out_dir / f"llama-{name}"
    if exe.exists():
        return exe
    src = sdist_dir()
    sources = sorted(str(p) for p in (src / "tools" / name).glob("*.cpp"))
    if not sources:
        raise FileNotFoundError(f"no tools/{name}/*.cpp in {src}")
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = wheel_lib_dir()
    # the wheel installs libllama-common only in site-packages/lib (an identical copy of llama_cpp/lib plus it)
    common = next((d for d in (lib, lib.parent.parent / "lib") if list(d.glob("libllama-common.*"))), lib)
    tmp = exe.with_suffix(".tmp")
    cmd = ["g++", "-std=c++17", "-O2", *sources, "-o", str(tmp),
           *(f"-I{src / d}" for d in ("include", "common", "ggml/include", "vendor", f"tools/{name}")),
           f"-L{lib}", f"-Wl,-rpath,{lib}", f"-L{common}", f"-Wl,-rpath,{common}",
           "-lllama-common", "-lllama", "-lggml-base", "-lggml", "-pthread"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"building llama-{name} failed:\n{r.stderr[-3000:]}")
    os.replace(tmp, exe)
    return exe
