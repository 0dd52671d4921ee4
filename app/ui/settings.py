"""The app's settings: a small dataclass saved as JSON in the data folder (so tests, which point the data folder
at a temporary directory, never touch the user's settings).  The dialog is in :mod:`app.ui.settings_dialog`."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from app.core import paths
from app.core.load_options import LoadOptions
from app.core.refstore import RefStore

log = logging.getLogger(__name__)

# DeepSeek's recommended sampling for R1 and its distills.
R1_TEMPERATURE = 0.6
R1_TOP_P = 0.95


@dataclass
class AppSettings:
    threads: int = 0  # 0 = automatic (physical cores)
    gpu_layers: int = 0
    context_size: int = 4096
    temperature: float = R1_TEMPERATURE
    top_p: float = R1_TOP_P
    max_tokens: int = 2048
    seed: int = -1  # -1 = random
    greedy: bool = False
    system_prompt: str = ""
    extra_model_dirs: list[str] = field(default_factory=list)  # more folders scanned for GGUFs
    extra_gguf_files: list[str] = field(default_factory=list)  # GGUFs added from anywhere on disk
    hidden_gguf_files: list[str] = field(default_factory=list)  # removed from the Library, left on disk
    flash_attn: str = "auto"  # "auto" | "on" | "off" (app.core.load_options.FLASH_ATTN_CHOICES)
    kv_cache_type: str = "f16"  # "f16" | "q8_0"
    reference_cache_gb: float = 4.0  # stored reference distributions (compare/eval) kept at most, oldest out
    rpc_workers: list[str] = field(default_factory=list)  # host:port of `distilldesk worker`s (llama.cpp RPC)

    def load_options(self) -> LoadOptions:
        """The one set of load settings every model load takes (chat, compare, eval, probes)."""
        return LoadOptions(n_threads=self.effective_threads(), n_gpu_layers=self.gpu_layers,
                           flash_attn=self.flash_attn, kv_cache_type=self.kv_cache_type,
                           rpc_workers=tuple(self.rpc_workers))

    def reference_store(self) -> RefStore:
        """The stored references of compare/eval, bounded by this setting."""
        return RefStore(max_bytes=int(self.reference_cache_gb * 1e9))

    def effective_threads(self) -> int:
        """The threads setting, or (0 = automatic) the physical cores within the affinity mask."""
        from app.core.sysinfo import cap_threads, default_threads

        return cap_threads(self.threads) if self.threads > 0 else default_threads()

    def sampling(self) -> dict:
        """The sampling part, as the engine's settings keywords."""
        return {"temperature": 0.0 if self.greedy else self.temperature, "top_p": self.top_p,
                "max_tokens": self.max_tokens, "seed": self.seed, "greedy": self.greedy}


def settings_path() -> Path:
    return paths.data_dir() / "settings.json"


def load_settings() -> AppSettings:
    p = settings_path()
    if not p.exists():
        return AppSettings()
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
        known = {f.name for f in dataclasses.fields(AppSettings)}
        return AppSettings(**{k: v for k, v in raw.items() if k in known})
    except (OSError, ValueError, TypeError) as e:
        # a damaged settings file must not stop the app; it is replaced on the next save
        log.warning("ignoring unreadable settings %s: %s", p, e)
        return AppSettings()


def save_settings(s: AppSettings) -> None:
    p = settings_path()
    tmp = p.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(dataclasses.asdict(s), indent=2), encoding="utf-8")
    os.replace(tmp, p)
