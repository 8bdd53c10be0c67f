"""Seconds per training epoch of `s5vh train` on a synthetic feature file, S5VH against the Transformer encoder.

Writes random features [videos, frames, dim] (the shape of a real feature file; the values do not change the
arithmetic), computes the centres once, then runs the same `s5vh train` command line for each encoder, in
this process, alternating, and reports the median epoch time from each run's metrics.jsonl and the ratio.

Usage: python -m benchmarks.bench_train [--videos 1000] [--frames 25] [--dim 1280] [--epochs 3]
       [--bits 64] [--preset default] [--threads 2] [--encoders mamba,transformer] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=1000)
    ap.add_argument("--frames", type=int, default=25)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--epochs", type=int, default=3, help="epochs per run; the first includes kernel loading")
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--batch-size", type=int, help="videos per step (default: the preset's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--encoders", default="mamba,transformer")
    ap.add_argument("--workdir", help="where the features, centres and models go (default: a temporary folder)")
    args = ap.parse_args(argv)

    from s5vh_cli import artifacts, cli

    work = Path(args.workdir or tempfile.mkdtemp(prefix="s5vh_bench_train_"))
    work.mkdir(parents=True, exist_ok=True)
    feats = work / "feats.h5"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.videos, args.frames, args.dim), dtype=np.float32)
    ids = [f"v{i:05d}" for i in range(args.videos)]
    artifacts.write_features(feats, x, ids, [f"{i}.mp4" for i in ids], backbone="random", backbone_sha256="",
                             sampling="uniform", prov=artifacts.provenance("bench_train"))
    centers = work / "centers.h5"
    s5vh = ["s5vh"]
    cmd = ["centers", str(feats), "-o", str(centers), "--bits", str(args.bits), "--preset", args.preset, "-q"]
    print("$ " + shlex.join(s5vh + cmd), flush=True)
    if cli.main(cmd):
        return 2
    results = {}
    for enc in [e for e in args.encoders.split(",") if e]:
        model = work / f"{enc}.pt"
        cmd = ["train", str(feats), "--centers", str(centers), "-o", str(model), "--bits", str(args.bits),
               "--preset", args.preset, "--encoder", enc, "--epochs", str(args.epochs), "--threads",
               str(args.threads), "-q"]
        if args.batch_size:
            cmd += ["--batch-size", str(args.batch_size)]
        print("$ " + shlex.join(s5vh + cmd), flush=True)
        t0 = time.perf_counter()
        if cli.main(cmd):
            return 2
        wall = time.perf_counter() - t0
        rows = [json.loads(r) for r in (Path(f"{model}.run") / "metrics.jsonl").read_text().splitlines()]
        times = [float(r["time_s"]) for r in rows]
        results[enc] = {"epoch_s": times, "median_after_first_s": _median(times[1:] or times), "wall_s": wall}
        print(f"{enc}: epochs {', '.join(f'{t:.1f}' for t in times)} s; median after the first "
              f"{results[enc]['median_after_first_s']:.1f} s", flush=True)
    if "mamba" in results and "transformer" in results:
        ratio = results["mamba"]["median_after_first_s"] / results["transformer"]["median_after_first_s"]
        print(f"S5VH / Transformer seconds per epoch: {ratio:.2f}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"videos": args.videos, "frames": args.frames, "dim": args.dim, "bits": args.bits,
                      "preset": args.preset, "threads": args.threads, "load_avg_1min_end": load,
                      "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
