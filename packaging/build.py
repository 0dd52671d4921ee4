#!/usr/bin/env python3
"""Build the one-folder DistillDesk bundle with PyInstaller and print its unpacked size.

    python packaging/build.py [--dist DIR] [--work DIR]

The bundle lands in DIST/distilldesk/ (default: dist/distilldesk); run it with DIST/distilldesk/distilldesk.
Exit status is non-zero if the build fails.  The size goal is < 200 MB unpacked on Linux.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIZE_GOAL_MB = 200


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def strip_binaries(bundle: Path) -> int:
    """Strip debug symbols from the bundle's shared libraries (libpython alone carries ~18 MB of them).

    Libraries in ``*.libs`` folders were rewritten by auditwheel/patchelf; strip corrupts those, so they are left
    alone.  Returns the bytes saved.  A no-op where there is no ``strip`` (Windows).
    """
    strip = shutil.which("strip")
    if strip is None or sys.platform == "win32":
        return 0
    saved = 0
    for f in bundle.rglob("*"):
        if f.is_symlink() or not f.is_file() or any(p.endswith(".libs") for p in f.parts):
            continue
        if ".so" not in f.name and f.suffix != ".dylib":
            continue
        before = f.stat().st_size
        if subprocess.run([strip, "--strip-debug", str(f)], capture_output=True).returncode == 0:
            saved += before - f.stat().st_size
    return saved


def link_duplicates(bundle: Path) -> int:
    """Replace byte-identical copies in one folder by symlinks to the first (PyInstaller copies ``libllama.so`` and
    ``libllama.so.0`` as two files).  Returns the bytes saved.  Not on Windows (no symlinks by default)."""
    if sys.platform == "win32":
        return 0
    saved = 0
    for folder in [bundle, *[d for d in bundle.rglob("*") if d.is_dir() and not d.is_symlink()]]:
        seen: dict[tuple[int, str], Path] = {}
        for f in sorted(folder.iterdir(), key=lambda p: (len(p.name), p.name)):
            if f.is_symlink() or not f.is_file() or ".so" not in f.name:
                continue
            key = (f.stat().st_size, hashlib.sha256(f.read_bytes()).hexdigest())
            if key in seen:
                saved += f.stat().st_size
                f.unlink()
                f.symlink_to(seen[key].name)
            else:
                seen[key] = f
    return saved


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dist", type=Path, default=ROOT / "dist")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "pyinstaller")
    ap.add_argument("--gpu-modules", action="store_true",
                    help="also carry the GPU backend modules `make gpu` installed (the default bundle is CPU-only)")
    args = ap.parse_args(argv)
    cmd = [sys.executable, "-m", "PyInstaller", "--noconfirm", "--clean", "--log-level", "WARN",
           "--distpath", str(args.dist), "--workpath", str(args.work), str(ROOT / "packaging" / "distilldesk.spec")]
    print("+", " ".join(cmd), flush=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), DISTILLDESK_BUNDLE_GPU_MODULES="1" if args.gpu_modules else "0")
    rc = subprocess.run(cmd, cwd=ROOT, env=env).returncode
    if rc:
        print(f"PyInstaller failed with exit code {rc}", file=sys.stderr)
        return rc
    bundle = args.dist / "distilldesk"
    saved = strip_binaries(bundle)
    print(f"stripped debug symbols: {saved / 1e6:.1f} MB saved")
    saved = link_duplicates(bundle)
    print(f"identical library copies turned into symlinks: {saved / 1e6:.1f} MB saved")
    mb = folder_size(bundle) / 1e6
    verdict = "within" if mb < SIZE_GOAL_MB else "OVER"
    print(f"bundle: {bundle}  size: {mb:.1f} MB unpacked ({verdict} the {SIZE_GOAL_MB} MB goal)")
    print(f"run it: {bundle / 'distilldesk'}  (try --self-test)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
