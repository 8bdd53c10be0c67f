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


def _device_of(model: torch.nn.Module) -> torch.device:
    # a linear model (itq/lsh) holds buffers only
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def encode_array(model: torch.nn.Module, feats: np.ndarray, batch_size: int = 256,
                 device: str | torch.device | None = None, progress: Progress | None = None) -> np.ndarray:
    """Codes of ``feats`` [N, T, F] as uint8 [N, bits/8] (np.packbits, big-endian: bit 0 is the MSB of byte 0)."""
    return encode_with_descriptors(model, feats, "none", batch_size=batch_size, device=device,
                                   progress=progress)[0]


def encode_with_descriptors(model: torch.nn.Module, feats: np.ndarray, descriptor: str = "none",
                            descriptor_frames: int = 8, batch_size: int = 256,
                            device: str | torch.device | None = None,
                            progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Codes of ``feats`` [N, T, F] (as ``encode_array``) and, from the same forward pass, float16 descriptors
    (``s5vh_cli.descriptors``): ``soft`` [N, L], ``frames`` [N, F', L] at ``descriptor_frames`` uniform
    positions (all T when 0), or None for ``none``."""
    from .descriptors import KINDS, frame_positions

    progress = progress or NULL
    cfg = model.cfg
    if descriptor not in KINDS:
        raise InputError(f"descriptor must be one of {', '.join(KINDS)}, got {descriptor!r}")
    if feats.ndim != 3:
        raise MismatchError(f"features must be [videos, frames, dim], got shape {feats.shape}")
    if feats.shape[1] != cfg.frames or feats.shape[2] != cfg.feature_dim:
        raise MismatchError(f"features are [{feats.shape[1]} frames x {feats.shape[2]}-d] but the model was built "
                            f"for [{cfg.frames} frames x {cfg.feature_dim}-d]")
    if batch_size < 1:
        raise InputError(f"batch_size must be positive, got {batch_size}")
    dev = torch.device(device) if device is not None else _device_of(model)
    model = model.to(dev).eval()
    n = feats.shape[0]
    out = np.empty((n, cfg.bits // 8), dtype=np.uint8)
    pos = torch.from_numpy(frame_positions(cfg.frames, descriptor_frames))
    desc = None  # allocated from the first batch: a linear model's frame codes may be narrower than the code
    progress.start("encode", total=n)
    try:
        with torch.inference_mode():
            for s in range(0, n, batch_size):
                x = torch.from_numpy(np.ascontiguousarray(feats[s:s + batch_size], dtype=np.float32)).to(dev)
                if descriptor == "none":  # the model's own hash: any module with .cfg and .hash encodes
                    bits = model.hash(x).cpu().numpy()
                else:
                    # a model may describe frames by more than its codes (a linear model's whitening)
                    both = getattr(model, "soft_frame_codes_and_descriptors", None)
                    h, frames_d = both(x) if both is not None else (model.soft_frame_codes(x),) * 2
                    bits = model.bits_from_soft(h).cpu().numpy()
                out[s:s + len(bits)] = np.packbits(bits, axis=1)
                if descriptor != "none":
                    if descriptor == "soft":
                        part = model.soft_video(h)
                    else:
                        part = frames_d[:, pos.to(h.device)]
                    if desc is None:
                        desc = np.empty((n, *part.shape[1:]), np.float16)
                    desc[s:s + len(bits)] = part.float().cpu().numpy()
                progress.advance(len(bits))
    finally:
        progress.finish()
    return out, desc


def parse_seconds(text: str | float, what: str = "duration") -> float:
    """'4s', '4', '2.5s', '500ms' -> seconds (positive)."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        t = str(text).strip().lower()
        try:
            value = float(t[:-2]) / 1000.0 if t.endswith("ms") else float(t[:-1] if t.endswith("s") else t)
        except ValueError:
            raise InputError(f"{what} {text!r} is not a duration; write e.g. 4s, 2.5s or 500ms") from None
    if not value > 0 or value != value:
        raise InputError(f"{what} must be positive, got {text!r}")
    return value


def segment_windows(times: np.ndarray, valid: int, window: float, hop: float) -> list[tuple[float, float, np.ndarray]]:
    """Windows of ``window`` seconds every ``hop`` seconds over a video's sampled frames.

    ``times`` [T] are the sampled frames' times (``meta/frame_times``), the first ``valid`` of them real. Returns
    (start s, end s, indices of the frames inside [start, end)); a last window is added so that the end of the
    video is covered, and a video shorter than one window is one window.
    """
    t = np.asarray(times[:max(1, valid)], dtype=np.float64)
    step = float(np.median(np.diff(t))) if len(t) > 1 else 0.0
    end = float(t[-1] + step)
    if end <= window + 1e-9:
        return [(0.0, end, np.arange(len(t)))]
    starts = list(np.arange(0.0, end - window + 1e-9, hop))
    if starts[-1] + window < end - 1e-6:
        starts.append(end - window)
    out = []
    for s0 in starts:
        idx = np.nonzero((t >= s0 - 1e-9) & (t < s0 + window - 1e-9))[0]
        if len(idx):
            out.append((float(s0), float(s0 + window), idx))
    return out


def window_features(feats: np.ndarray, idx: np.ndarray, frames: int) -> np.ndarray:
    """``frames`` rows of ``feats`` [T, D] spread uniformly over the window's frames ``idx`` (repeating when short)."""
    pick = idx[np.minimum(np.floor((np.arange(frames) + 0.5) * len(idx) / frames).astype(np.int64), len(idx) - 1)]
    return feats[pick]


def encode_segments(model: torch.nn.Module, feats: np.ndarray, frame_times: np.ndarray, valid: np.ndarray,
                    window: float, hop: float, descriptor: str = "none", descriptor_frames: int = 8,
                    batch_size: int = 256, device: str | torch.device | None = None,
                    progress: Progress | None = None) -> dict[str, np.ndarray | None]:
    """Codes of every window (``segment_windows``) of every video: each window's frames are resampled to the
    model's frame count and encoded like a whole video. Returns codes [M, B], descriptors (or None), video [M]
    (row in ``feats``), start [M] and end [M] in seconds."""
    cfg = model.cfg
    if feats.ndim != 3 or feats.shape[2] != cfg.feature_dim:
        raise MismatchError(f"features are {feats.shape} but the model was built for {cfg.feature_dim}-d frames")
    rows, starts, ends, win = [], [], [], []
    for v in range(feats.shape[0]):
        for s0, s1, idx in segment_windows(frame_times[v], int(valid[v]), window, hop):
            rows.append(v)
            starts.append(s0)
            ends.append(s1)
            win.append(window_features(feats[v], idx, cfg.frames))
    x = np.stack(win).astype(np.float32, copy=False)
    codes, desc = encode_with_descriptors(model, x, descriptor, descriptor_frames, batch_size=batch_size,
                                          device=device, progress=progress)
    return {"codes": codes, "descriptors": desc, "video": np.asarray(rows, np.int64),
            "start": np.asarray(starts, np.float64), "end": np.asarray(ends, np.float64)}


def _records(features: artifacts.Features) -> dict[str, np.ndarray]:
    """The per-video file records of the features (older files have none: they stay unknown)."""
    return {k: v for k, v in features.meta.items() if k in artifacts.RECORD_FIELDS and v.shape == (features.n,)}


def encode_file(model_path: str | os.PathLike, features_path: str | os.PathLike, out_path: str | os.PathLike,
                batch_size: int = 256, device: str = "auto", ssm_backend: str = "auto",
                progress: Progress | None = None, descriptor: str = "none", descriptor_frames: int = 8,
                segment: float | None = None, hop: float | None = None, engine: EncodeEngine | None = None) -> Codes:
    """Encode a features file with a model file and write the codes artifact (ids/paths and provenance kept);
    with ``descriptor`` soft or frames, also the float16 descriptors for re-ranking (``s5vh_cli.descriptors``).

    ``segment`` (seconds): one code per window of that length every ``hop`` seconds (default segment / 4) instead
    of one per video, for finding partial copies; rows get ids ``<video id>#t=<start>,<end>`` and the codes file
    records each row's video and time range (``segments/*``, docs/artifacts.md).

    ``engine`` runs the model (s5vh_cli.engines; default: this process). Descriptors and windows are computed in
    this process only."""
    from .engines.local import LocalEngine
    from .ssm import resolve_backend

    progress = progress or NULL
    artifacts.check_not_input(out_path, {"model": model_path, "features": features_path})
    dev = resolve_device(device)
    features = artifacts.read_features(features_path)  # first: a bad features file is refused before any model work
    model, meta = checkpoint.load_model(model_path, device="cpu")
    cfg = model.cfg
    backend_why = "transformer encoder: no selective scan" if cfg.method == "s5vh" else \
        f"{cfg.method}: a linear projection, no selective scan"
    if cfg.method == "s5vh" and cfg.encoder == "mamba":
        backend, backend_why = resolve_backend(ssm_backend, dev)
        model.set_backend(backend)
    if (segment is not None or descriptor != "none") and engine is not None and engine.name != "local":
        raise InputError(f"--descriptor and --segment run in this process; use --engine local, not {engine.name}")
    if segment is not None:
        return _encode_segments_file(model, meta, cfg, model_path, features, features_path, out_path, segment,
                                     hop, batch_size, dev, backend_why, progress, descriptor, descriptor_frames)
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
        if descriptor != "none":
            codes, desc = encode_with_descriptors(model, features.feats, descriptor, descriptor_frames,
                                                  batch_size=batch_size, device=dev, progress=progress)
        else:
            desc = None
            codes = engine.encode(model, str(model_path), features.feats, batch_size=batch_size, device=device,
                                  ssm_backend=ssm_backend, progress=progress)
    finally:
        engine.close()
    model_sha = artifacts.sha256_file(model_path)
    result = Codes(path=Path(out_path), codes=codes, ids=features.ids, paths=features.paths, bits=cfg.bits,
                   model_sha256=model_sha, descriptors=desc, meta=_records(features))
    prov = artifacts.provenance("encode", config=meta.get("model_config"),
                                inputs={"model": model_sha, "features": features.sha256})
    extra = {"model_path": str(Path(model_path).resolve()), "features_sha256": features.sha256,
             "features_path": str(Path(features_path).resolve()), "backbone": features.backbone,
             "sampling": features.sampling, "frames": features.frames, "code_tie": cfg.code_tie,
             "method": cfg.method}
    if desc is not None:
        from .descriptors import frame_positions

        extra["descriptor_frames"] = int(desc.shape[1]) if desc.ndim == 3 else 0
        if desc.ndim == 3:
            extra["descriptor_positions"] = frame_positions(cfg.frames, descriptor_frames).astype(np.int64)
    artifacts.write_codes(out_path, result, prov, extra_attrs=extra)
    result.attrs = extra
    progress.log(f"wrote {codes.shape[0]} {cfg.bits}-bit codes to {out_path}")
    return result


def _encode_segments_file(model, meta, cfg, model_path, features, features_path, out_path, segment, hop, batch_size,
                          dev, backend_why, progress, descriptor, descriptor_frames) -> Codes:
    window = parse_seconds(segment, "segment")
    step = parse_seconds(hop, "hop") if hop is not None else window / 4
    if features.dim != cfg.feature_dim:
        raise MismatchError(f"{features_path}: features are {features.dim}-d but {model_path} was trained on "
                            f"{cfg.feature_dim}-d features")
    times, valid = features.meta.get("frame_times"), features.meta.get("valid_frames")
    if times is None or valid is None or not str(features.sampling).startswith("fps="):
        raise InputError(f"{features_path}: segment codes need features sampled at a fixed rate with frame times "
                         "(s5vh extract --fps RATE --frames MAX)")
    progress.log(f"device: {describe_device(dev)}; selective scan: {backend_why}; windows of {window:g} s every "
                 f"{step:g} s")
    seg = encode_segments(model, features.feats, times, valid, window, step, descriptor, descriptor_frames,
                          batch_size=batch_size, device=dev, progress=progress)
    rows = seg["video"]
    ids = [f"{features.ids[v]}#t={a:g},{b:g}" for v, a, b in zip(rows, seg["start"], seg["end"], strict=True)]
    paths = [features.paths[v] for v in rows]
    model_sha = artifacts.sha256_file(model_path)
    result = Codes(path=Path(out_path), codes=seg["codes"], ids=ids, paths=paths, bits=cfg.bits,
                   model_sha256=model_sha, descriptors=seg["descriptors"],
                   segments={"video_id": [features.ids[v] for v in rows], "start": seg["start"], "end": seg["end"]},
                   meta={k: v[rows] for k, v in _records(features).items()})
    prov = artifacts.provenance("encode", config=meta.get("model_config"),
                                inputs={"model": model_sha, "features": features.sha256})
    extra = {"model_path": str(Path(model_path).resolve()), "features_sha256": features.sha256,
             "features_path": str(Path(features_path).resolve()), "backbone": features.backbone,
             "sampling": features.sampling, "frames": features.frames, "code_tie": cfg.code_tie,
             "method": cfg.method, "segment_seconds": window, "hop_seconds": step}
    if seg["descriptors"] is not None and seg["descriptors"].ndim == 3:
        from .descriptors import frame_positions

        extra["descriptor_frames"] = int(seg["descriptors"].shape[1])
        extra["descriptor_positions"] = frame_positions(cfg.frames, descriptor_frames).astype(np.int64)
    artifacts.write_codes(out_path, result, prov, extra_attrs=extra)
    result.attrs = extra
    progress.log(f"wrote {len(ids)} {cfg.bits}-bit window codes of {features.n} videos to {out_path}")
    return result
