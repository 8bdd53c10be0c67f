"""Inference runtimes for the backbone, behind one call: ``Embedder.embed(frames) -> features``.

``extract()``, ``extract_clips()`` (and so ``query``) and any engine that batches frames call only
``load_embedder(...)`` (cached in the process) and ``Embedder.embed``; which runtime runs the network is decided
here and nowhere else.

Runtimes:
- ``torch``: the backbone module itself (eager, channels-last, inference mode); the only one for CUDA.
- ``onnxruntime``: ONNX Runtime's CPU execution provider on a graph exported from the same module
  (``pip install 's5vh[onnxruntime]'``).
- ``openvino``: OpenVINO's CPU plugin on the same module converted to its IR (``pip install 's5vh[openvino]'``).
- ``auto``: on a GPU, torch. On the CPU, every installed runtime that supports the precision is timed on a
  batch of frames (warm-up, then the best of three) and the fastest wins; the decision is stored in the cache
  folder under a key of the backbone, weights, precision, threads, batch size, CPU and runtime versions, so the
  measurement happens once per machine and setting (delete ``auto-runtime.json`` to measure again).

Precision (``precision``): ``float32`` everywhere (features within 1e-4 of torch's, see docs/extract.md),
``bfloat16`` (OpenVINO on CPUs with bf16 instructions, torch autocast elsewhere: faster, different features),
``float16`` (torch on CUDA), ``auto`` (float16 on CUDA, float32 on the CPU). The precision is recorded in the
features' provenance and checked on resume: features of another precision are other features.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendError, InputError
from .graphs import cache_dir

__all__ = ["RUNTIMES", "PRECISIONS", "Embedder", "Choice", "load_embedder", "available_runtimes", "installed",
           "cache_dir", "measure_all", "clear_cache", "usable_cores"]

RUNTIMES = ("torch", "onnxruntime", "openvino")
PRECISIONS = ("float32", "bfloat16", "float16")
EXTRAS = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
PARITY_ATOL = 1e-4  # float32 graphs must agree with torch within this (absolute, on features of size ~1-10)


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def installed(runtime: str) -> bool:
    import importlib.util

    if runtime == "torch":
        return True
    # both take the graph exported to ONNX (the exporter needs the onnx package)
    if runtime in ("onnxruntime", "openvino"):
        return all(importlib.util.find_spec(m) is not None for m in (runtime, "onnx"))
    return False


def available_runtimes() -> list[str]:
    """The runtimes that can be loaded here (torch always)."""
    return [r for r in RUNTIMES if installed(r)]


@dataclass
class Embedder:
    """A loaded backbone: ``embed(uint8 RGB [B, S, S, 3]) -> float32 [B, D]``."""

    runtime: str
    version: str
    precision: str
    backbone: str
    feature_dim: int
    input_size: int
    weights_path: str
    weights_sha256: str
    threads: int
    device: str  # "cpu", "cuda:0"
    notes: list[str] = field(default_factory=list)

    def embed(self, frames: np.ndarray) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.runtime} {self.version} on {self.device}, {self.precision}, {self.threads} thread(s)"

    def record(self) -> dict[str, str]:
        """What goes into the features' provenance."""
        return {"runtime": self.runtime, "runtime_version": self.version, "precision": self.precision}


def _check_frames(frames: np.ndarray, size: int) -> np.ndarray:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (size, size, 3):
        raise InputError(f"frames must be uint8 [B, {size}, {size}, 3], got {frames.dtype} {list(frames.shape)}")
    return np.ascontiguousarray(frames)


