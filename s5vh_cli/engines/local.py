"""The local engine: this machine's decode worker pool and batched inference (extract), one process (encode,
train). It wraps the code that was there before the engines were; results are unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from . import BackboneInfo, ExtractPlan, Row


class LocalEngine:
    name = "local"

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers
        self._model: Any = None
        self._dev: Any = None

    # ---- extract ---------------------------------------------------------------------------------------
    def open_backbone(self, plan: ExtractPlan) -> BackboneInfo:
        from ..extract import default_workers
        from ..runtimes import load_embedder

        self._model, choice = load_embedder(plan.backbone, plan.weights, runtime=plan.runtime,
                                            precision=plan.precision, device=plan.device, threads=plan.threads,
                                            batch_size=plan.videos_per_pass * plan.frames)
        m = self._model
        if self.workers is None:
            self.workers = default_workers(m.runtime if m.device == "cpu" else "torch")
        return BackboneInfo(m.weights_path, m.weights_sha256,
                            f"{m.describe()} ({choice.reason}); {self.workers} decode worker(s)",
                            precision=m.precision, runtime=m.describe(), record=m.record(), notes=tuple(m.notes))

    def extract(self, todo: list[tuple[str, str]], plan: ExtractPlan) -> Iterator[list[Row]]:
        from ..config import ExtractConfig
        from ..extract import _decoded, _row_head, embed_clips, embed_views

        cfg = ExtractConfig(frames=plan.frames, sampling=plan.sampling, decoder=plan.decoder, views=plan.views,
                            view_seed=plan.view_seed)
        batch: list[tuple[str, Any]] = []

        def flush() -> list[Row]:
            feats = embed_clips(self._model, [c for _, c in batch], plan.videos_per_pass)
            t = plan.frames
            rows = [feats[k * t:(k + 1) * t] for k in range(len(batch))]
            if plan.views:  # a row is the plain frames, then each view's frames
                views = embed_views(self._model, [c for _, c in batch], plan.videos_per_pass)
                rows = [np.concatenate([r, v]) for r, v in zip(rows, views, strict=True)]
            out = [("ok", vid, clip.path, _row_head(vid, clip), rows[k], clip.notes)
                   for k, (vid, clip) in enumerate(batch)]
            batch.clear()
            return out

        for vid, path, status, value in _decoded(todo, cfg, plan.size, plan.resize, self.workers or 0):
            if status == "err":
                yield [("err", vid, path, value)]  # reported at once, committed with the next batch
                continue
            batch.append((vid, value))
            if len(batch) >= plan.videos_per_pass:
                yield flush()
        if batch:
            yield flush()

    # ---- encode ----------------------------------------------------------------------------------------
    def encode(self, model: Any, model_path: str, feats: np.ndarray, *, batch_size: int, device: str,
               ssm_backend: str, progress: Any) -> np.ndarray:
        from ..device import resolve_device
        from ..encode import encode_array

        # encode_file has set the model's scan backend for this device already
        return encode_array(model, feats, batch_size=batch_size, device=resolve_device(device), progress=progress)

    def close(self) -> None:
        self._model = None  # the runtime keeps its loaded backbone cached for the process


class SingleProcess:
    """The training hooks of one process holding the whole batch: each is the identity, so the training loop
    computes exactly what it computed before engines existed."""

    name = "local"
    rank, world, is_writer = 0, 1, True
    run_id: str | None = None  # a job to continue after a restart (torchrun only)
    restarted = False

    def start(self, device: Any) -> Any:
        return device

    def prepare(self, model: Any) -> None:
        pass

    def forward(self, model: Any, *args: Any) -> Any:
        return model(*args)

    def rows(self, n: int) -> slice:
        return slice(0, n)

    def shared_draws(self, n: int, views: int) -> Any:
        import contextlib

        return contextlib.nullcontext()

    def gather(self, t: Any) -> Any:
        return t

    def backward_loss(self, losses: dict[str, Any], n_local: int, n_global: int, tcfg: Any) -> Any:
        return losses["loss"]

    def logged(self, losses: dict[str, Any], n_local: int, n_global: int, tcfg: Any) -> dict[str, float]:
        return {k: float(v.detach()) for k, v in losses.items()}

    def on_writer(self, fn: Any) -> Any:
        return fn()

    def barrier(self) -> None:
        pass

    def close(self) -> None:
        pass
