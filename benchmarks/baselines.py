"""Unsupervised hashing baselines on mean frame features, and the perceptual video hash a user might pick.

  lsh        random hyperplanes through the centred mean features (Charikar's SimHash)
  itq        PCA to ``bits`` dimensions + iterative quantisation rotation (Gong & Lazebnik, CVPR 2011)
  videohash  PyPI ``videohash`` 3.0.1: a 64-bit wavelet hash of a frame collage, computed from the video files

Each of ``lsh``/``itq`` returns an encoder: a callable mapping mean features [N, D] to packed codes
uint8 [N, bits/8] (``np.packbits`` order: bit 0 of a code is the most significant bit of byte 0).

Usage: python -m benchmarks.baselines --method lsh|itq|videohash --bits 64 --train TRAIN_FEATS.h5
       --encode FEATS.h5 [--encode MORE.h5 ...] -o codes.h5 [-o more_codes.h5 ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from s5vh_cli.errors import BackendError, InputError, S5VHError
from s5vh_cli.linear import fit_itq, fit_lsh


@dataclass
class LinearHashEncoder:
    """codes = packbits((x - mean) @ projection > 0)."""

    method: str
    mean: np.ndarray  # [D]
    projection: np.ndarray  # [D, bits]
    params: dict = field(default_factory=dict)
    loss_history: list[float] = field(default_factory=list)

    @property
    def bits(self) -> int:
        return int(self.projection.shape[1])

    def signs(self, x: np.ndarray) -> np.ndarray:
        x = _as_matrix(x, self.mean.shape[0])
        return (x - self.mean) @ self.projection > 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.packbits(self.signs(x), axis=1, bitorder="big")

    def fingerprint(self) -> str:
        """``baseline:<method>:<hash of the learnt parameters>``: the same encoder gives the same string."""
        h = hashlib.sha256()
        h.update(json.dumps(self.params, sort_keys=True).encode())
        h.update(np.ascontiguousarray(self.mean, dtype=np.float32).tobytes())
        h.update(np.ascontiguousarray(self.projection, dtype=np.float32).tobytes())
        return f"baseline:{self.method}:{h.hexdigest()[:16]}"


def _as_matrix(x: np.ndarray, dim: int | None = None) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise InputError(f"mean features must be [N, D], got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise InputError(f"features have {x.shape[1]} dimensions, the encoder was trained on {dim}")
    if not np.isfinite(x).all():
        raise InputError("features hold NaN or infinite values")
    return x


def _check_bits(bits: int) -> None:
    if bits < 8 or bits % 8:
        raise InputError(f"--bits {bits}: must be a positive multiple of 8")


def lsh(train_means: np.ndarray, bits: int, seed: int = 0) -> LinearHashEncoder:
    """Random Gaussian hyperplanes through the mean of the training features."""
    _check_bits(bits)
    mean, w = fit_lsh(_as_matrix(train_means), bits, seed)  # the same fit as `s5vh train --method lsh`
    return LinearHashEncoder("lsh", mean, w, {"bits": bits, "seed": seed})


def itq(train_means: np.ndarray, bits: int, n_iter: int = 50, seed: int = 0) -> LinearHashEncoder:
    """PCA to ``bits`` dimensions, then a rotation R minimising ||B - V R||_F^2 with B = sign(V R).

    ``loss_history[i]`` is the quantisation loss after iteration i (it never increases).
    """
    _check_bits(bits)
    mean, projection, history = fit_itq(_as_matrix(train_means), bits, n_iter, seed)  # as `s5vh train --method itq`
    return LinearHashEncoder("itq", mean, projection, {"bits": bits, "seed": seed, "n_iter": n_iter}, history)


# ----------------------------------------------------------------------------------------------------------
# videohash (runs in a chosen interpreter: it needs Pillow<10 and ffmpeg, which may not suit this one)
# ----------------------------------------------------------------------------------------------------------
# Paths come in a list file, not on stdin: videohash runs ffmpeg, which inherits stdin and would eat the list.
_VIDEOHASH_SCRIPT = r"""
import sys
from videohash import VideoHash
for line in open(sys.argv[1], encoding="utf-8", errors="surrogateescape").read().splitlines():
    p = line
    try:
        print("S5VH-HASH " + VideoHash(path=p).hash_hex, flush=True)
    except BaseException as e:  # noqa: B036 - one bad file must not end the whole run
        print("S5VH-ERROR " + type(e).__name__ + ": " + str(e).replace("\n", " ")[:200], flush=True)
