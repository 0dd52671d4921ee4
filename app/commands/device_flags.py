"""The device flags every command that loads a model takes (``--gpu-layers``, ``--device``, ``--worker``,
``--tensor-split``), turned into :class:`~app.core.load_options.LoadOptions` fields.

With ``--worker``, a broken worker connection makes ggml abort the process (its RPC client cannot recover);
:func:`device_fields` installs the hook that turns that into the CLI's usual one line and exit code 2, naming
the worker that was lost.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any


def add_device_flags(p: argparse.ArgumentParser, *, gpu_layers: bool = True) -> None:
    if gpu_layers:
        p.add_argument("--gpu-layers", type=int, default=0, metavar="N",
                       help="layers to offload to GPU devices and workers (-1 = all; 0 = CPU only, the default)")
    p.add_argument("--device", action="append", default=[], metavar="NAME",
                   help="offload to this device only (repeatable; names as `distilldesk --self-test` lists them, "
                        "e.g. Vulkan0, RPC0; default: every GPU and worker)")
    p.add_argument("--worker", action="append", default=[], metavar="HOST:PORT",
                   help="use the devices of a `distilldesk worker` (repeatable; llama.cpp RPC: no authentication "
                        "or encryption, see `distilldesk worker --help`)")
    p.add_argument("--tensor-split", default=None, metavar="P,P,...",
                   help="share of the offloaded layers per device, in device order (default: by free memory)")


def device_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The LoadOptions fields the flags give (``n_gpu_layers``, ``devices``, ``rpc_workers``, ``tensor_split``)."""
    from app.core.errors import EngineSettingError

    split: tuple[float, ...] = ()
    if args.tensor_split:
        try:
            split = tuple(float(x) for x in args.tensor_split.split(","))
        except ValueError:
            raise EngineSettingError(f"--tensor-split {args.tensor_split!r} is not a list of numbers: write e.g. "
                                     "3,1 (three quarters of the layers on the first device)") from None
        if any(x < 0 for x in split) or not sum(split):
            raise EngineSettingError("--tensor-split needs non-negative shares with a positive sum, e.g. 3,1")
    if args.worker:
        install_worker_loss_exit()
    return {"n_gpu_layers": getattr(args, "gpu_layers", 0), "devices": tuple(args.device),
            "rpc_workers": tuple(args.worker), "tensor_split": split}


def install_worker_loss_exit() -> None:
    """When a worker is lost mid-run, print one line naming it and exit 2 (before ggml aborts the process)."""
    from app.core import backends

    def on_loss(lost: list[str], message: str) -> None:
        who = ", ".join(lost) if lost else "an RPC worker"
        sys.stdout.flush()
        print(f"\ndistilldesk: error: the RPC worker {who} was lost while the model ran on it (llama.cpp: "
              f"{message.split(': ', 1)[-1]}); start it again and rerun", file=sys.stderr, flush=True)
        os._exit(2)   # ggml aborts the process right after this hook: leave first, with the CLI's exit code

    backends.set_worker_loss_hook(on_loss)
