"""End-to-end extraction speed next to the backbone alone, measured in one run on the same machine.

    .venv/bin/python benchmarks/bench_extract.py [--clips DIR] [--copies 2] [--frames 25] [--threads 2]
                                                  [--workers 1] [--batch-size 32] [--device cpu]

Videos: every file in --clips (default .bench-data/clips, filled by benchmarks/fetch_assets.sh), each copied
--copies times into a temporary folder; when the folder is missing, synthetic 320x240 clips are generated.
Prints backbone-alone frames/s (random uint8 frames through the same model, batch, threads, device), end-to-end
frames/s of `extract` (decode in workers + batched inference + writing the artifact, from the first video to
the renamed output; model loading excluded from both) and their ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def backbone_alone(model, dev, batch: int, seconds: float = 8.0) -> float:
    import torch

    x = torch.randint(0, 256, (batch, 224, 224, 3), dtype=torch.uint8)
    with torch.inference_mode():
        model(x.to(dev))  # warm-up
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            model(x.to(dev)).float().cpu()
            n += batch
    return n / (time.perf_counter() - t0)


def synthetic(folder: Path, n: int = 8) -> None:
    import cv2

    rng = np.random.default_rng(0)
    for i in range(n):
        w = cv2.VideoWriter(str(folder / f"syn{i}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 25, (320, 240))
        base = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
        for k in range(250):
            w.write(np.roll(base, k * 2, axis=1))
        w.release()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", default=".bench-data/clips")
    ap.add_argument("--copies", type=int, default=2)
    ap.add_argument("--frames", type=int, default=25)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--backbone", default="mobilenet_v2")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    import torch

    from s5vh_cli.backbones import create_backbone
    from s5vh_cli.config import ExtractConfig
    from s5vh_cli.device import describe_device, resolve_device
    from s5vh_cli.extract import extract

    torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    tmp = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    try:
        vids = tmp / "videos"
        vids.mkdir()
        src = Path(args.clips)
        files = sorted(p for p in src.iterdir() if p.is_file()) if src.is_dir() else []  # --clips none: synthetic
        if files:
            for c in range(args.copies):
                for f in files:
                    shutil.copy(f, vids / f"{c}_{f.name}")
        else:
            synthetic(vids)
        model = create_backbone(args.backbone, device=dev)
        # the backbone is timed before and after the extract run and averaged: on a shared machine the load
        # changes during the run, and the two figures show by how much
        before = backbone_alone(model, dev, args.batch_size)
        cfg = ExtractConfig(backbone=args.backbone, frames=args.frames, batch_size=args.batch_size)
        res = extract([str(vids)], tmp / "feats.h5", config=cfg, device=args.device, workers=args.workers,
                      threads=args.threads)
        after = backbone_alone(model, dev, args.batch_size)
        alone = (before + after) / 2
        # decode alone, in this process, for the record
        from s5vh_cli import video

        t0, n = time.perf_counter(), 0
        for f in sorted(vids.iterdir()):
            try:
                n += len(video.read_frames(str(f), args.frames).frames)
            except Exception:
                pass
        decode = n / (time.perf_counter() - t0)
        print(f"device: {describe_device(dev)}; torch threads {args.threads}; decode workers {args.workers}; "
              f"cpu cores {os.cpu_count()}; backbone {args.backbone}; batch {args.batch_size} frames")
        print(f"videos: {res.videos} ({len(res.failed)} failed) from {src if files else 'synthetic clips'}, "
              f"T={args.frames}")
        print(f"decode+resize alone, 1 process:   {decode:8.1f} frames/s")
        print(f"backbone alone:                  {alone:8.1f} frames/s  (before {before:.1f}, after {after:.1f})")
        print(f"extract end to end:              {res.frames_per_s:8.1f} frames/s  ({res.seconds:.1f} s)")
        print(f"end to end / backbone alone:     {res.frames_per_s / alone:8.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
