"""Engines side by side, and what one worker does, for planning a cluster (docs/scale-out.md).

    unshare -rn sh -c 'ip link set lo up && RAY_AUTH_MODE=disabled S5VH_OFFLINE=1 \\
        .venv/bin/python benchmarks/bench_engines.py [--clips .bench-data/clips] [--copies 2] [--rounds 2]'

(The private network namespace keeps the Ray instance and torchrun's rendezvous, which listen on every
interface, off the network.) Prints:

1. the cost of each stage on one core, in CPU seconds per video (process CPU time, one torch thread, best of
   --rounds): decode and sample T frames of each clip, the backbone on those frames, the S5VH encoder
   (encode), and one training step (two views, forward and backward) per video of a batch of 128;
2. wall time side by side in one run, best of --rounds: `extract` with the local engine (1 decode process,
   1 inference thread) against the Ray engine on a 2-CPU Ray instance (1 decode task, 1 inference actor);
   `encode` local against Ray (1 actor); one training epoch on 1 process against 2 torchrun ranks (epoch time
   from metrics.jsonl, start-up excluded).

CPU time per video is what a dedicated core would sustain, which a shared machine's wall clock does not show.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def cpu_best(fn, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def wall_best(fn, rounds: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


class Clock:
    """A progress sink that notes when rows arrive: the steady rate leaves out start-up (Ray's actors load
    the model after the run has begun)."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, int]] = []

    def start(self, task, total=None):
        self.marks = []

    def advance(self, n=1, **info):
        done = (self.marks[-1][1] if self.marks else 0) + n
        self.marks.append((time.perf_counter(), done))

    def log(self, message):
        pass

    def finish(self):
        pass

    def steady(self) -> float:
        """Rows per second from the first arrival to the last."""
        (t0, n0), (t1, n1) = self.marks[0], self.marks[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", default=".bench-data/clips")
    ap.add_argument("--copies", type=int, default=2)
    ap.add_argument("--frames", type=int, default=25)
    ap.add_argument("--batch-size", type=int, default=32, help="extract: frames per forward pass")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--encode-videos", type=int, default=1024)
    ap.add_argument("--train-videos", type=int, default=512)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: costs,extract,encode,train")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    import torch

    torch.set_num_threads(1)
    from s5vh_cli import video
    from s5vh_cli.artifacts import provenance, write_centers, write_features
    from s5vh_cli.checkpoint import save_model
    from s5vh_cli.config import ExtractConfig, ModelConfig, TrainConfig
    from s5vh_cli.encode import encode_array, encode_file
    from s5vh_cli.engines.ray import RayEngine
    from s5vh_cli.extract import embed_clips, extract, videos_per_pass
    from s5vh_cli.model import S5VH

    tmp = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    ray_tmp = Path(tempfile.mkdtemp(prefix="s5vh-ray-"))  # short: Ray's socket paths are limited to 107 bytes
    try:
        src = sorted(p for p in Path(args.clips).iterdir() if p.is_file())
        vids = tmp / "videos"
        vids.mkdir()
        for c in range(args.copies):
            for f in src:
                shutil.copy(f, vids / f"{c}_{f.name}")
        T = args.frames
        print(f"cpu cores {os.cpu_count()}; load average {os.getloadavg()[0]:.1f}; torch {torch.__version__}; "
              f"{len(src)} clips x {args.copies} copies from {args.clips}; T={T}")
        from s5vh_cli.runtimes import load_embedder

        model, _ = load_embedder("mobilenet_v2", runtime="torch", precision="float32", device="cpu", threads=1)
        m_cfg = ModelConfig(feature_dim=1280, frames=T)  # the default S5VH: 6 blocks, width 256, 64 bits

        if "costs" not in skip:
            print("\n1. per core (CPU seconds per video, 1 torch thread, best of rounds)")
            clips = []
            per_clip = []
            for f in src:
                per_clip.append(cpu_best(lambda f=f: clips.append(video.read_frames(str(f), T)), args.rounds))
            clips = clips[::args.rounds]
            k = videos_per_pass(args.batch_size, T)
            batch = clips[:k]
            with torch.inference_mode():
                embed = cpu_best(lambda: embed_clips(model, batch, k), args.rounds) / k
            feats = np.random.default_rng(0).standard_normal((256, T, 1280)).astype(np.float32)
            from s5vh_cli.ssm import resolve_backend

            resolve_backend("cpu", torch.device("cpu"))  # its self-test needs autograd: not in inference mode
            net = S5VH(m_cfg, ssm_backend="cpu").eval()
            encode_array(net, feats[:8], batch_size=8)  # compile the scan kernels first
            enc = cpu_best(lambda: encode_array(net, feats, batch_size=256), args.rounds) / 256
            from s5vh_cli.train import _step_losses, two_view_masks

            tnet = S5VH(m_cfg, hash_centers=np.sign(np.random.default_rng(1).standard_normal((100, 64))),
                        ssm_backend="cpu").train()
            x = torch.from_numpy(feats[:128])
            targets = torch.full((128, 100), 0.01, dtype=torch.float64)

            def step() -> None:
                masks = two_view_masks(128, T, 0.5, torch.Generator().manual_seed(0))
                _step_losses(tnet, x, masks, targets, TrainConfig())["loss"].backward()

            step()
            tr = cpu_best(step, args.rounds) / 128
            print(f"decode + sample {T} frames, per clip: " +
                  ", ".join(f"{f.name} {c:.3f}" for f, c in zip(src, per_clip, strict=True)) +
                  f"; mean {np.mean(per_clip):.3f} s")
            print(f"backbone mobilenet_v2, {k * T} frames a pass: {embed:.3f} s per video "
                  f"({T / embed:.1f} frames per CPU second)")
            print(f"encode (S5VH default, batch 256, cpu scan): {enc * 1e3:.2f} ms per video")
            print(f"train step (batch 128, forward + backward): {tr * 1e3:.1f} ms per video per epoch")

        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=2, object_store_memory=1 << 30, _temp_dir=str(ray_tmp / "s"), include_dashboard=False,
                 _node_ip_address="127.0.0.1", log_to_driver=False)
        print(f"\n2. wall time side by side, best of {args.rounds} (Ray instance started in "
              f"{time.perf_counter() - t0:.1f} s)")
        if "extract" not in skip:
            cfg = ExtractConfig(frames=T, batch_size=args.batch_size)

            steady: dict[str, float] = {}

            def run(engine, name):
                def go():
                    out = tmp / f"{name}.h5"
                    out.unlink(missing_ok=True)
                    clock = Clock()
                    res = extract([str(vids)], out, config=cfg, device="cpu", threads=1, engine=engine,
                                  progress=clock)
                    steady[name] = max(steady.get(name, 0.0), clock.steady())
                    return res
                return go

            from s5vh_cli.engines.local import LocalEngine

            lw, lres = wall_best(run(LocalEngine(workers=1), "local"), args.rounds)
            rw, rres = wall_best(run(RayEngine(actors=1), "ray"), args.rounds)
            n = lres.videos
            print(f"extract {n} videos: local {lw:.1f} s ({n / lw:.2f} videos/s), Ray {rw:.1f} s "
                  f"({n / rw:.2f} videos/s, actor start-up included); Ray/local time {rw / lw:.2f}")
            print(f"  steady (first row to last): local {steady['local']:.2f} videos/s, Ray {steady['ray']:.2f} "
                  f"videos/s; Ray/local rate {steady['ray'] / steady['local']:.2f}")
        if "encode" not in skip:
            n = args.encode_videos
            feats = np.random.default_rng(2).standard_normal((n, T, 1280)).astype(np.float32)
            fpath = tmp / "enc_feats.h5"
            write_features(fpath, feats, [f"v{i}" for i in range(n)], [f"/v{i}.mp4" for i in range(n)],
                           backbone="mobilenet_v2", backbone_sha256="", sampling="uniform", prov=provenance("x"))
            save_model(tmp / "m.pt", S5VH(m_cfg), m_cfg, TrainConfig(), {"backbone": "mobilenet_v2"})

            def enc_run(engine):
                return lambda: encode_file(tmp / "m.pt", fpath, tmp / "codes.h5", batch_size=256, device="cpu",
                                           ssm_backend="cpu", engine=engine)

            from s5vh_cli.engines.local import LocalEngine

            lw, _ = wall_best(enc_run(LocalEngine()), args.rounds)
            rw, _ = wall_best(enc_run(RayEngine(actors=1)), args.rounds)
            print(f"encode {n} videos: local {lw:.1f} s ({n / lw:.0f} videos/s), Ray {rw:.1f} s "
                  f"({n / rw:.0f} videos/s); Ray/local time {rw / lw:.2f}")
        ray.shutdown()
        if "train" not in skip:
            n = args.train_videos
            feats = np.random.default_rng(3).standard_normal((n, T, 1280)).astype(np.float32)
            fpath = tmp / "train_feats.h5"
            write_features(fpath, feats, [f"v{i}" for i in range(n)], [f"/v{i}.mp4" for i in range(n)],
                           backbone="mobilenet_v2", backbone_sha256="", sampling="uniform", prov=provenance("x"))
            from s5vh_cli.artifacts import Centers, sha256_file

            rng = np.random.default_rng(4)
            c = Centers(path=None, pseudo_labels=rng.integers(0, 16, n), centroids=np.zeros((16, 3), np.float32),
                        pca_mean=np.zeros(1280, np.float32), pca_components=np.zeros((3, 1280), np.float32),
                        hash_centers={64: np.sign(rng.standard_normal((16, 64))).astype(np.int8)},
                        features_sha256=sha256_file(fpath))
            write_centers(tmp / "c.h5", c, provenance("centers"))
            base = [sys.executable, "-m", "s5vh_cli", "train", str(fpath), "--centers", str(tmp / "c.h5"),
                    "--epochs", "2", "--batch-size", "64", "--warm-up-epochs", "1", "--threads", "1",
                    "--device", "cpu", "--quiet"]

            def epoch_s(name: str, *extra: str) -> float:
                out = tmp / f"{name}.pt"
                subprocess.run([*base, "-o", str(out), *extra], check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
                rows = [json.loads(x) for x in (tmp / f"{name}.pt.run" / "metrics.jsonl").read_text().splitlines()]
                shutil.rmtree(tmp / f"{name}.pt.run")
                return min(r["time_s"] for r in rows)

            one = min(epoch_s("one") for _ in range(args.rounds))
            two = min(epoch_s("two", "--nproc", "2") for _ in range(args.rounds))
            print(f"train, one epoch of {n} videos (batch 64): 1 process {one:.1f} s, 2 ranks (32 each) {two:.1f} s; "
                  f"speed-up {one / two:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
