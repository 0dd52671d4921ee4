"""Devices for llama.cpp: the CPU, GPU backend modules and remote RPC workers.

The only module that touches ggml's backend registry, through ctypes on the wheel's own libraries.  That matters:
the wheel ships *copies* (``libggml.so`` and ``libggml.so.0`` are two files), and each copy has its own registry.
libllama uses ``libggml.so.0`` (its DT_NEEDED), so that is the one opened here -- after ``import llama_cpp``, which
loads it -- and ctypes gets the very same handle.

* **GPU modules**: ``make gpu GPU=vulkan`` (tools/bootstrap.py) builds llama.cpp's Vulkan (or CUDA, ROCm) backend
  as a loadable module (``GGML_BACKEND_DL``) from the wheel's own sdist and puts it next to the wheel's libraries.
  :func:`load_gpu_modules` hands it to ``ggml_backend_load``; its devices then join the registry.  The module links
  ``libggml-base.so.0`` by soname and binds to the copy already loaded.  lavapipe (Mesa's Vulkan on the CPU) is
  listed only when ``GGML_VK_VISIBLE_DEVICES`` is set (llama.cpp skips CPU-type Vulkan devices otherwise).
* **RPC workers** (``distilldesk worker``, :func:`serve`): :func:`add_workers` registers ``host:port`` endpoints
  (``ggml_backend_rpc_add_server`` + ``ggml_backend_register``); their devices are GPU-type devices to llama.cpp.
  ggml's RPC client *aborts the process* when it cannot connect or a connection breaks, so every endpoint is
  probed here first (TCP connect and the protocol's HELLO, with a timeout), and a loss during generation is
  reported through :func:`set_worker_loss_hook` (the CLI prints one line and exits 2) before ggml aborts.
* **Which devices a load uses**: :func:`plan` turns :class:`~app.core.load_options.LoadOptions` into the list of
  devices; :func:`model_devices` hands that list to llama.cpp (``llama_model_params.devices``), so a CPU load
  (``n_gpu_layers=0``) really runs on the CPU only even when a GPU module or worker is registered in the process;
  any other ``Llama(...)`` in the process gets no device (CPU only) once the registry has been touched.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import re
import socket
import struct
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DeviceError, EngineSettingError, GpuUnavailableError, WorkerUnreachableError
from .units import format_size

log = logging.getLogger(__name__)

DEFAULT_WORKER_PORT = 50052            # llama.cpp's rpc-server default
_KINDS = {0: "CPU", 1: "GPU", 2: "iGPU", 3: "ACCEL", 4: "META"}
# libggml-<name> backend modules we know; the registry name each registers under (to skip linked-in ones)
GPU_MODULES = {"vulkan": "Vulkan", "cuda": "CUDA", "hip": "ROCm", "metal": "MTL", "sycl": "SYCL",
               "opencl": "OpenCL", "musa": "MUSA", "cann": "CANN"}
_RPC_PROTO_MAJOR = 7                   # ggml-rpc.h RPC_PROTO_MAJOR_VERSION of the pinned llama.cpp
_RPC_CMD_HELLO = 14                    # ggml-rpc.cpp: "RPC_CMD_HELLO must be always 14"
_RPC_CONN_CAPS = 24                    # transport.h RPC_CONN_CAPS_SIZE
_PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Device:
    """One ggml device.  ``name``: ggml's name ("CPU", "Vulkan0", "RPC0"); ``kind``: "CPU", "GPU", "iGPU",
    "ACCEL"; ``backend``: the registry it belongs to ("CPU", "Vulkan", "RPC"); memory in bytes (None if unknown);
    ``endpoint``: the ``host:port`` of the worker serving it (remote devices only)."""

    name: str
    description: str
    kind: str
    backend: str
    memory_free: int | None = None
    memory_total: int | None = None
    endpoint: str | None = None

    @property
    def remote(self) -> bool:
        return self.endpoint is not None

    def label(self) -> str:
        """"Vulkan0 (llvmpipe (LLVM 15.0.6, 256 bits)), 25.2 GB" -- for Settings, status bar and --self-test."""
        what = f"remote worker {self.endpoint}" if self.remote else self.description
        mem = f", {format_size(self.memory_total)}" if self.memory_total else ""
        return f"{self.name} ({what}){mem}"


@dataclass
class _State:
    ggml: Any = None
    rpc: Any = None
    modules: dict[str, str | None] = field(default_factory=dict)   # module file -> registry name (None: failed)
    workers: dict[str, int] = field(default_factory=dict)          # endpoint -> registry pointer
    in_use: dict[str, int] = field(default_factory=dict)           # endpoint -> loaded models using it
    abort_cb: Any = None
    loss_hook: Callable[[list[str], str], None] | None = None


_state = _State()
_lock = threading.RLock()


# ---- the wheel's libraries ---------------------------------------------------------------------------------------
def lib_dir() -> Path:
    """``site-packages/llama_cpp/lib``: the wheel's libllama/libggml*, and GPU modules installed next to them."""
    import llama_cpp

    return Path(llama_cpp.__file__).resolve().parent / "lib"