# ----------------------------------------------------------------------------------------------------------
# torch
# ----------------------------------------------------------------------------------------------------------
class TorchEmbedder(Embedder):
    def __init__(self, model, dev, precision: str, threads: int) -> None:  # noqa: ANN001 - torch objects
        import torch

        spec = model.spec
        super().__init__("torch", torch.__version__.split("+")[0], precision, spec.name, spec.feature_dim,
                         spec.input_size, model.weights_path, model.weights_sha256,
                         torch.get_num_threads() if dev.type == "cpu" else threads, str(dev))
        self.model, self.dev = model, dev

    def embed(self, frames: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(_check_frames(frames, self.input_size))
        if self.dev.type == "cuda":
            x = x.pin_memory().to(self.dev, non_blocking=True)
        with torch.inference_mode():
            if self.precision == "bfloat16":
                with torch.autocast(self.dev.type, dtype=torch.bfloat16):
                    y = self.model(x)
            else:
                y = self.model(x)
            return y.float().cpu().numpy()


# ----------------------------------------------------------------------------------------------------------
# ONNX Runtime
# ----------------------------------------------------------------------------------------------------------
def _ort_options(threads: int):  # noqa: ANN202
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # spinning workers hold a core that another process (decoder, other jobs) needs; see docs/extract.md
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


class OrtEmbedder(Embedder):
    def __init__(self, model, precision: str, threads: int) -> None:  # noqa: ANN001
        import onnxruntime as ort

        from .graphs import onnx_graph

        spec = model.spec
        super().__init__("onnxruntime", ort.__version__, precision, spec.name, spec.feature_dim, spec.input_size,
                         model.weights_path, model.weights_sha256, threads, "cpu")
        folder, built = onnx_graph(model)
        if built:
            self.notes.append(f"exported the {spec.name} graph to {folder}")
        self.graph = folder
        self.session = ort.InferenceSession(str(folder / "model.onnx"), _ort_options(threads),
                                            providers=["CPUExecutionProvider"])
        self.max_diff = _parity(self, folder)

    def embed(self, frames: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"frames": _check_frames(frames, self.input_size)})[0]


# ----------------------------------------------------------------------------------------------------------
# OpenVINO
# ----------------------------------------------------------------------------------------------------------
def _ov_precision_name(precision: str) -> str:
    return {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}[precision]


def openvino_supports(precision: str) -> bool:
    if precision == "float32":
        return True
    import openvino as ov

    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return {"bfloat16": "BF16", "float16": "FP16"}.get(precision, "?") in caps


def _ov_compile(xml: Path, precision: str, threads: int, streams: int):  # noqa: ANN202
    import openvino as ov

    core = ov.Core()
    return core.compile_model(str(xml), "CPU", {
        "INFERENCE_PRECISION_HINT": _ov_precision_name(precision),
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": streams,
        "PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT",
        # pinned threads cannot move away from a core that another process is using
        "ENABLE_CPU_PINNING": False,
    })


class OpenVinoEmbedder(Embedder):
    def __init__(self, model, precision: str, threads: int, streams: int = 1) -> None:  # noqa: ANN001
        import openvino as ov

        from .graphs import openvino_graph

        spec = model.spec
        super().__init__("openvino", ov.get_version().split("-")[0], precision, spec.name, spec.feature_dim,
                         spec.input_size, model.weights_path, model.weights_sha256, threads, "cpu")
        folder, built = openvino_graph(model)
        if built:
            self.notes.append(f"converted the {spec.name} graph for openvino to {folder}")
        self.graph = folder
        self.streams = max(1, streams)
        self.compiled = _ov_compile(folder / "model.xml", precision, threads, self.streams)
        self.request = self.compiled.create_infer_request()
        self.queue = ov.AsyncInferQueue(self.compiled, self.streams) if self.streams > 1 else None
        self.max_diff = _parity(self, folder)

    def embed(self, frames: np.ndarray) -> np.ndarray:
        x = _check_frames(frames, self.input_size)
        if self.queue is None or len(x) < 2 * self.streams:
            return np.array(self.request.infer({0: x})[0], dtype=np.float32, copy=True)
        # one slice of the batch per stream, each on its own thread: no barrier between the cores
        out = np.zeros((len(x), self.feature_dim), np.float32)
        bounds = np.linspace(0, len(x), self.streams + 1).astype(int)

        def done(req, lo_hi) -> None:  # noqa: ANN001
            lo, hi = lo_hi
            out[lo:hi] = req.get_output_tensor(0).data

        self.queue.set_callback(done)
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            self.queue.start_async({0: x[lo:hi]}, (lo, hi))
        self.queue.wait_all()
        return out


