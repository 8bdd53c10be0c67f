"""Fashion-MNIST temporal: short videos whose class depends on the ORDER of their frames.

Each video shows one Fashion-MNIST garment moving in one of six ways. Its class is (garment, motion),
10 x 6 = 60 classes. The motions come in three time-reversed pairs:

  zoom_in  <-> zoom_out      rotate_cw <-> rotate_ccw      translate_lr <-> translate_rl

Videos are made in pairs from one rendered frame sequence: the partner of a "zoom in" video holds the
very same frames in reverse order (before encoding). The multiset of frames of the two classes of a pair
is therefore identical, so any bag-of-frames method (mean features, frame-set matching) cannot tell them
apart, while a model that reads frame order can. A pair always stays in one split.

Splits: ``train`` uses images of the Fashion-MNIST training set; ``query`` and ``database`` use images of
its test set (disjoint pairs), so no image is shared between training and evaluation.

Label files (see ``benchmarks/datasets/__init__.py`` for the layout and order rule), per split:
  ``<split>_labels.h5``   one-hot over the 60 (garment, motion) classes: the main relevance
  ``<split>_garment.h5``  one-hot over the 10 garments: an order-blind relevance, for contrast
  ``<split>_motion.h5``   one-hot over the 6 motions

Usage: python -m benchmarks.datasets.fmnist_temporal --out DIR [--videos 3000] [--frames 25] [--size 64]
       [--seed 0] [--tiny] [--synthetic] [--fmnist DIR] [--workers 2]
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from s5vh_cli.errors import InputError, S5VHError

from . import check_dataset, sort_rows, write_labels, write_manifest

GARMENTS = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot")
MOTIONS = ("zoom_in", "zoom_out", "rotate_cw", "rotate_ccw", "translate_lr", "translate_rl")
AXES = ("zoom", "rotate", "translate")  # axis k holds motions 2k (rendered) and 2k+1 (its reverse)
CLASSES = tuple(f"{g}:{m}" for g in GARMENTS for m in MOTIONS)
SPLIT_SHARES = {"train": 0.6, "query": 0.1, "database": 0.3}
FIELDS = ("path", "split", "label", "garment", "motion", "class_index", "image_split", "image_index", "pair", "partner")


@dataclass(frozen=True)
class BuildConfig:
    videos: int = 3000
    frames: int = 25
    size: int = 64
    fps: float = 12.5
    seed: int = 0
    synthetic: bool = False


# ----------------------------------------------------------------------------------------------------------
# image sources
# ----------------------------------------------------------------------------------------------------------
def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e})") from None
    if len(data) < 8 or data[0] != 0 or data[1] != 0:
        raise InputError(f"{path}: not an IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != math.prod(dims):
        raise InputError(f"{path}: truncated IDX file")
    return arr.reshape(dims)


def load_fmnist(folder: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (images [60000,28,28], labels), "test": (...)}`` from the four IDX files."""
    folder = Path(folder)
    out = {}
    for split, stem in (("train", "train"), ("test", "t10k")):
        found = []
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            cands = [folder / f"{stem}-{kind}.gz", folder / f"{stem}-{kind}"]
            path = next((c for c in cands if c.is_file()), None)
            if path is None:
                raise InputError(f"{folder}: no {stem}-{kind}[.gz]; run benchmarks/fetch_assets.sh or pass --synthetic")
            found.append(_read_idx(path))
        images, labels = found
        if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
            raise InputError(f"{folder}: {stem} images {images.shape} and labels {labels.shape} do not match")
        out[split] = (images, labels.astype(np.int64))
    return out