"""


def videohash_codes(paths: list[str], python: str = sys.executable, workers: int = 2) -> np.ndarray:
    """64-bit videohash of each video file, packed to uint8 [N, 8] (hex digits read most significant first)."""
    if not paths:
        return np.zeros((0, 8), np.uint8)
    workers = max(1, min(workers, len(paths)))
    chunks = [paths[i::workers] for i in range(workers)]
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    procs = []
    with tempfile.TemporaryDirectory(prefix="s5vh-videohash-") as tmp:
        for w, chunk in enumerate(chunks):
            listing = Path(tmp) / f"paths{w}.txt"
            listing.write_text("\n".join(chunk) + "\n", encoding="utf-8", errors="surrogateescape")
            try:
                procs.append(subprocess.Popen([python, "-c", _VIDEOHASH_SCRIPT, str(listing)], stdin=subprocess.DEVNULL,
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            except OSError as e:
                raise BackendError(f"{python}: cannot run ({e.strerror})") from None
        # One thread per process so that the processes hash in parallel instead of one after another.
        with ThreadPoolExecutor(len(procs)) as pool:
            outs = list(pool.map(lambda p: p.communicate(), procs))
    codes = np.zeros((len(paths), 8), np.uint8)
    for w, ((stdout, stderr), chunk) in enumerate(zip(outs, chunks, strict=True)):
        # videohash and its helpers may print too; keep only our tagged lines
        lines = [ln for ln in stdout.splitlines() if ln.startswith(("S5VH-HASH ", "S5VH-ERROR "))]
        if procs[w].returncode != 0 or len(lines) != len(chunk):
            tail = stderr.strip().splitlines()[-1:] or [f"exit code {procs[w].returncode}"]
            where = f"after {len(lines)} of {len(chunk)} videos" if lines else "before the first video"
            raise BackendError(f"videohash failed in {python} {where}: {tail[0][:200]} "
                               "(needs `pip install videohash 'Pillow<10'` and ffmpeg on PATH)")
        for k, (line, p) in enumerate(zip(lines, chunk, strict=True)):
            if line.startswith("S5VH-ERROR "):
                raise InputError(f"{p}: videohash failed ({line[11:]})")
            codes[w + k * workers] = np.frombuffer(int(line[10:], 16).to_bytes(8, "big"), np.uint8)
    return codes


# ----------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------
def _mean_features(path: str) -> tuple[np.ndarray, object]:
    from s5vh_cli.artifacts import read_features

    f = read_features(path)
    return f.feats.astype(np.float64).mean(axis=1), f


def _resolve_video(p: str, root: str | None, features_path: str) -> str:
    cand = Path(root) / p if root else Path(p)
    if not cand.is_file():
        raise InputError(f"{cand}: video of {features_path} not found (pass --video-root)")
    return str(cand)


def main(argv: list[str] | None = None) -> int:
    from s5vh_cli.artifacts import Codes, provenance, write_codes

    ap = argparse.ArgumentParser(prog="python -m benchmarks.baselines", description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", required=True, choices=("lsh", "itq", "videohash"))
    ap.add_argument("--bits", type=int, default=64, help="code length (videohash: always 64)")
    ap.add_argument("--train", help="features file whose mean frame features fit the encoder (lsh, itq)")
    ap.add_argument("--encode", action="append", default=[], help="features file to encode (repeatable)")
    ap.add_argument("--videos", action="append", default=[],
                    help="videohash: folder of videos to hash, ids = sorted relative paths as `s5vh extract` gives")
    ap.add_argument("-o", "--out", action="append", required=True, help="codes file per --encode / --videos")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-iter", type=int, default=50, help="ITQ iterations")
    ap.add_argument("--video-root", help="videohash: folder the features' paths are relative to")
    ap.add_argument("--videohash-python", default=sys.executable,
                    help="videohash: interpreter that has videohash and Pillow<10 installed")
    ap.add_argument("--workers", type=int, default=2, help="videohash: parallel processes")
    args = ap.parse_args(argv)
    if args.videos and args.method != "videohash":
        ap.error("--videos is for --method videohash; the other methods encode features (--encode)")
    if len(args.encode) + len(args.videos) != len(args.out) or not args.out:
        ap.error("give one -o per --encode or --videos")
    try:
        config = {"method": args.method, "bits": args.bits, "seed": args.seed}
        inputs = {}
        if args.method in ("lsh", "itq"):
            if not args.train:
                ap.error(f"--method {args.method} needs --train")
            train, tf = _mean_features(args.train)
            inputs["train"] = tf.sha256
            enc = lsh(train, args.bits, args.seed) if args.method == "lsh" else itq(train, args.bits, args.n_iter,
                                                                                      args.seed)
            if args.method == "itq":
                config["n_iter"] = args.n_iter
            model = enc.fingerprint()
        else:
            if args.bits != 64:
                ap.error("videohash codes are always 64 bits")
            model = "baseline:videohash:3.0.1"
        for src, dst in zip([*args.encode, *args.videos], args.out, strict=True):
            if src in args.videos:
                from benchmarks.datasets import list_videos

                if not Path(src).is_dir():
                    raise InputError(f"{src}: not a folder of videos")
                ids = list_videos(src)
                codes = videohash_codes([str(Path(src) / i) for i in ids], args.videohash_python,
                                        max(1, args.workers))
                prov = provenance("baselines videohash", config, {})
                write_codes(dst, Codes(path=None, codes=codes, ids=ids, paths=[str(Path(src) / i) for i in ids],
                                       bits=64, model_sha256=model), prov, {"baseline": "videohash"})
                print(json.dumps({"codes": dst, "n": len(ids), "bits": 64, "model_sha256": model}))
                continue
            if args.method == "videohash":
                from s5vh_cli.artifacts import read_features

                f = read_features(src, with_hash=True)
                vids = [_resolve_video(p, args.video_root, src) for p in f.paths]
                codes = videohash_codes(vids, args.videohash_python, max(1, args.workers))
            else:
                means, f = _mean_features(src)
                codes = enc(means)
            prov = provenance(f"baselines {args.method}", config, {**inputs, "features": f.sha256})
            write_codes(dst, Codes(path=None, codes=codes, ids=f.ids, paths=f.paths, bits=codes.shape[1] * 8,
                                   model_sha256=model), prov, {"baseline": args.method})
            print(json.dumps({"codes": dst, "n": int(codes.shape[0]), "bits": int(codes.shape[1] * 8),
                              "model_sha256": model}))
    except S5VHError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