# ----------------------------------------------------------------------------------------------------------
# parity at export time
# ----------------------------------------------------------------------------------------------------------
def _parity(emb: Embedder, folder: Path) -> float:
    """Max |features - torch's| on the graph's check frames. A float32 graph that disagrees is refused (a
    runtime upgrade or a bad export must not silently change features); reduced precision is only measured."""
    from .graphs import check_frames

    ref = np.load(folder / "reference.npy")
    diff = float(np.abs(emb.embed(check_frames(emb.input_size)) - ref).max())
    if emb.precision == "float32" and not diff <= PARITY_ATOL * max(1.0, float(np.abs(ref).max())):
        raise BackendError(f"{emb.runtime} {emb.version} disagrees with torch on {folder} (max abs difference "
                           f"{diff:.2e}); use --runtime torch")
    return diff


# ----------------------------------------------------------------------------------------------------------
# choosing and loading
# ----------------------------------------------------------------------------------------------------------
def supports(runtime: str, precision: str, device_type: str) -> bool:
    if runtime == "torch":
        return precision in ("float32", "bfloat16") or (precision == "float16" and device_type == "cuda")
    if device_type != "cpu":
        return False
    if runtime == "onnxruntime":
        return precision == "float32"
    if runtime == "openvino":
        return openvino_supports(precision)
    return False


def resolve_precision(precision: str, device_type: str) -> str:
    p = (precision or "auto").strip().lower()
    p = {"f32": "float32", "fp32": "float32", "bf16": "bfloat16", "f16": "float16", "fp16": "float16"}.get(p, p)
    if p == "auto":
        return "float16" if device_type == "cuda" else "float32"
    if p not in PRECISIONS:
        raise InputError(f"precision must be auto, {', '.join(PRECISIONS)}; got {precision!r}")
    return p


def _missing(runtime: str) -> BackendError:
    return BackendError(f"runtime {runtime} is not installed: pip install 's5vh[{EXTRAS[runtime]}]'")


def _build(runtime: str, model, dev, precision: str, threads: int) -> Embedder:  # noqa: ANN001
    if runtime == "torch":
        return TorchEmbedder(model, dev, precision, threads)
    if not installed(runtime):
        raise _missing(runtime)
    if runtime == "onnxruntime":
        return OrtEmbedder(model, precision, threads)
    return OpenVinoEmbedder(model, precision, threads)  # one stream: two measured no faster (docs/extract.md)


def measure_all(embedders: dict[str, Embedder], batch: int, rounds: int = 3) -> dict[str, float]:
    """Frames per second of each embedder on ``batch`` random frames: one warm-up batch each, then ``rounds``
    rounds of one batch each, interleaved (a change in the machine's other load hits all alike); the best."""
    if not embedders:
        return {}
    s = next(iter(embedders.values())).input_size
    x = np.random.default_rng(1).integers(0, 256, (batch, s, s, 3), dtype=np.uint8)
    best = {}
    for name, e in embedders.items():
        e.embed(x)
        best[name] = float("inf")
    for _ in range(rounds):
        for name, e in embedders.items():
            t0 = time.perf_counter()
            e.embed(x)
            best[name] = min(best[name], time.perf_counter() - t0)
    return {name: batch / t for name, t in best.items()}


def _versions() -> str:
    parts = []
    for mod in ("torch", "onnxruntime", "openvino"):
        try:
            m = __import__(mod)
            parts.append(f"{mod}={getattr(m, '__version__', '?')}")
        except ImportError:
            parts.append(f"{mod}=none")
    return ",".join(parts)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _auto_store() -> Path:
    return cache_dir() / "auto-runtime.json"