def _lib_file(stem: str) -> Path:
    names = {"win32": [f"{stem}.dll"], "darwin": [f"lib{stem}.0.dylib", f"lib{stem}.dylib"]}.get(
        sys.platform, [f"lib{stem}.so.0", f"lib{stem}.so"])
    for name in names:
        if (lib_dir() / name).exists():
            return lib_dir() / name
    raise DeviceError(f"{names[0]} is missing from {lib_dir()}: reinstall with `make setup`")


def _sig(lib: Any, name: str, restype: Any, *argtypes: Any) -> None:
    fn = getattr(lib, name)
    fn.restype, fn.argtypes = restype, list(argtypes)


def _ggml() -> Any:
    """ctypes handles on libggml.so.0 (registry) and libggml-base.so.0 (devices), the copies libllama uses."""
    with _lock:
        if _state.ggml is None:
            import llama_cpp  # noqa: F401 - loads libllama and, through it, the libggml copies it uses

            from .llama_runtime import install_llama_log_handler

            install_llama_log_handler()          # module loading logs too: to logging, not the terminal
            reg, base = ctypes.CDLL(str(_lib_file("ggml"))), ctypes.CDLL(str(_lib_file("ggml-base")))
            vp, sz = ctypes.c_void_p, ctypes.c_size_t
            for name, res, args in [("ggml_backend_dev_count", sz, ()), ("ggml_backend_dev_get", vp, (sz,)),
                                    ("ggml_backend_dev_by_name", vp, (ctypes.c_char_p,)),
                                    ("ggml_backend_load", vp, (ctypes.c_char_p,)),
                                    ("ggml_backend_register", None, (vp,)),
                                    ("ggml_backend_reg_count", sz, ()), ("ggml_backend_reg_get", vp, (sz,))]:
                _sig(reg, name, res, *args)
            for name, res, args in [("ggml_backend_dev_name", ctypes.c_char_p, (vp,)),
                                    ("ggml_backend_dev_description", ctypes.c_char_p, (vp,)),
                                    ("ggml_backend_dev_memory", None, (vp, ctypes.POINTER(sz), ctypes.POINTER(sz))),
                                    ("ggml_backend_dev_type", ctypes.c_int, (vp,)),
                                    ("ggml_backend_dev_backend_reg", vp, (vp,)),
                                    ("ggml_backend_reg_name", ctypes.c_char_p, (vp,)),
                                    ("ggml_backend_reg_dev_count", sz, (vp,)),
                                    ("ggml_backend_reg_dev_get", vp, (vp, sz)),
                                    ("ggml_set_abort_callback", vp, (vp,))]:
                _sig(base, name, res, *args)
            _state.ggml = (reg, base)
            _install_default_devices()
        return _state.ggml


