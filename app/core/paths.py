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
    p = Path(os.environ.get("DISTILLDESK_DATA_DIR") or platformdirs.user_data_dir(APP_NAME))
    p.mkdir(parents=True, exist_ok=True)
    return p


def cache_dir() -> Path:
    p = Path(os.environ.get("DISTILLDESK_CACHE_DIR") or platformdirs.user_cache_dir(APP_NAME))
    p.mkdir(parents=True, exist_ok=True)
    return p


def models_dir() -> Path:
    """GGUF files made by DistillDesk: ``models/<model-name>/<model-name>-<TYPE>.gguf``."""
    p = data_dir() / "models"
    p.mkdir(parents=True, exist_ok=True)
    return p


def history_db() -> Path:
    return data_dir() / "history.sqlite3"


def resources_dir() -> Path:
    return Path(__file__).resolve().parent.parent.parent / "resources"
