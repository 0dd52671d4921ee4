"""Loaded by ``site`` when this folder is on PYTHONPATH (tests/test_portability.py): this Python pretends to be a
non-POSIX one for DistillDesk's own code.

* ``resource``, ``fcntl``, ``termios``, ``pwd`` and ``grp`` cannot be imported from the project's modules (third-
  party packages still can: their Linux builds use them, their Windows builds have their own code);
* ``os.fork``, ``os.forkpty``, ``os.sched_getaffinity``, ``os.sync_file_range``, ``os.posix_fadvise``, and
  ``os.pwrite``, ``os.pread`` (none on Windows) are gone, for everyone.  (``os.sysconf`` stays: psutil's Linux
  build needs it; the project itself no longer calls it.)
"""
import builtins
import os
import sys

BLOCKED = frozenset({"resource", "fcntl", "termios", "pwd", "grp"})
PROJECT = tuple(os.path.join(os.environ["DISTILLDESK_PROJECT_ROOT"], d) + os.sep
                for d in ("app", "kernels", "quantizer", "resources", "packaging"))
_real_import = builtins.__import__


def _import(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and name.partition(".")[0] in BLOCKED:
        caller = (globals or {}).get("__file__") or ""
        if caller.startswith(PROJECT):
            raise ModuleNotFoundError(f"No module named {name!r} (POSIX-only; {caller} must not need it)",
                                      name=name)
    return _real_import(name, globals, locals, fromlist, level)


builtins.__import__ = _import
for _name in ("fork", "forkpty", "sched_getaffinity", "sync_file_range", "posix_fadvise", "pwrite", "pread"):
    if hasattr(os, _name):
        delattr(os, _name)
sys.modules["distilldesk_posixless"] = sys  # a marker the test checks
