"""A demo corpus the project makes itself: short clips of moving, textured shapes in a few visual classes.

Each class has its own shape, colour, background texture and motion; clips of one class differ in start
position, speed, size, colour jitter and texture phase, and each clip has its own static scenery (a few muted
blocks and bars placed at random), as two takes of one kind of scene differ in real footage. Held-out query clips are drawn with another seed, and
one "copy" query is a cropped, re-encoded version of an indexed clip, so a person can check the answers by eye:
file names carry the class.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .errors import InputError
from .progress import NULL, Progress

CLASSES = ("red_circle", "green_square", "blue_triangle", "yellow_star", "magenta_ring", "cyan_bars")
_COLOURS = {  # BGR
    "red_circle": (40, 40, 220), "green_square": (60, 200, 60), "blue_triangle": (220, 90, 30),
    "yellow_star": (40, 220, 230), "magenta_ring": (200, 50, 200), "cyan_bars": (220, 220, 40),
}


def _background(kind: int, size: int, rng: np.random.Generator, t: float) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi)
    if kind == 0:  # diagonal stripes drifting
        v = 0.5 + 0.5 * np.sin((x + y) / 5.0 + phase + t * 2)
    elif kind == 1:  # checkerboard
        v = (((x + t * 8) // 12 + y // 12) % 2).astype(np.float32)
    elif kind == 2:  # dots
        v = 0.5 + 0.5 * np.cos(x / 3.0 + phase) * np.cos(y / 3.0)
    elif kind == 3:  # coarse noise, fixed per clip
        v = np.kron(rng.random((size // 8 + 1, size // 8 + 1)), np.ones((8, 8)))[:size, :size]
    elif kind == 4:  # radial gradient
        v = np.hypot(x - size / 2, y - size / 2) / size
    else:  # horizontal bands
        v = 0.5 + 0.5 * np.sin(y / 4.0 + phase - t * 3)
    grey = (60 + 80 * v).astype(np.uint8)
    return np.dstack([grey, grey, grey])


def _draw(frame: np.ndarray, cls: str, cx: float, cy: float, r: float, angle: float, colour) -> None:
    import cv2

    c = (int(cx), int(cy))
    if cls == "red_circle":
        cv2.circle(frame, c, int(r), colour, -1, cv2.LINE_AA)
    elif cls == "green_square":
        box = cv2.boxPoints(((cx, cy), (2 * r, 2 * r), 0.0)).astype(np.int32)
        cv2.fillPoly(frame, [box], colour, cv2.LINE_AA)
    elif cls == "blue_triangle":
        pts = [(cx + r * math.cos(angle + k * 2 * math.pi / 3), cy + r * math.sin(angle + k * 2 * math.pi / 3))
               for k in range(3)]
        cv2.fillPoly(frame, [np.array(pts, np.int32)], colour, cv2.LINE_AA)
    elif cls == "yellow_star":
        pts = []
        for k in range(10):
            rr = r if k % 2 == 0 else r * 0.45
            a = angle + k * math.pi / 5
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        cv2.fillPoly(frame, [np.array(pts, np.int32)], colour, cv2.LINE_AA)
    elif cls == "magenta_ring":
        cv2.circle(frame, c, int(r), colour, max(2, int(r / 3)), cv2.LINE_AA)
    else:  # cyan_bars
        for k in range(-2, 3):
            x0 = int(cx + k * r * 0.8)
            cv2.rectangle(frame, (x0 - 3, int(cy - r)), (x0 + 3, int(cy + r)), colour, -1)


def _scenery(size: int, rng: np.random.Generator) -> list[tuple]:
    """A clip's own static props: 3-5 muted blocks and ellipses at random places, drawn under the moving shape."""
    out = []
    for _ in range(int(rng.integers(3, 6))):
        col = tuple(int(c) for c in rng.integers(30, 170, size=3))
        x, y = (int(v) for v in rng.integers(0, size, size=2))
        w, h = (int(v) for v in rng.integers(size // 10, size // 3, size=2))
        if rng.random() < 0.5:
            out.append(("block", (x - w // 2, y - h // 2), (x + w // 2, y + h // 2), col))
        else:
            out.append(("ellipse", (x, y), (w // 2, h // 2), col))
    return out


def render_clip(path: Path, cls: str, rng: np.random.Generator, *, size: int = 96, n_frames: int = 24,
                fps: float = 12.0) -> None:
    """Write one clip of class ``cls`` with OpenCV's mp4v encoder."""
    import cv2

    k = CLASSES.index(cls)
    colour = tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in _COLOURS[cls])
    r = rng.uniform(0.14, 0.22) * size
    x0, y0 = rng.uniform(0.3, 0.7, size=2) * size
    speed = rng.uniform(0.6, 1.4)
    direction = rng.choice([-1.0, 1.0])
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size, size))
    if not writer.isOpened():
        raise InputError(f"{path}: OpenCV cannot write mp4v video here")
    bg_rng_seed = int(rng.integers(1 << 31))
    scenery = _scenery(size, rng)
    try:
        for f in range(n_frames):
            t = f / n_frames
            frame = _background(k, size, np.random.default_rng(bg_rng_seed), t)
            for kind, p0, p1, col in scenery:
                if kind == "block":
                    cv2.rectangle(frame, p0, p1, col, -1)
                else:
                    cv2.ellipse(frame, p0, p1, 0, 0, 360, col, -1, cv2.LINE_AA)
            a = direction * speed * 2 * math.pi * t
            # each class has its own motion pattern
            if k == 0:
                cx, cy, rr = (x0 + direction * speed * (t - 0.5) * size * 0.5) % size, y0, r
            elif k == 1:
                cx, cy, rr = x0, y0 + math.sin(a * 2) * size * 0.2, r
            elif k == 2:
                cx, cy, rr = x0, y0, r
            elif k == 3:
                cx, cy, rr = size / 2 + math.cos(a) * size * 0.2, size / 2 + math.sin(a) * size * 0.2, r
            elif k == 4:
                cx, cy, rr = x0, y0, r * (0.6 + 0.8 * t)
            else:
                cx, cy, rr = size / 2 + math.sin(a) * size * 0.15, size / 2, r
            _draw(frame, CLASSES[k], cx, cy, rr, a, colour)
            writer.write(frame)
    finally:
        writer.release()


def make_corpus(folder: str | Path, *, per_class: int = 24, queries_per_class: int = 1, seed: int = 0,
                size: int = 96, n_frames: int = 24, progress: Progress = NULL) -> dict[str, list[Path]]:
    """Write ``folder/videos/<class>/clip_NNN.mp4`` and ``folder/queries/<class>_query.mp4``.

    Returns the written paths by role. Re-running with the same arguments rewrites identical clips.
    """
    folder = Path(folder)
    videos, queries = folder / "videos", folder / "queries"
    total = len(CLASSES) * (per_class + queries_per_class)
    progress.start("demo corpus", total)
    out: dict[str, list[Path]] = {"videos": [], "queries": []}
    for ci, cls in enumerate(CLASSES):
        (videos / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            p = videos / cls / f"clip_{i:03d}.mp4"
            render_clip(p, cls, np.random.default_rng([seed, ci, i]), size=size, n_frames=n_frames)
            out["videos"].append(p)
            progress.advance()
        queries.mkdir(parents=True, exist_ok=True)
        for q in range(queries_per_class):
            p = queries / f"{cls}_query{q}.mp4"
            render_clip(p, cls, np.random.default_rng([seed + 1000, ci, q]), size=size, n_frames=n_frames)
            out["queries"].append(p)
            progress.advance()
    progress.finish()
    return out


def make_copy(src: str | Path, dst: str | Path, *, crop: float = 0.1, scale: float = 0.75, fps: float | None = None) -> None:
    """A near-duplicate: crop ``crop`` of each border, rescale, and re-encode (mp4v) -- a typical re-upload."""
    import cv2

    cap = cv2.VideoCapture(str(src))
    if not cap.isOpened():
        raise InputError(f"{src}: cannot open video")
    in_fps = cap.get(cv2.CAP_PROP_FPS) or 12.0
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        h, w = frame.shape[:2]
        dy, dx = int(h * crop), int(w * crop)
        frame = frame[dy:h - dy, dx:w - dx]
        frame = cv2.resize(frame, (max(16, int(w * scale)), max(16, int(h * scale))), interpolation=cv2.INTER_AREA)
        frames.append(frame)
    cap.release()
    if not frames:
        raise InputError(f"{src}: no frames could be decoded")
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"mp4v"), fps or in_fps, (w, h))
    for f in frames:
        writer.write(f)
    writer.release()
