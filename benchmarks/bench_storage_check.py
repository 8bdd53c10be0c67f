"""What the open-time storage check (artifacts.check_stored_here) costs next to reading the file.

Writes a features file laid out as `s5vh extract` writes it (one chunk per video, ids, paths, meta), then times,
side by side and best of --rounds: the check alone, and read_features (which includes the check). Prints the
ratio. The page cache is warm for both (the file was just written), so the ratio is the check's share of a read
that costs no disk time: an upper bound.

    .venv/bin/python benchmarks/bench_storage_check.py [--videos 4000] [--frames 25] [--dim 1280] [--rounds 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from s5vh_cli import artifacts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=4000)
    ap.add_argument("--frames", type=int, default=25)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="s5vh-bench-") as d:
        path = Path(d) / "feats.h5"
        rng = np.random.default_rng(0)
        ids = [f"class_{i % 50}/clip_{i:06d}.mp4" for i in range(a.videos)]
        with h5py.File(path, "w") as f:
            artifacts.set_provenance(f, "features", artifacts.provenance("bench"))
            ds = f.create_dataset("feats", shape=(a.videos, a.frames, a.dim), dtype="f4",
                                  chunks=(1, a.frames, a.dim))
            for s in range(0, a.videos, 256):
                e = min(a.videos, s + 256)
                ds[s:e] = rng.random((e - s, a.frames, a.dim), dtype=np.float32)
            artifacts._write_ids_paths(f, ids, [f"/videos/{i}" for i in ids])
            g = f.create_group("meta")
            g["frame_times"] = np.zeros((a.videos, a.frames))
        check, read = [], []
        for _ in range(a.rounds):
            t0 = time.perf_counter()
            with h5py.File(path, "r") as f:
                artifacts.check_stored_here(f, path)
            check.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            artifacts.read_features(path, with_hash=False)
            read.append(time.perf_counter() - t0)
        size = path.stat().st_size
    print(f"features file: {a.videos} videos x {a.frames} x {a.dim} float32, {size / 2**20:.0f} MiB, "
          f"{a.videos} chunks")
    print(f"check_stored_here: {min(check) * 1e3:.1f} ms (best of {a.rounds})")
    print(f"read_features:     {min(read) * 1e3:.1f} ms (best of {a.rounds}, check included)")
    print(f"ratio check / read: {min(check) / min(read):.4f}")


if __name__ == "__main__":
    main()
