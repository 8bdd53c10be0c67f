"""Where the work runs. `extract`, `encode` and `train` call an engine's methods and never ask which engine it is.

- ``local`` (engines/local.py): this machine; decode worker processes and batched inference (extract), one
  process (encode, train).
- ``ray`` (engines/ray.py): a Ray cluster through Ray Data (extract, encode); needs ``s5vh[distributed]``.
- ``ddp`` (engines/ddp.py): ``torchrun`` ranks with DistributedDataParallel (train).

An extract engine turns (id, path) pairs into feature rows and failure records; writing them (the journal,
resume, the artifact, provenance) stays in extract.py, so every engine makes the same file. An encode engine
turns features into packed codes. A train engine holds the few hooks the training loop calls once per step
(shard the batch, gather the contrastive codes, weight the loss for backward, reduce the logged figures, the
writer rank); the single-process hooks leave the loop exactly as it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..errors import InputError

ENGINES = ("local", "ray")

# one result of an extract engine: ("ok", id, path, row head, float32 features [T, D], notes)
# or ("err", id, path, reason)
Row = tuple[Any, ...]


@dataclass(frozen=True)
class ExtractPlan:
    """Everything a worker needs to turn a path into a feature row (picklable: it travels to remote workers)."""

    backbone: str
    weights: str | None  # the --weights file, else None for the registry's lookup
    frames: int
    sampling: str
    size: int  # input size of the backbone (centre crop)
    resize: int  # shorter side before the crop
    videos_per_pass: int  # whole videos per forward pass; every pass is padded to this many
    device: str  # "auto", "cpu", "cuda", "cuda:N"
    runtime: str = "auto"  # backbone runtime (s5vh_cli.runtimes): auto, torch, onnxruntime, openvino
    precision: str = "auto"
    decoder: str = "auto"  # video decoder: auto, pyav, opencv
    threads: int | None = None  # inference threads per process [default: the cores it may use]
    views: int = 0  # transformed renderings per video (extract --views; the local engine only)
    view_seed: int = 0


@dataclass(frozen=True)
class BackboneInfo:
    weights_path: str
    weights_sha256: str
    where: str  # one line for the log: runtime, device(s), workers
    precision: str  # of the features the engine computes (recorded and checked on resume)
    runtime: str  # one line: runtime, version, device, precision, threads
    record: dict[str, str] = field(default_factory=dict)  # what goes into the features' provenance
    notes: tuple[str, ...] = ()  # lines for the log (e.g. why a runtime was chosen)


class ExtractEngine(Protocol):
    name: str

    def open_backbone(self, plan: ExtractPlan) -> BackboneInfo:
        """Find (and, where the engine runs inference itself, load) the weights; raise S5VHError when missing."""

    def extract(self, todo: list[tuple[str, str]], plan: ExtractPlan) -> Iterator[list[Row]]:
        """Rows for ``todo`` in its order, in groups; the caller commits each group to the journal."""

    def close(self) -> None:
        """Release what the engine started (worker pools, a Ray cluster it started itself)."""


class EncodeEngine(Protocol):
    name: str

    def encode(self, model: Any, model_path: str, feats: np.ndarray, *, batch_size: int, device: str,
               ssm_backend: str, progress: Any) -> np.ndarray:
        """Packed codes uint8 [N, bits/8] of ``feats`` [N, T, F] with ``model`` (loaded from ``model_path``),
        equal to ``encode.encode_array``'s; ``device`` and ``ssm_backend`` as the user gave them."""

    def close(self) -> None: ...


def get_engine(name: str, *, workers: int | None = None, ray_address: str | None = None) -> Any:
    """The engine called ``name`` ("local" or "ray"); options that do not apply to it are ignored."""
    if name == "local":
        from .local import LocalEngine

        return LocalEngine(workers=workers)
    if name == "ray":
        from .ray import RayEngine

        return RayEngine(address=ray_address)
    raise InputError(f"unknown engine {name!r}; choose from {', '.join(ENGINES)}")
