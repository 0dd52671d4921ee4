"""app.core.backends without a GPU: endpoints, the worker probe, device plans, the load report, the build patch."""
from __future__ import annotations

import importlib.util
import logging
import shutil
import socket
import threading

import pytest

from app.core import backends
from app.core.errors import EngineSettingError, GpuUnavailableError, WorkerUnreachableError
from app.core.load_options import LoadOptions


def test_endpoints_are_parsed_or_refused_with_an_example():
    assert backends.parse_endpoint("192.168.1.20:50052") == ("192.168.1.20", 50052)
    assert backends.parse_endpoint(" gpu-box.lan:1 ") == ("gpu-box.lan", 1)
    assert backends.parse_endpoint("[::1]:50052") == ("::1", 50052)
    for bad in ("", "host", "host:", ":50052", "host:70000", "host:0", "a b:1", "::1:50052"):
        with pytest.raises(EngineSettingError, match="is not a worker address: write host:port"):
            backends.parse_endpoint(bad)


def _serve_once(reply: bytes) -> tuple[str, threading.Thread]:
    """A TCP server on 127.0.0.1 that answers one connection with ``reply`` and closes."""
    srv = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.recv(64)
            conn.sendall(reply)
        srv.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return f"127.0.0.1:{srv.getsockname()[1]}", t


def test_the_probe_names_the_endpoint_and_why():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = f"127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(WorkerUnreachableError, match=f"RPC worker {free} cannot be used: .*refused.*"
                                                     "distilldesk worker --port"):
        backends.check_worker(free)
    endpoint, t = _serve_once(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    assert "not a llama.cpp RPC worker" in backends._probe_error(endpoint)
    t.join(5)
    # A worker of another protocol version: HELLO answered with major 6
    endpoint, t = _serve_once((28).to_bytes(8, "little") + bytes([6, 0, 0, 0]) + bytes(24))
    assert "protocol 6.0.0" in backends._probe_error(endpoint)
    t.join(5)


def test_a_cpu_load_uses_no_device_and_gpu_layers_need_one():
    plan = backends.plan(LoadOptions())
    assert plan.devices == () and plan.backend == "CPU" and plan.endpoints == ()
    if not any(not d.remote and d.kind in ("GPU", "iGPU") for d in backends.list_devices()):
        with pytest.raises(GpuUnavailableError, match="no GPU offload here.*make gpu GPU=vulkan.*add a worker"):
            backends.plan(LoadOptions(n_gpu_layers=-1))


def test_devices_are_listed_with_memory():
    cpu = [d for d in backends.list_devices() if d.kind == "CPU"]
    assert len(cpu) == 1 and cpu[0].memory_total and cpu[0].memory_total > 2**28
    assert cpu[0].label().startswith("CPU (") and cpu[0].label().endswith(" GB")


def test_the_load_report_reads_llama_cpp_lines_without_leaking_info(caplog):
    logger = logging.getLogger("app.core.llama_cpp")
    caplog.set_level(logging.WARNING)
    with backends.capture_load_report() as report:
        logger.info("load_tensors: offloaded 31/31 layers to GPU")
        logger.info("load_tensors:      Vulkan0 model buffer size =    92.40 MiB")
        logger.info("load_tensors: RPC0[127.0.0.1:50052] model buffer size =    33.82 MiB")
        logger.warning("a warning still gets through")
    assert report.layers == (31, 31)
    assert report.buffers == {"Vulkan0": 92.4 * 2**20, "RPC0[127.0.0.1:50052]": 33.82 * 2**20}
    assert report.summary() == "31/31 layers offloaded (Vulkan0 96.9 MB, RPC0[127.0.0.1:50052] 35.5 MB)"
    assert [r.getMessage() for r in caplog.records] == ["a warning still gets through"]
    assert logger.level == logging.NOTSET and not logger.filters


def test_worker_addresses_loopback_or_not():
    from app.commands.worker import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("::")


def test_tensor_split_flag():
    import argparse

    from app.commands.device_flags import device_fields

    ns = argparse.Namespace(gpu_layers=-1, device=["Vulkan0"], worker=[], tensor_split="3,1")
    assert device_fields(ns) == {"n_gpu_layers": -1, "devices": ("Vulkan0",), "rpc_workers": (),
                                 "tensor_split": (3.0, 1.0)}
    for bad in ("a,b", "0,0", "-1,2"):
        with pytest.raises(EngineSettingError, match="tensor-split"):
            device_fields(argparse.Namespace(gpu_layers=-1, device=[], worker=[], tensor_split=bad))


def test_the_vulkan_patch_applies_to_the_pinned_sources(tmp_path):
    """tools/bootstrap.py guards ggml-vulkan.cpp's VK_EXT_layer_settings block (Debian 12's headers lack it)."""
    from tests.llama_tools import sdist_dir

    spec = importlib.util.spec_from_file_location("bootstrap", backends.Path(__file__).parents[2] / "tools" /
                                                  "bootstrap.py")
    bootstrap = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bootstrap)
    src = tmp_path / "llama.cpp"
    f = src / "ggml" / "src" / "ggml-vulkan" / "ggml-vulkan.cpp"
    f.parent.mkdir(parents=True)
    shutil.copy(sdist_dir() / "ggml" / "src" / "ggml-vulkan" / "ggml-vulkan.cpp", f)
    bootstrap.patch_vulkan(src)
    text = f.read_text()
    guard = text.index("#if defined(VK_EXT_layer_settings)")
    assert guard < text.index("vk::LayerSettingsCreateInfoEXT") < text.index("#else", guard) < text.index("#endif",
                                                                                                          guard)
    bootstrap.patch_vulkan(src)                     # idempotent
    assert f.read_text() == text


def test_a_plain_llama_in_the_process_stays_on_the_cpu(smollm2_gguf):
    """Once the registry is in use (GPU modules loaded, workers registered), a Llama(...) made outside the Engine
    -- a test's oracle, a benchmark's anchor -- gets no device: llama.cpp would otherwise default to all of them."""
    import llama_cpp

    backends.list_devices()
    with backends.capture_load_report() as report:
        llm = llama_cpp.Llama(str(smollm2_gguf("Q8_0")), n_ctx=64, n_gpu_layers=-1, verbose=False)
    llm.close()
    assert report.buffers and all(name.startswith("CPU") for name in report.buffers), report.buffers