def _auto_lookup(key: str) -> dict[str, Any] | None:
    try:
        return json.loads(_auto_store().read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def _auto_save(key: str, value: dict[str, Any]) -> None:
    import fcntl
    import tempfile

    path = _auto_store()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(".auto-runtime.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                data = json.loads(path.read_text())
                data = data if isinstance(data, dict) else {}
            except (OSError, ValueError):
                data = {}
            data[key] = value
            fd, tmp = tempfile.mkstemp(prefix=".auto-runtime.", dir=path.parent)
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
    except OSError:
        pass  # the choice is only a cache: measure again next time


@dataclass
class Choice:
    runtime: str
    reason: str
    measured: dict[str, float] = field(default_factory=dict)


def load_embedder(backbone: str, weights: str | os.PathLike | None = None, *, runtime: str = "auto",
                  precision: str = "auto", device: str = "auto", threads: int | None = None,
                  batch_size: int = 32) -> tuple[Embedder, Choice]:
    """The backbone loaded in ``runtime`` (cached in the process: the same arguments return the same object).

    Returns (embedder, choice), where ``choice.reason`` says why this runtime was taken (for the log).
    Raises BackendError for a runtime that is not installed or cannot run the precision on the device.
    """
    return _load(backbone, None if weights is None else str(weights), (runtime or "auto").strip().lower(),
                 precision, device, threads, batch_size)


@lru_cache(maxsize=4)
def _load(backbone: str, weights: str | None, runtime: str, precision: str, device: str, threads: int | None,
          batch_size: int) -> tuple[Embedder, Choice]:
    from ..backbones import create_backbone, get_spec
    from ..device import resolve_device

    get_spec(backbone)
    if runtime not in ("auto", *RUNTIMES):
        raise InputError(f"runtime must be auto, {', '.join(RUNTIMES)}; got {runtime!r}")
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev.type)
    n_threads = threads or usable_cores()
    if runtime != "auto":
        if runtime != "torch" and dev.type != "cpu":
            raise BackendError(f"runtime {runtime} runs on the CPU; use --device cpu or --runtime torch")
        if runtime != "torch" and not installed(runtime):
            raise _missing(runtime)
        if not supports(runtime, prec, dev.type):
            raise BackendError(f"runtime {runtime} cannot run {prec} on {dev.type} here")
    model = create_backbone(backbone, weights, dev, half=prec == "float16")
    if runtime != "auto":
        return _build(runtime, model, dev, prec, n_threads), Choice(runtime, "as asked")
    if dev.type != "cpu":
        return _build("torch", model, dev, prec, n_threads), Choice("torch", f"the only runtime on {dev.type}")
    candidates = [r for r in available_runtimes() if supports(r, prec, "cpu")]
    if candidates == ["torch"]:
        others = [r for r in RUNTIMES[1:] if not installed(r)]
        hint = f" (pip install 's5vh[{EXTRAS[others[0]]}]' for a faster CPU runtime)" if others else ""
        if not supports("torch", prec, "cpu"):
            raise BackendError(f"no installed runtime runs {prec} on the CPU here")
        return _build("torch", model, dev, prec, n_threads), Choice("torch", f"the only one installed{hint}")
    key = "|".join([backbone, model.weights_sha256[:16], prec, f"threads={n_threads}", f"batch={batch_size}",
                    _cpu_name(), _versions()])
    known = _auto_lookup(key)
    if known and known.get("runtime") in candidates:
        rates = {k: float(v) for k, v in known.get("frames_per_s", {}).items()}
        return (_build(known["runtime"], model, dev, prec, n_threads),
                Choice(known["runtime"], f"fastest when measured on {known.get('measured', '?')} "
                       f"({_rates(rates)}; {_auto_store()})", rates))
    loaded: dict[str, Embedder] = {}
    for r in candidates:
        try:
            loaded[r] = _build(r, model, dev, prec, n_threads)
        except BackendError:
            continue
    rates = measure_all(loaded, batch_size)
    best = max(rates, key=rates.get)
    _auto_save(key, {"runtime": best, "frames_per_s": {k: round(v, 1) for k, v in rates.items()},
                     "measured": time.strftime("%Y-%m-%d %H:%M", time.localtime())})
    emb = loaded[best]
    for r, e in loaded.items():
        if r != best:
            emb.notes.extend(e.notes)
    return emb, Choice(best, f"fastest measured now ({_rates(rates)})", rates)


def _rates(rates: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.0f} frames/s" for k, v in sorted(rates.items(), key=lambda kv: -kv[1]))


def clear_cache() -> None:
    """Forget the runtimes loaded in this process (tests)."""
    _load.cache_clear()