def _rpc() -> Any:
    with _lock:
        if _state.rpc is None:
            _ggml()
            try:
                lib = ctypes.CDLL(str(_lib_file("ggml-rpc")))
            except DeviceError:
                raise DeviceError("this llama.cpp build has no RPC backend (libggml-rpc): run `make setup` again "
                                  "(the default build includes -DGGML_RPC=ON)") from None
            _sig(lib, "ggml_backend_rpc_add_server", ctypes.c_void_p, ctypes.c_char_p)
            _sig(lib, "ggml_backend_rpc_start_server", None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t,
                 ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p))
            _state.rpc = lib
        return _state.rpc


# ---- listing -----------------------------------------------------------------------------------------------------
def _device(handle: int) -> Device:
    reg, base = _ggml()
    name = base.ggml_backend_dev_name(handle).decode()
    backend = base.ggml_backend_reg_name(base.ggml_backend_dev_backend_reg(handle)).decode()
    endpoint = None
    desc = (base.ggml_backend_dev_description(handle) or b"").decode(errors="replace")
    if backend.startswith("RPC"):
        endpoint = desc
        if _state.in_use.get(endpoint, 0) == 0 and _probe_error(endpoint) is not None:
            # A dead worker: asking ggml for its memory would make ggml abort the process.
            return Device(name, desc, "GPU", "RPC", None, None, endpoint)
    free, total = ctypes.c_size_t(), ctypes.c_size_t()
    base.ggml_backend_dev_memory(handle, ctypes.byref(free), ctypes.byref(total))
    kind = _KINDS.get(base.ggml_backend_dev_type(handle), "GPU")
    return Device(name, desc, kind, "RPC" if endpoint else backend, free.value or None, total.value or None,
                  endpoint)


def list_devices(*, load_modules: bool = True) -> list[Device]:
    """Every device llama.cpp can use in this process: the CPU, GPU module devices (loaded first unless
    ``load_modules`` is False) and the devices of registered workers."""
    if load_modules:
        load_gpu_modules()
    reg, _base = _ggml()
    with _lock:
        return [_device(reg.ggml_backend_dev_get(i)) for i in range(reg.ggml_backend_dev_count())]


def _handle(name: str) -> int:
    h = _ggml()[0].ggml_backend_dev_by_name(name.encode())
    if not h:
        raise DeviceError(f"there is no device {name!r}")
    return h


# ---- GPU modules -------------------------------------------------------------------------------------------------
def gpu_module_files() -> list[Path]:
    """The GPU backend modules installed next to the wheel's libraries (``libggml-vulkan.so``, ...)."""
    pattern = {"win32": "ggml-{}.dll", "darwin": "libggml-{}.so"}.get(sys.platform, "libggml-{}.so")
    return [lib_dir() / pattern.format(n) for n in GPU_MODULES if (lib_dir() / pattern.format(n)).exists()]


def load_gpu_modules() -> dict[str, str | None]:
    """Load every installed GPU module once per process; returns module file name -> registry name (None when it
    could not be loaded, e.g. no Vulkan loader on this system: the reason is logged)."""
    reg_lib, base = _ggml()
    with _lock:
        have = {base.ggml_backend_reg_name(reg_lib.ggml_backend_reg_get(i)).decode()
                for i in range(reg_lib.ggml_backend_reg_count())}
        for path in gpu_module_files():
            stem = path.name.removeprefix("lib").split(".")[0].removeprefix("ggml-")
            if path.name in _state.modules or GPU_MODULES[stem] in have:   # loaded, or linked into this build
                continue
            handle = reg_lib.ggml_backend_load(str(path).encode())
            _state.modules[path.name] = base.ggml_backend_reg_name(handle).decode() if handle else None
            if handle:
                log.info("loaded GPU backend %s from %s (%d devices)", _state.modules[path.name], path,
                         base.ggml_backend_reg_dev_count(handle))
            else:
                log.warning("could not load the GPU backend module %s (see llama.cpp's log above)", path)
        return dict(_state.modules)


