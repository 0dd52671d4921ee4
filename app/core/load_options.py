"""How a model is loaded: the one set of device and context settings that every model load takes (chat, both
phases of compare, eval, probes, imatrix collection, ``--self-test``).

The GUI builds one from its settings (``AppSettings.load_options()``), the CLI from its flags; an
:class:`~app.core.engine.Engine` takes it as ``options=``.  Fields that change the logits (``logit_key``) are part
of the key of a stored reference (see :mod:`app.core.refstore`): a cached reference computed with flash attention
on is never mixed with a candidate scored with it off.
"""
from __future__ import annotations

from dataclasses import dataclass, field

FLASH_ATTN_CHOICES = ("auto", "on", "off")
KV_CACHE_TYPES = ("f16", "q8_0")


@dataclass(frozen=True)
class LoadOptions:
    """``n_threads``: CPU threads (None = automatic).  ``n_gpu_layers``: layers offloaded to GPU / remote devices
    (-1 = all).  ``flash_attn``: "auto" (llama.cpp decides), "on" or "off".  ``kv_cache_type``: type of the K and V
    cache ("f16", or "q8_0" for long reasoning chains in less memory).  ``use_mmap``: map the file.
    ``devices``: names of the ggml devices to use (empty = llama.cpp's default choice).  ``rpc_workers``:
    "host:port" endpoints of ``distilldesk worker`` processes whose devices join the load.  ``tensor_split``:
    proportions of the offloaded layers per device (empty = by free memory)."""

    n_threads: int | None = None
    n_gpu_layers: int = 0
    flash_attn: str = "auto"
    kv_cache_type: str = "f16"
    use_mmap: bool = True
    devices: tuple[str, ...] = field(default_factory=tuple)
    rpc_workers: tuple[str, ...] = field(default_factory=tuple)
    tensor_split: tuple[float, ...] = field(default_factory=tuple)

    def logit_key(self) -> dict:
        """The settings that change the numbers a model computes (for cache keys and recorded results)."""
        return {"flash_attn": self.flash_attn, "kv_cache_type": self.kv_cache_type}
