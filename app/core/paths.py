"""Where DistillDesk keeps its files (platformdirs), with environment overrides for tests and portable installs.

``DISTILLDESK_DATA_DIR``  : models we made (GGUFs), chat history, settings.   default: user data dir
``DISTILLDESK_CACHE_DIR`` : rebuildable things (demo checkpoint, built wheels). default: user cache dir
Hugging Face checkpoints live in the standard HF cache (``HF_HOME`` / ``HF_HUB_CACHE``), shared with other tools.
"""
from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "distilldesk"


def data_dir() -> Path:
    return _folder(Path(os.environ.get("DISTILLDESK_DATA_DIR") or platformdirs.user_data_dir(APP_NAME)),
                   "data", "DISTILLDESK_DATA_DIR")


def cache_dir() -> Path:
    return _folder(Path(os.environ.get("DISTILLDESK_CACHE_DIR") or platformdirs.user_cache_dir(APP_NAME)),
                   "cache", "DISTILLDESK_CACHE_DIR")


def models_dir() -> Path:
    """GGUF files made by DistillDesk: ``models/<model-name>/<model-name>-<TYPE>.gguf``."""
    return _folder(data_dir() / "models", "models", "DISTILLDESK_DATA_DIR")


def _folder(p: Path, what: str, var: str) -> Path:
    """``p``, created if needed; a typed error naming the way out when it cannot be (a file in the way...)."""
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        from .errors import DataFolderError

        reason = "a file is in the way" if isinstance(e, (FileExistsError, NotADirectoryError)) else (
            e.strerror or str(e))
        raise DataFolderError(f"DistillDesk's {what} folder {p} cannot be created ({reason}): move that file "
                              f"away, or set {var} to a folder you can write to") from None
    return p


def history_db() -> Path:
    return data_dir() / "history.sqlite3"


def resources_dir() -> Path:
    return Path(__file__).resolve().parent.parent.parent / "resources"