# ---- RPC workers -------------------------------------------------------------------------------------------------
def parse_endpoint(text: str) -> tuple[str, int]:
    """``"host:port"`` (``"[::1]:50052"`` for IPv6) -> (host, port); EngineSettingError if it is not one."""
    m = re.fullmatch(r"\s*(?:\[([0-9A-Fa-f:.]+)\]|([^\s:\[\]]+)):(\d{1,5})\s*", text or "")
    if not m or not 0 < int(m.group(3)) < 65536:
        raise EngineSettingError(f"{text!r} is not a worker address: write host:port, e.g. 192.168.1.20:"
                                 f"{DEFAULT_WORKER_PORT} (the port `distilldesk worker` prints)")
    return m.group(1) or m.group(2), int(m.group(3))


def _probe_error(endpoint: str, timeout: float = _PROBE_TIMEOUT_S) -> str | None:
    """None if ``endpoint`` answers the RPC HELLO with our protocol version, else why not."""
    host, port = parse_endpoint(endpoint)
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(struct.pack("<BQ", _RPC_CMD_HELLO, _RPC_CONN_CAPS) + bytes(_RPC_CONN_CAPS))
            head = _recv(s, 8)
            (size,) = struct.unpack("<Q", head)
            body = _recv(s, size) if 3 <= size <= 4096 else b""
    except TimeoutError:
        return (f"no answer within {timeout:.0f} s (a worker serves one client at a time: is another app using "
                f"it? Is a firewall dropping the connection?)")
    except OSError as e:
        return e.strerror or str(e)
    if len(body) < 3:
        return "it is not a llama.cpp RPC worker"
    if body[0] != _RPC_PROTO_MAJOR:
        return f"it speaks RPC protocol {body[0]}.{body[1]}.{body[2]}, this app {_RPC_PROTO_MAJOR}.x (same " \
               "DistillDesk version on both machines?)"
    return None


