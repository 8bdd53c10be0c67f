"""Features -> packed binary codes with a trained model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import artifacts, checkpoint
from .artifacts import Codes
from .device import describe_device, resolve_device
from .errors import InputError, MismatchError
from .progress import NULL, Progress

if TYPE_CHECKING:
    from .engines import EncodeEngine


def encode_array(model: torch.nn.Module, feats: np.ndarray, batch_size: int = 256,
                 device: str | torch.device | None = None, progress: Progress | None = None) -> np.ndarray:
    """Codes of ``feats`` [N, T, F] as uint8 [N, bits/8] (np.packbits, big-endian: bit 0 is the MSB of byte 0)."""
    progress = progress or NULL
    cfg = model.cfg
    if feats.ndim != 3:
        raise MismatchError(f"features must be [videos, frames, dim], got shape {feats.shape}")
    if feats.shape[1] != cfg.frames or feats.shape[2] != cfg.feature_dim:
        raise MismatchError(f"features are [{feats.shape[1]} frames x {feats.shape[2]}-d] but the model was built "
                            f"for [{cfg.frames} frames x {cfg.feature_dim}-d]")
    if batch_size < 1:
        raise InputError(f"batch_size must be positive, got {batch_size}")
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    model = model.to(dev).eval()
    n = feats.shape[0]
    out = np.empty((n, cfg.bits // 8), dtype=np.uint8)
    progress.start("encode", total=n)
    try:
        with torch.inference_mode():
            for s in range(0, n, batch_size):
                x = torch.from_numpy(np.ascontiguousarray(feats[s:s + batch_size], dtype=np.float32)).to(dev)
                bits = model.hash(x).cpu().numpy()
                out[s:s + len(bits)] = np.packbits(bits, axis=1)
                progress.advance(len(bits))
    finally:
        progress.finish()
    return out


def _records(features: artifacts.Features) -> dict[str, np.ndarray]:
    """The per-video file records of the features (older files have none: they stay unknown)."""
    return {k: v for k, v in features.meta.items() if k in artifacts.RECORD_FIELDS and v.shape == (features.n,)}


def encode_file(model_path: str | os.PathLike, features_path: str | os.PathLike, out_path: str | os.PathLike,
                batch_size: int = 256, device: str = "auto", ssm_backend: str = "auto",
                progress: Progress | None = None, engine: EncodeEngine | None = None) -> Codes:
    """Encode a features file with a model file and write the codes artifact (ids/paths and provenance kept).

    ``engine`` runs the model (s5vh_cli.engines; default: this process)."""
    from .engines.local import LocalEngine
    from .ssm import resolve_backend

    progress = progress or NULL
    artifacts.check_not_input(out_path, {"model": model_path, "features": features_path})
    dev = resolve_device(device)
    features = artifacts.read_features(features_path)  # first: a bad features file is refused before any model work
    model, meta = checkpoint.load_model(model_path, device="cpu")
    cfg = model.cfg
    backend_why = "transformer encoder: no selective scan"
    if cfg.encoder == "mamba":
        backend, backend_why = resolve_backend(ssm_backend, dev)
        model.set_backend(backend)
    if features.dim != cfg.feature_dim or features.frames != cfg.frames:
        raise MismatchError(f"{features_path}: features are [{features.frames} frames x {features.dim}-d] but "
                            f"{model_path} was trained on [{cfg.frames} frames x {cfg.feature_dim}-d]")
    trained_on = (meta.get("features") or {}).get("backbone", "unknown")
    if "unknown" not in (trained_on, features.backbone) and trained_on != features.backbone:
        raise MismatchError(f"{features_path}: features come from backbone {features.backbone} but {model_path} "
                            f"was trained on {trained_on} features")
    progress.log(f"device: {describe_device(dev)}; selective scan: {backend_why}")
    engine = engine or LocalEngine()
    try:
        codes = engine.encode(model, str(model_path), features.feats, batch_size=batch_size, device=device,
                              ssm_backend=ssm_backend, progress=progress)
    finally:
        engine.close()
    model_sha = artifacts.sha256_file(model_path)
    result = Codes(path=Path(out_path), codes=codes, ids=features.ids, paths=features.paths, bits=cfg.bits,
                   model_sha256=model_sha, meta=_records(features))
    prov = artifacts.provenance("encode", config=meta.get("model_config"),
                                inputs={"model": model_sha, "features": features.sha256})
    extra = {"model_path": str(Path(model_path).resolve()), "features_sha256": features.sha256,
             "features_path": str(Path(features_path).resolve()), "backbone": features.backbone,
             "sampling": features.sampling, "frames": features.frames, "code_tie": cfg.code_tie}
    artifacts.write_codes(out_path, result, prov, extra_attrs=extra)
    result.attrs = extra
    progress.log(f"wrote {codes.shape[0]} {cfg.bits}-bit codes to {out_path}")
    return result
