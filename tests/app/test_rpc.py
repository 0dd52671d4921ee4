"""Models spread over llama.cpp RPC workers (``distilldesk worker``), all on 127.0.0.1.

The workers are real ``distilldesk worker`` processes serving their CPU; the oracle is the same model on this
process's CPU: a worker runs the very same CPU backend, so tokens and logits must agree exactly (up to float
summation order).  Faults: an unreachable worker is named at load time; a worker killed mid-generation makes the
CLI exit 2 with one line naming it (ggml's RPC client aborts the process on a broken connection, so the CLI's
hook speaks first); a worker refuses a non-loopback address without --allow-remote.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.app.offload_check import assert_matches_cpu, greedy_run, logit_gap


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ)
    env.pop("GGML_VK_VISIBLE_DEVICES", None)     # workers and CLI runs here: CPU devices only
    return env


def _worker_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "app.cli", "worker", *args]


def start_worker(port: int | None = None) -> tuple[subprocess.Popen, str]:
    from app.core import backends

    port = port or _free_port()
    proc = subprocess.Popen(_worker_cmd("--port", str(port), "--threads", "2"), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    endpoint = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while backends._probe_error(endpoint, timeout=1.0) is not None:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"worker on {endpoint} did not start: {proc.stderr.read()}")
        time.sleep(0.2)
    return proc, endpoint


@pytest.fixture
def workers():
    procs = []

    def start(n: int) -> list[str]:
        """Start ``n`` workers; returns their endpoints (``procs[endpoint]`` is the process)."""
        out = []
        for _ in range(n):
            proc, endpoint = start_worker()
            procs.append(proc)
            start.procs[endpoint] = proc
            out.append(endpoint)
        return out

    start.procs = {}

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(10)
        p.stderr.close()


@pytest.mark.parametrize("recipe", ["Q4_K_M", "Q8_0"])
def test_model_split_across_two_workers_matches_the_cpu(workers, smollm2_gguf, recipe):
    """Flash attention off on both sides (its "auto" turns it on for offloaded loads).  Q8_0 must match exactly;
    Q4_K_M within offload_check's tolerance: this process's CPU backend repacks Q4_K weights for its AVX2 matmul
    (CPU_REPACK buffers), a worker's weights arrive over RPC into plain buffers and use the generic kernel
    (measured: mean KL 5.6e-3, max |dlogit| 1.67, same greedy tokens)."""
    from app.core import backends
    from app.core.load_options import LoadOptions

    a, b = workers(2)
    names = tuple(d.name for d in backends.add_workers([a, b]))
    model = smollm2_gguf(recipe)
    cpu = greedy_run(model, LoadOptions(flash_attn="off"))
    split = greedy_run(model, LoadOptions(n_gpu_layers=-1, rpc_workers=(a, b), devices=names,
                                          tensor_split=(1.0, 1.0), flash_attn="off"))
    assert split.backend == "RPC"
    assert split.report.layers == (31, 31)
    on_workers = {k: v for k, v in split.report.buffers.items() if k.startswith("RPC")}
    assert len(on_workers) == 2 and all(v > 10e6 for v in on_workers.values()), split.report.buffers
    assert_matches_cpu(cpu, split)
    if recipe == "Q8_0":
        assert logit_gap(cpu.logits, split.logits)[1] < 1e-4, "a worker runs the same CPU kernels for Q8_0"


def test_unreachable_worker_is_named_at_load(smollm2_gguf):
    from app.core.engine import Engine
    from app.core.errors import WorkerUnreachableError
    from app.core.load_options import LoadOptions

    endpoint = f"127.0.0.1:{_free_port()}"
    with pytest.raises(WorkerUnreachableError, match=f"RPC worker {endpoint} cannot be used.*distilldesk worker"):
        Engine(smollm2_gguf("Q8_0"), n_ctx=256, options=LoadOptions(n_gpu_layers=-1, rpc_workers=(endpoint,)))
    run = subprocess.run([sys.executable, "-m", "app.cli", "chat", str(smollm2_gguf("Q8_0")), "--prompt", "Hi",
                          "--gpu-layers", "-1", "--worker", endpoint, "--no-history"],
                         env=_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and endpoint in lines[0], run.stderr


def test_killing_a_worker_mid_generation_names_it_and_the_cli_exits_2(workers, smollm2_gguf):
    a, b = workers(2)
    cli = subprocess.Popen([sys.executable, "-m", "app.cli", "chat", str(smollm2_gguf("Q8_0")), "--prompt",
                            "Write a long story about a dragon who learns to cook.", "--max-tokens", "3000",
                            "--temperature", "0.8", "--ctx", "4096", "--gpu-layers", "-1", "--worker", a,
                            "--worker", b, "--no-history"],
                           env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    started = threading.Event()
    # the answer streams to stdout (reasoning, if any, to stderr): the first byte means generation is under way
    threading.Thread(target=lambda: cli.stdout.read(1) and started.set(), daemon=True).start()
    try:
        assert started.wait(180), "the CLI produced no output"
        workers.procs[b].kill()
        rc = cli.wait(60)
        err = cli.stderr.read().decode()
    finally:
        if cli.poll() is None:
            cli.kill()
        cli.stdout.close()
        cli.stderr.close()
    assert rc == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("distilldesk: error: the RPC worker") and b in last and a not in last, err


def test_worker_refuses_a_public_address_without_the_flag():
    port = str(_free_port())
    run = subprocess.run(_worker_cmd("--host", "0.0.0.0", "--port", port), env=_env(), capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and "--allow-remote" in run.stderr and "authentication" in run.stderr
    with subprocess.Popen(_worker_cmd("--host", "0.0.0.0", "--port", port, "--allow-remote"), env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
        try:
            first = proc.stderr.readline()
            assert first.startswith("WARNING: ggml RPC has no authentication and no encryption")
        finally:
            proc.kill()