def _recv(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionResetError("the connection was closed")
        data += chunk
    return data


def check_worker(endpoint: str) -> None:
    """Raise WorkerUnreachableError (naming ``endpoint``) unless a compatible worker answers there."""
    why = _probe_error(endpoint)
    if why is not None:
        raise WorkerUnreachableError(
            f"the RPC worker {endpoint} cannot be used: {why}. Start it on that machine with `distilldesk worker "
            f"--port {parse_endpoint(endpoint)[1]}` (add --host and --allow-remote for other machines), or remove "
            f"it from the workers list")


def add_workers(endpoints: Sequence[str]) -> list[Device]:
    """Register ``host:port`` workers (each checked first) and return their devices."""
    out: list[Device] = []
    reg_lib, base = _ggml()
    for raw in endpoints:
        host, port = parse_endpoint(raw)
        endpoint = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        with _lock:
            if _state.in_use.get(endpoint, 0) == 0:
                check_worker(endpoint)
            _install_abort_handler()
            if endpoint not in _state.workers:
                reg = _rpc().ggml_backend_rpc_add_server(endpoint.encode())
                if not reg:
                    raise WorkerUnreachableError(f"the RPC worker {endpoint} reports no devices: start it again")
                reg_lib.ggml_backend_register(reg)
                _state.workers[endpoint] = reg
            reg = _state.workers[endpoint]
            out += [_device(base.ggml_backend_reg_dev_get(reg, i)) for i in range(base.ggml_backend_reg_dev_count(reg))]
    return out


def set_worker_loss_hook(hook: Callable[[list[str], str], None] | None) -> None:
    """``hook(lost_endpoints, ggml_message)`` runs when ggml is about to abort the process because a worker
    connection broke (ggml's RPC client cannot recover from that).  The CLI prints one line and exits 2."""
    _state.loss_hook = hook


def lost_workers(*, settle_s: float = 2.0) -> list[str]:
    """The workers in use whose endpoint no longer accepts connections.  A broken connection can be seen before
    the dead worker's listening socket is closed (its process is still being torn down), so when every endpoint
    still answers they are probed again for up to ``settle_s`` seconds."""
    import time

    deadline = time.monotonic() + settle_s
    while True:
        lost = []
        for endpoint in list(_state.in_use) or list(_state.workers):
            host, port = parse_endpoint(endpoint)
            try:
                socket.create_connection((host, port), timeout=2.0).close()
            except OSError:
                lost.append(endpoint)
        if lost or time.monotonic() >= deadline:
            return lost
        time.sleep(0.1)


def _on_ggml_abort(message: bytes | None) -> None:
    text = (message or b"").decode(errors="replace").strip()
    try:
        if "RPC" in text or "connect" in text:
            lost = lost_workers()
            if _state.loss_hook is not None:
                _state.loss_hook(lost, text)
        log.critical("llama.cpp aborts: %s", text)
    except BaseException:  # noqa: BLE001 - nothing may cross back into C (SystemExit from a hook included)
        pass


def _install_abort_handler() -> None:
    if _state.abort_cb is None:
        _state.abort_cb = ctypes.CFUNCTYPE(None, ctypes.c_char_p)(_on_ggml_abort)   # kept alive: C holds it
        _ggml()[1].ggml_set_abort_callback(ctypes.cast(_state.abort_cb, ctypes.c_void_p))


def serve(host: str, port: int, *, n_threads: int, cache_dir: Path | None = None) -> None:
    """Serve this machine's devices to RPC clients (``ggml_backend_rpc_start_server``); never returns while the
    server runs, so it is a process of its own (``distilldesk worker``).  GPU devices if there are any, else the
    CPU (llama.cpp's rpc-server does the same)."""
    devices = [d for d in list_devices() if not d.remote and d.kind in ("GPU", "iGPU")] or \
        [d for d in list_devices(load_modules=False) if d.kind == "CPU"]
    handles = (ctypes.c_void_p * len(devices))(*[_handle(d.name) for d in devices])
    endpoint = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    _rpc().ggml_backend_rpc_start_server(endpoint.encode(), str(cache_dir).encode() if cache_dir else None,
                                         n_threads, len(devices), handles)


# ---- which devices a load uses -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadPlan:
    """The devices a load offloads to (empty: CPU only) and how to call that."""

    devices: tuple[Device, ...] = ()

    @property
    def backend(self) -> str:
        """"CPU", "Vulkan", "RPC", "Vulkan+RPC" ..."""
        names = dict.fromkeys(d.backend for d in self.devices)
        return "+".join(names) or "CPU"

    @property
    def endpoints(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(d.endpoint for d in self.devices if d.endpoint))


def plan(options: Any) -> LoadPlan:
    """The devices for ``options`` (a LoadOptions): none when ``n_gpu_layers`` is 0; otherwise the named
    ``devices`` or, by default, the local GPUs plus the listed workers' devices (workers first, as llama.cpp
    orders them).  GpuUnavailableError when layers are asked for and there is nothing to offload to."""
    if not options.n_gpu_layers:
        return LoadPlan()
    remote = add_workers(options.rpc_workers)
    local = [d for d in list_devices() if not d.remote and d.kind in ("GPU", "iGPU")]
    if options.devices:
        known = {d.name: d for d in [*remote, *local]}
        missing = [n for n in options.devices if n not in known]
        if missing:
            raise DeviceError(f"no device named {', '.join(missing)}: the devices here are "
                              f"{', '.join(known) or 'none besides the CPU'} (see Settings or `distilldesk "
                              f"--self-test`)")
        chosen = [known[n] for n in options.devices]
    else:
        chosen = [*remote, *local]
    if not chosen:
        raise GpuUnavailableError(
            f"{options.n_gpu_layers} GPU layers were asked for, but there is no GPU offload here (no GPU device, "
            f"no RPC worker): set GPU layers to 0, build a GPU backend (`make gpu GPU=vulkan`, or cuda / rocm), "
            f"or add a worker")
    if options.tensor_split and len(options.tensor_split) != len(chosen):
        raise EngineSettingError(f"the tensor split has {len(options.tensor_split)} parts but the load uses "
                                 f"{len(chosen)} devices ({', '.join(d.name for d in chosen)}): give one "
                                 f"proportion per device")
    return LoadPlan(tuple(chosen))


_next_load = threading.local()      # .handles: the device list for the next llama_model_default_params()
_NO_DEVICES = (ctypes.c_void_p * 1)(None)


def _install_default_devices() -> None:
    """From the first use of the registry on, every model load in this process gets an explicit device list:
    the one :func:`model_devices` sets for the loading thread, else none (CPU only).  llama-cpp-python 0.3.36
    leaves ``llama_model_params.devices`` NULL, which means "every GPU and worker registered": a plain
    ``Llama(...)`` (a test's oracle, a benchmark's anchor) would otherwise run its large batches on a GPU module's
    device through llama.cpp's op offload once one is loaded.  It offers no argument for the list, so its
    ``llama_model_default_params`` is wrapped."""
    import llama_cpp.llama_cpp as lc

    original = lc.llama_model_default_params
    if getattr(original, "_distilldesk", False):
        return

    def with_devices() -> Any:
        params = original()
        params.devices = ctypes.addressof(getattr(_next_load, "handles", None) or _NO_DEVICES)
        return params

    with_devices._distilldesk = True  # type: ignore[attr-defined]
    lc.llama_model_default_params = with_devices


@contextlib.contextmanager
def model_devices(load_plan: LoadPlan) -> Iterator[None]:
    """While active, a ``Llama(...)`` created in this thread loads onto exactly ``load_plan.devices`` (an empty
    list: the CPU only; see :func:`_install_default_devices`); the plan's workers count as in use until
    :func:`release`."""
    _ggml()
    handles = (ctypes.c_void_p * (len(load_plan.devices) + 1))(*[_handle(d.name) for d in load_plan.devices],
                                                                None)
    with _lock:
        for endpoint in load_plan.endpoints:
            _state.in_use[endpoint] = _state.in_use.get(endpoint, 0) + 1
    _next_load.handles = handles
    try:
        yield
    except BaseException:
        release(load_plan)
        raise
    finally:
        _next_load.handles = None


def release(load_plan: LoadPlan) -> None:
    """A model loaded with ``load_plan`` was freed: its workers are no longer in use."""
    with _lock:
        for endpoint in load_plan.endpoints:
            n = _state.in_use.get(endpoint, 0) - 1
            if n > 0:
                _state.in_use[endpoint] = n
            else:
                _state.in_use.pop(endpoint, None)


# ---- what a load did (from llama.cpp's own report) ---------------------------------------------------------------
@dataclass
class LoadReport:
    """``layers``: (offloaded, total) from llama.cpp's "offloaded N/M layers to GPU"; ``buffers``: model buffer
    name ("Vulkan0", "CPU_Mapped", "RPC0[host:port]") -> bytes."""

    layers: tuple[int, int] | None = None
    buffers: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        parts = [f"{n} {format_size(size)}" for n, size in self.buffers.items()]
        head = f"{self.layers[0]}/{self.layers[1]} layers offloaded" if self.layers else "no layers offloaded"
        return head + (f" ({', '.join(parts)})" if parts else "")


_LAYERS_RE = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
# llama.cpp reports buffer sizes in binary units ("model buffer size = 92.48" then "M", "iB"); shown in ours.
_BUFFER_RE = re.compile(r"load_tensors:\s+(\S+) model buffer size =\s+([\d.]+) ([KMG])iB")
_BINARY = {"K": 1024, "M": 1024 * 1024, "G": 1024 * 1024 * 1024}


@contextlib.contextmanager
def capture_load_report() -> Iterator[LoadReport]:
    """Collect llama.cpp's load report lines (logged at INFO through ``app.core.llama_cpp``) while loading,
    without letting INFO lines through to handlers that would not have seen them."""
    report = LoadReport()
    logger = logging.getLogger("app.core.llama_cpp")
    before = logger.getEffectiveLevel()

    def take(record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if m := _LAYERS_RE.search(msg):
            report.layers = (int(m.group(1)), int(m.group(2)))
        elif m := _BUFFER_RE.search(msg):
            report.buffers[m.group(1)] = float(m.group(2)) * _BINARY[m.group(3)]
        return record.levelno >= before

    old_level = logger.level
    logger.addFilter(take)
    logger.setLevel(min(before, logging.INFO))
    try:
        yield report
    finally:
        logger.removeFilter(take)
        logger.setLevel(old_level)
