"""Transformed renderings of a video ("views"), made at extraction so that training sees what copies go through.

``s5vh extract --views N`` decodes each video once and renders, besides the plain sampled frames, N more versions
of it. Each version draws one random chain of the edits a re-upload typically suffers, the same for all its
frames: a temporal edit (a sub-clip, or a lower frame rate that drops and repeats frames) and spatial edits
(crop, mirror, colour change, blur, JPEG compression, overlaid text). The draws are seeded by the extraction
seed, the video's id and the view number, so a rerun renders the same views.

No torch here: this runs in the decode worker processes.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# Probability of each edit in a view's chain (at least one spatial edit is always applied).
P_SUBCLIP, P_SPEED = 0.3, 0.2
P_SPATIAL = {"crop": 0.5, "mirror": 0.5, "colour": 0.5, "blur": 0.3, "jpeg": 0.4, "text": 0.3}
_TEXT = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789 @#:"


@dataclass
class ViewSpec:
    """One rendering: which frames (``temporal``) and what happens to every frame (``spatial``)."""

    temporal: dict[str, Any] = field(default_factory=dict)
    spatial: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return asdict(self)


def view_rng(seed: int, key: str, view: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(key.encode("utf-8", "surrogateescape")),
                                  int(view)])


def draw_view(rng: np.random.Generator) -> ViewSpec:
    """A random chain of edits (see the module docstring)."""
    spec = ViewSpec()
    u = rng.random()
    if u < P_SUBCLIP:
        frac = float(rng.uniform(0.4, 0.8))
        spec.temporal = {"kind": "subclip", "fraction": frac, "start": float(rng.uniform(0.0, 1.0 - frac))}
    elif u < P_SUBCLIP + P_SPEED:
        spec.temporal = {"kind": "frame_rate", "keep": float(rng.uniform(0.25, 0.6))}
    chosen = [name for name, p in P_SPATIAL.items() if rng.random() < p]
    if not chosen:
        chosen = [str(rng.choice(list(P_SPATIAL)))]
    for name in chosen:
        if name == "crop":
            fw, fh = rng.uniform(0.6, 0.9, size=2)
            spec.spatial.append(("crop", {"w": float(fw), "h": float(fh), "x": float(rng.random()),
                                          "y": float(rng.random())}))
        elif name == "mirror":
            spec.spatial.append(("mirror", {}))
        elif name == "colour":
            spec.spatial.append(("colour", {"gain": float(rng.uniform(0.6, 1.4)), "offset": float(rng.uniform(-40, 40)),
                                            "saturation": float(rng.uniform(0.3, 1.5))}))
        elif name == "blur":
            spec.spatial.append(("blur", {"sigma": float(rng.uniform(1.0, 3.0))}))
        elif name == "jpeg":
            spec.spatial.append(("jpeg", {"quality": int(rng.integers(8, 40)), "scale": float(rng.uniform(0.3, 1.0))}))
        else:
            n = int(rng.integers(4, 16))
            text = "".join(str(rng.choice(list(_TEXT))) for _ in range(n))
            spec.spatial.append(("text", {"text": text, "x": float(rng.uniform(0.0, 0.5)), "y": float(rng.uniform(0.1, 0.95)),
                                          "size": float(rng.uniform(0.04, 0.12)),
                                          "colour": [int(c) for c in rng.integers(0, 256, 3)]}))
    return spec


def view_indices(base: np.ndarray, n_frames: int, spec: ViewSpec) -> np.ndarray:
    """Frame indices of a view, as many as ``base`` (the plain sampling of the video)."""
    t = len(base)
    kind = spec.temporal.get("kind")
    if kind == "subclip":
        lo = int(spec.temporal["start"] * n_frames)
        span = max(1, int(round(spec.temporal["fraction"] * n_frames)))
        idx = lo + np.floor((np.arange(t) + 0.5) * span / t).astype(np.int64)
        return np.minimum(idx, n_frames - 1)
    if kind == "frame_rate":
        # a copy at a lower frame rate: only every (1/keep)-th source frame exists, the sampler takes the nearest
        step = 1.0 / spec.temporal["keep"]
        return np.minimum((np.floor(base / step) * step).astype(np.int64), n_frames - 1)
    return np.asarray(base, dtype=np.int64)


def apply_spatial(frame_bgr: np.ndarray, spec: ViewSpec) -> np.ndarray:
    """Apply a view's spatial edits to one full-size BGR frame (before the backbone's resize and crop)."""
    import cv2

    img = frame_bgr
    for name, p in spec.spatial:
        h, w = img.shape[:2]
        if name == "crop":
            cw, ch = max(8, int(w * p["w"])), max(8, int(h * p["h"]))
            x0, y0 = int(p["x"] * (w - cw)), int(p["y"] * (h - ch))
            img = img[y0:y0 + ch, x0:x0 + cw]
        elif name == "mirror":
            img = img[:, ::-1]
        elif name == "colour":
            f = img.astype(np.float32)
            grey = f.mean(axis=2, keepdims=True)
            f = grey + (f - grey) * p["saturation"]
            img = np.clip(f * p["gain"] + p["offset"], 0, 255).astype(np.uint8)
        elif name == "blur":
            img = cv2.GaussianBlur(np.ascontiguousarray(img), (0, 0), p["sigma"])
        elif name == "jpeg":
            small = img
            if p["scale"] < 0.99:
                small = cv2.resize(img, (max(8, int(w * p["scale"])), max(8, int(h * p["scale"]))),
                                   interpolation=cv2.INTER_AREA)
            ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(small), [cv2.IMWRITE_JPEG_QUALITY, p["quality"]])
            if ok:
                small = cv2.imdecode(buf, cv2.IMREAD_COLOR)
            img = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR) if small.shape[:2] != (h, w) else small
        elif name == "text":
            img = np.ascontiguousarray(img).copy()
            scale = max(0.3, p["size"] * h / 22.0)
            cv2.putText(img, p["text"], (int(p["x"] * w), int(p["y"] * h)), cv2.FONT_HERSHEY_SIMPLEX, scale,
                        tuple(p["colour"]), max(1, int(scale * 2)), cv2.LINE_AA)
    return np.ascontiguousarray(img)
