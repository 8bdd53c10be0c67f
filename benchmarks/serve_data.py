"""Test data for the serving and cold-query benchmarks: a real model's codes padded with random codes.

The first rows are the real library's codes (so results and provenance are real); the rest are uniform random
codes under the same model, which is what a large index costs to search whatever it holds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from s5vh_cli import api, artifacts


def padded_index(codes_h5: str | Path, n: int, workdir: str | Path, seed: int = 0) -> Path:
    """``workdir/index_<n>.bin``: the codes of ``codes_h5`` plus random codes up to ``n`` entries (made once)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / f"index_{n}.bin"
    if out.exists() and api.meta_path(out).exists():
        return out
    c = artifacts.read_codes(codes_h5)
    extra = max(0, n - c.n)
    rng = np.random.default_rng(seed)
    pad = rng.integers(0, 256, size=(extra, c.bits // 8), dtype=np.uint8)
    c.codes = np.concatenate([c.codes, pad])
    c.ids = list(c.ids) + [f"random/{i:07d}" for i in range(extra)]
    c.paths = list(c.paths) + [""] * extra
    c.meta = {}
    keep = ("backbone", "sampling", "frames", "model_path", "backbone_sha256", "feature_dim")
    padded = workdir / f"codes_{n}.h5"
    artifacts.write_codes(padded, c, artifacts.provenance("encode"),
                          extra_attrs={k: v for k, v in c.attrs.items() if k in keep})
    api.build(padded, out)
    return out