def synthetic_images(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stand-in 28x28 images, 10 classes of distinct asymmetric shapes, for tests without Fashion-MNIST."""
    import cv2

    rng = np.random.default_rng(seed)
    imgs, labels = [], []
    for c in range(10):
        for _ in range(n_per_class):
            im = np.zeros((28, 28), np.uint8)
            v = int(rng.integers(150, 256))
            j = rng.integers(-2, 3, size=2)
            x0, y0 = 6 + int(j[0]), 5 + int(j[1])
            if c % 5 == 0:
                cv2.rectangle(im, (x0, y0), (x0 + 14, y0 + 6 + c // 5 * 6), v, -1)
            elif c % 5 == 1:
                cv2.ellipse(im, (14 + int(j[0]), 14 + int(j[1])), (9, 4 + c // 5 * 3), 20 * (c // 5), 0, 360, v, -1)
            elif c % 5 == 2:
                pts = np.array([[x0, y0], [x0 + 15, y0 + 3], [x0 + 4 + 4 * (c // 5), y0 + 16]], np.int32)
                cv2.fillPoly(im, [pts], v)
            elif c % 5 == 3:
                cv2.line(im, (x0, y0), (x0 + 14, y0 + 16), v, 2 + c // 5)
                cv2.line(im, (x0, y0 + 16), (x0 + 6, y0), v, 2)
            else:
                cv2.circle(im, (14 + int(j[0]), 14 + int(j[1])), 6 + c // 5 * 2, v, 2)
                cv2.rectangle(im, (x0, y0), (x0 + 4, y0 + 4), v, -1)
            imgs.append(im)
            labels.append(c)
    return np.stack(imgs), np.array(labels, np.int64)


# ----------------------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------------------
def motion_params(axis: str, rng: np.random.Generator, size: int) -> dict[str, float]:
    """Random parameters of one rendered (forward) motion; the reverse motion replays its frames backwards."""
    p = {"background": float(rng.integers(0, 48)), "cy": float(rng.uniform(0.42, 0.58) * size)}
    if axis == "zoom":  # garment side grows from small to big
        p.update(cx=float(rng.uniform(0.42, 0.58) * size), s0=float(rng.uniform(0.25, 0.4) * size),
                 s1=float(rng.uniform(0.85, 1.05) * size), a0=float(rng.uniform(-15, 15)), a1=0.0)
        p["a1"] = p["a0"]
    elif axis == "rotate":  # OpenCV angles are anticlockwise; a decreasing angle turns the garment clockwise
        a0 = float(rng.uniform(-30, 30))
        p.update(cx=float(rng.uniform(0.45, 0.55) * size), s0=float(rng.uniform(0.55, 0.7) * size),
                 a0=a0, a1=a0 - float(rng.uniform(120, 240)))
        p["s1"] = p["s0"]
    else:  # translate left to right
        s = float(rng.uniform(0.4, 0.55) * size)
        p.update(s0=s, s1=s, a0=float(rng.uniform(-15, 15)), x0=float(rng.uniform(0.15, 0.3) * size),
                 x1=float(rng.uniform(0.7, 0.85) * size))
        p["a1"] = p["a0"]
    return p


def render_frames(image: np.ndarray, axis: str, params: dict[str, float], frames: int, size: int) -> np.ndarray:
    """Frames [T, size, size] uint8 of the forward motion along ``axis`` (zoom in, rotate cw, translate l->r)."""
    import cv2

    out = np.empty((frames, size, size), np.uint8)
    src = image.astype(np.float32)
    for t in range(frames):
        u = t / max(frames - 1, 1)
        side = params["s0"] * (params["s1"] / params["s0"]) ** u  # geometric: zoom looks uniform in time
        angle = params["a0"] + (params["a1"] - params["a0"]) * u
        cx = params["x0"] + (params["x1"] - params["x0"]) * u if axis == "translate" else params["cx"]
        m = cv2.getRotationMatrix2D((13.5, 13.5), angle, side / 28.0)
        m[:, 2] += (cx - 13.5, params["cy"] - 13.5)
        warped = cv2.warpAffine(src, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)
        out[t] = np.clip(np.maximum(warped, params["background"]), 0, 255).astype(np.uint8)
    return out


def pair_frames(image: np.ndarray, axis: str, params: dict[str, float], frames: int,
                size: int) -> tuple[np.ndarray, np.ndarray]:
    """(forward, reverse) frame stacks of one pair: the reverse is the forward read backwards."""
    fwd = render_frames(image, axis, params, frames, size)
    return fwd, fwd[::-1].copy()


def write_video(path: Path, frames: np.ndarray, fps: float) -> None:
    import cv2

    h, w = frames.shape[1:3]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not vw.isOpened():
        raise InputError(f"{path}: OpenCV cannot open an mp4v writer here")
    for f in frames:
        vw.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR) if f.ndim == 2 else f)
    vw.release()


# ----------------------------------------------------------------------------------------------------------
# planning and building
# ----------------------------------------------------------------------------------------------------------
def plan(cfg: BuildConfig, pools: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[dict]:
    """One job per pair: which image, which axis, which parameters, which split, which file names."""
    rng = np.random.default_rng(cfg.seed)
    pairs_total = cfg.videos // 2
    counts = {s: int(round(pairs_total * f)) for s, f in SPLIT_SHARES.items()}
    counts["train"] = pairs_total - counts["query"] - counts["database"]
    if min(counts.values()) < 1:
        raise InputError(f"--videos {cfg.videos} is too few for train/query/database pairs (need at least 20)")
    jobs = []
    used: dict[str, set[int]] = {"train": set(), "test": set()}
    for split in ("train", "query", "database"):
        image_split = "train" if split == "train" else "test"
        images, labels = pools[image_split]
        by_class = [np.flatnonzero(labels == c) for c in range(10)]
        combos = [(g, a) for g in range(10) for a in range(len(AXES))]
        order = np.concatenate([rng.permutation(len(combos)) for _ in range(-(-counts[split] // len(combos)))])
        for k in range(counts[split]):
            g, a = combos[order[k]]
            free = [i for i in rng.permutation(by_class[g])[:64] if int(i) not in used[image_split]]
            if not free:
                free = [i for i in by_class[g] if int(i) not in used[image_split]]
            if not free:
                raise InputError(f"not enough {image_split} images of class {GARMENTS[g]} for {cfg.videos} videos")
            img = int(free[0])
            used[image_split].add(img)
            axis = AXES[a]
            names = [f"{split}/{split}_{k:05d}{'ab'[d]}_{GARMENTS[g]}_{MOTIONS[2 * a + d]}.mp4" for d in (0, 1)]
            jobs.append({"split": split, "pair": f"{split}_{k:05d}", "garment": g, "axis": a,
                         "image_split": image_split, "image_index": img,
                         "params": motion_params(axis, rng, cfg.size), "names": names})
    return jobs


_POOLS: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def _init_worker(pools: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    import cv2

    cv2.setNumThreads(1)
    _POOLS.update(pools)


def _build_pair(args: tuple[dict, BuildConfig, str]) -> list[dict]:
    job, cfg, out = args
    image = _POOLS[job["image_split"]][0][job["image_index"]]
    fwd, rev = pair_frames(image, AXES[job["axis"]], job["params"], cfg.frames, cfg.size)
    rows = []
    for d, frames in enumerate((fwd, rev)):
        name = job["names"][d]
        write_video(Path(out) / name, frames, cfg.fps)
        motion = 2 * job["axis"] + d
        rows.append({"path": name, "split": job["split"], "garment": GARMENTS[job["garment"]],
                     "motion": MOTIONS[motion], "class_index": job["garment"] * len(MOTIONS) + motion,
                     "label": CLASSES[job["garment"] * len(MOTIONS) + motion],
                     "image_split": job["image_split"], "image_index": job["image_index"],
                     "pair": job["pair"], "partner": job["names"][1 - d]})
    return rows


def build(out: str | os.PathLike, cfg: BuildConfig, *, fmnist: str | os.PathLike | None = None,
          workers: int = 2, log=None) -> dict:
    """Render every video, then write manifest.csv, label files and dataset.json. Returns the summary."""
    t0 = time.perf_counter()
    out = Path(out)
    if cfg.synthetic:
        pools = {"train": synthetic_images(max(40, cfg.videos // 8), cfg.seed + 1),
                 "test": synthetic_images(max(40, cfg.videos // 16), cfg.seed + 2)}
        source = "synthetic"
    else:
        pools = load_fmnist(fmnist or ".bench-data/fashion-mnist")
        source = f"fashion-mnist ({Path(fmnist or '.bench-data/fashion-mnist')})"
    jobs = plan(cfg, pools)
    for split in SPLIT_SHARES:
        (out / split).mkdir(parents=True, exist_ok=True)
        for old in (out / split).glob("*.mp4"):  # a rebuild must not leave videos of an older plan behind
            old.unlink()
    rows: list[dict] = []
    tasks = [(j, cfg, str(out)) for j in jobs]
    if workers > 1:
        with get_context("fork").Pool(workers, initializer=_init_worker, initargs=(pools,)) as pool:
            for r in pool.imap_unordered(_build_pair, tasks, chunksize=16):
                rows += r
    else:
        _init_worker(pools)
        for t in tasks:
            rows += _build_pair(t)
    write_manifest(out, rows, FIELDS)
    counts = {}
    for split in SPLIT_SHARES:
        srows = sort_rows([r for r in rows if r["split"] == split])
        paths = [r["path"] for r in srows]
        counts[split] = len(paths)
        cls = np.array([r["class_index"] for r in srows])
        for level, names, idx in (("labels", CLASSES, cls), ("garment", GARMENTS, cls // len(MOTIONS)),
                                  ("motion", MOTIONS, cls % len(MOTIONS))):
            onehot = np.zeros((len(paths), len(names)), np.uint8)
            onehot[np.arange(len(paths)), idx] = 1
            write_labels(out, f"{split}_{level}", dataset="fmnist_temporal", split=split, level=level,
                         paths=paths, labels=onehot, class_names=names)
    check_dataset(out)
    size_bytes = sum(p.stat().st_size for p in out.rglob("*.mp4"))
    summary = {"dataset": "fmnist_temporal", "config": asdict(cfg), "source": source, "videos": counts,
               "classes": len(CLASSES), "bytes": size_bytes, "build_seconds": round(time.perf_counter() - t0, 2),
               "workers": workers}
    (out / "dataset.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.datasets.fmnist_temporal",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder (created)")
    ap.add_argument("--videos", type=int, default=3000, help="total videos, made in pairs (default 3000)")
    ap.add_argument("--frames", type=int, default=25, help="frames per video (default 25)")
    ap.add_argument("--size", type=int, default=64, help="frame side in pixels (default 64)")
    ap.add_argument("--fps", type=float, default=12.5, help="frame rate written in the files (default 12.5)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="60 videos of 8 frames: for tests and smoke runs")
    ap.add_argument("--synthetic", action="store_true", help="drawn shapes instead of Fashion-MNIST (for tests)")
    ap.add_argument("--fmnist", default=".bench-data/fashion-mnist", help="folder of the four IDX .gz files")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes (default 2)")
    args = ap.parse_args(argv)
    videos, frames = (60, 8) if args.tiny else (args.videos, args.frames)
    if frames < 2 or args.size < 16 or args.size % 2:
        ap.error("--frames must be >= 2 and --size an even number >= 16")
    cfg = BuildConfig(videos=videos, frames=frames, size=args.size, fps=args.fps, seed=args.seed,
                      synthetic=args.synthetic)
    try:
        summary = build(args.out, cfg, fmnist=args.fmnist, workers=max(1, args.workers))
    except S5VHError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
