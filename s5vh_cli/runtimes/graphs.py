"""Backbone graphs exported for the CPU runtimes, cached on disk.

A graph is exported once from our own backbone module (``s5vh_cli.backbones``: torchvision is never needed) and
kept under ``<cache>/graphs/<key>/``, where the key holds the backbone, the sha256 of the weights, the runtime
and its version and the exporter's version: new weights or a runtime upgrade give a new graph, never a stale
one. The graph takes what the decoder produces (uint8 RGB frames [B, S, S, 3]) and returns the feature
[B, D]: the normalisation is inside it, exactly as in ``Backbone.forward``.

Writes are atomic and safe with several processes: a graph is built in a private temporary folder and renamed
into place (a reader sees a whole graph or none), and an advisory lock per key makes a second process wait for
the first export instead of repeating it.

Cache folder: ``$S5VH_CACHE_DIR``, else ``$XDG_CACHE_HOME/s5vh``, else ``~/.cache/s5vh``.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendError

GRAPH_FORMAT = 1  # bump when the exported graph changes for the same weights (inputs, outputs, opset)
ONNX_OPSET = 17


def cache_dir() -> Path:
    """Where exported graphs and the ``auto`` runtime measurements are kept."""
    env = os.environ.get("S5VH_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "s5vh"


def graph_key(backbone: str, sha256: str, runtime: str, runtime_version: str, exporter: str) -> str:
    safe = "".join(c if c.isalnum() or c in ".-_" else "_" for c in f"{runtime_version}-{exporter}")
    return f"{backbone}-{sha256[:16]}-{runtime}-{safe}-g{GRAPH_FORMAT}"


@contextlib.contextmanager
def _key_lock(root: Path, key: str) -> Iterator[None]:
    fd = os.open(root / f".{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def cached_graph(key: str, build: Callable[[Path], dict[str, Any]]) -> tuple[Path, bool]:
    """The folder of graph ``key``, built by ``build(tmp_folder)`` when absent. Returns (folder, built now).

    ``build`` writes the graph's files into the folder it is given and returns a dict saved as ``meta.json``.
    """
    root = cache_dir() / "graphs"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BackendError(f"{root}: cannot create the graph cache ({e.strerror}); set S5VH_CACHE_DIR to a "
                           "writable folder") from None
    final = root / key
    if (final / "meta.json").is_file():
        return final, False
    with _key_lock(root, key):
        if (final / "meta.json").is_file():  # another process finished it while we waited
            return final, False
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
        try:
            meta = build(tmp)
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
            if final.exists():  # a torn folder from a crash before meta.json existed: replace it
                shutil.rmtree(final, ignore_errors=True)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final, True


def _export_copy(model):  # noqa: ANN001, ANN202 - a torch module, imported lazily
    """A private f32, eval-mode, contiguous copy of ``model`` to export: the exporter switches the module it is
    given to eval mode and then back to that module's own mode, which for a wrapper would put the caller's
    model into training mode (batch-norm on batch statistics)."""
    import torch

    m = copy.deepcopy(model).float().eval().to(memory_format=torch.contiguous_format)
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def _export_onnx(model, path: Path, size: int) -> None:  # noqa: ANN001 - torch module
    import warnings

    import torch

    m = _export_copy(model)
    x = torch.zeros(2, size, size, 3, dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (x,), str(path), input_names=["frames"], output_names=["features"],
                          dynamic_axes={"frames": {0: "batch"}, "features": {0: "batch"}},
                          opset_version=ONNX_OPSET, dynamo=False)


def check_frames(size: int) -> np.ndarray:
    """The fixed batch every loaded graph is checked on against torch's features (stored at export)."""
    return np.random.default_rng(0).integers(0, 256, (4, size, size, 3), dtype=np.uint8)


def onnx_graph(model) -> tuple[Path, bool]:  # noqa: ANN001 - a Backbone
    """Folder holding ``model.onnx`` (uint8 frames -> features, dynamic batch) and ``reference.npy`` (torch's
    features of ``check_frames``); exported now when not cached. Returns (folder, exported now)."""
    import torch

    spec = model.spec

    def build(tmp: Path) -> dict[str, Any]:
        _export_onnx(model, tmp / "model.onnx", spec.input_size)
        m = _export_copy(model).cpu()
        with torch.inference_mode():
            ref = m(torch.from_numpy(check_frames(spec.input_size))).numpy()
        np.save(tmp / "reference.npy", ref)
        return {"backbone": spec.name, "weights_sha256": model.weights_sha256, "format": "onnx",
                "opset": ONNX_OPSET, "torch": torch.__version__}

    key = graph_key(spec.name, model.weights_sha256, "onnx", f"opset{ONNX_OPSET}", f"torch{torch.__version__}")
    return cached_graph(key, build)


def openvino_graph(model) -> tuple[Path, bool]:  # noqa: ANN001 - a Backbone
    """Folder holding OpenVINO IR ``model.xml``/``model.bin`` (weights in f32) converted from the ONNX graph,
    and its ``reference.npy``. Returns (folder, converted now)."""
    import openvino as ov
    import torch

    spec = model.spec
    version = ov.get_version().split("-")[0]

    def build(tmp: Path) -> dict[str, Any]:
        src, _ = onnx_graph(model)
        g = ov.convert_model(str(src / "model.onnx"))
        ov.save_model(g, str(tmp / "model.xml"), compress_to_fp16=False)  # fp16 weights would change f32 results
        shutil.copy(src / "reference.npy", tmp / "reference.npy")
        return {"backbone": spec.name, "weights_sha256": model.weights_sha256, "format": "openvino-ir",
                "openvino": version, "torch": torch.__version__}

    key = graph_key(spec.name, model.weights_sha256, "openvino", version, f"torch{torch.__version__}")
    return cached_graph(key, build)
