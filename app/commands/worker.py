"""``distilldesk worker [--host 127.0.0.1] [--port 50052] [--allow-remote]``: serve this machine's devices to
DistillDesk (or any llama.cpp client) over llama.cpp's RPC protocol, so a model too big for one machine can be
spread over several (Settings > Workers, or ``--worker HOST:PORT`` on chat/compare/eval).

The server is ggml's own (``ggml_backend_rpc_start_server``); the call never returns, so the worker is a process
of its own.  ggml RPC has **no authentication and no encryption**: anyone who can reach the port can run code on
the device and read what it computes.  The worker listens on 127.0.0.1 unless told otherwise; any other address
needs ``--allow-remote`` and gets a warning.  Use an SSH tunnel (``ssh -L 50052:127.0.0.1:50052 host``) or a
private network.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import socket
import sys
from typing import Any

WARNING = ("WARNING: ggml RPC has no authentication and no encryption: anyone who can reach {endpoint} can use "
           "this machine's devices and see the model's data. Use it only on a private network, or keep the "
           "default 127.0.0.1 and reach it through an SSH tunnel (ssh -L PORT:127.0.0.1:PORT this-host).")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from app.core.backends import DEFAULT_WORKER_PORT

    p = subparsers.add_parser(
        "worker", help="serve this machine's CPU/GPU to other DistillDesk instances (llama.cpp RPC)",
        description="Serve this machine's devices (its GPUs, else its CPU) over llama.cpp's RPC protocol, so a "
                    "client can spread a model's layers across machines. No authentication, no encryption: it "
                    "listens on 127.0.0.1 unless --host and --allow-remote say otherwise.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                   "only; reach it from elsewhere with an SSH tunnel)")
    p.add_argument("--port", type=int, default=DEFAULT_WORKER_PORT, metavar="N",
                   help=f"TCP port (default {DEFAULT_WORKER_PORT})")
    p.add_argument("--allow-remote", action="store_true", help="allow listening on a non-loopback address "
                   "(prints a warning: anyone who can reach it can use it)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads (default: all cores)")
    p.add_argument("--cache-dir", default=None, metavar="DIR", help="keep large tensors sent by clients in DIR, "
                   "so loading the same model again sends only their hashes (llama.cpp's rpc-server -c)")
    return p


def is_loopback(host: str) -> bool:
    """True when every address ``host`` names is a loopback address (127.0.0.0/8, ::1)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


def run(args: argparse.Namespace) -> int:
    from app.core import backends

    endpoint = f"[{args.host}]:{args.port}" if ":" in args.host else f"{args.host}:{args.port}"
    if not 0 < args.port < 65536:
        print(f"distilldesk: error: port {args.port} is not a TCP port (1-65535)", file=sys.stderr)
        return 2
    if not is_loopback(args.host):
        if not args.allow_remote:
            print(f"distilldesk: error: refusing to listen on {args.host}: ggml RPC has no authentication or "
                  f"encryption. Keep the default 127.0.0.1 (and use an SSH tunnel), or add --allow-remote on a "
                  f"private network", file=sys.stderr)
            return 2
        print(WARNING.format(endpoint=endpoint), file=sys.stderr, flush=True)
    devices = [d for d in backends.list_devices() if not d.remote and d.kind in ("GPU", "iGPU")] or \
        [d for d in backends.list_devices(load_modules=False) if d.kind == "CPU"]
    print(f"distilldesk worker: serving {', '.join(d.label() for d in devices)} on {endpoint} "
          f"(Ctrl-C to stop)", file=sys.stderr, flush=True)
    # ggml's accept loop runs in C; the default handlers let Ctrl-C / SIGTERM end the process at once.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    backends.serve(args.host, args.port, n_threads=args.threads or os.cpu_count() or 1,
                   cache_dir=args.cache_dir)
    # Returning at all means ggml could not start or keep serving (it printed why, e.g. the port is in use).
    print(f"distilldesk: error: the worker could not serve on {endpoint} (is the port in use? see above)",
          file=sys.stderr)
    return 2
