"""Time `s5vh centers` on an FCVID-sized problem: 45,000 videos, 450 clusters, 16/32/64 bits.

The features are synthetic frame means (no [N, T, D] array is built): 45 super-groups x 10 clusters, so centroid
cosines have structure for the centres to follow. Prints wall time per phase, peak memory and the statistics.

    .venv/bin/python benchmarks/bench_centers.py [--videos 45000] [--clusters 450] [--dim 1024] [--pca-dim 512]
                                                 [--bits 16,32,64] [--nredo 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np


def _features(n: int, k: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    groups = max(1, k // 10)
    group_means = rng.standard_normal((groups, d)).astype(np.float32) * 3.0
    means = group_means[np.arange(k) % groups] + rng.standard_normal((k, d)).astype(np.float32) * 2.0
    truth = rng.integers(0, k, n)
    x = means[truth]
    x += rng.standard_normal((n, d), dtype=np.float32) * 1.5
    return x, truth


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _purity(truth: np.ndarray, labels: np.ndarray, k: int) -> float:
    table = np.zeros((k, k), dtype=np.int64)
    np.add.at(table, (labels, truth), 1)
    return float(table.max(axis=1).sum() / len(truth))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=45000)
    ap.add_argument("--clusters", type=int, default=450)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--pca-dim", type=int, default=512)
    ap.add_argument("--bits", default="16,32,64")
    ap.add_argument("--nredo", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    from s5vh_cli import centers as C
    from s5vh_cli.config import CentersConfig

    cfg = CentersConfig(n_clusters=a.clusters, pca_dim=a.pca_dim, bits=[int(b) for b in a.bits.split(",")],
                        kmeans_nredo=a.nredo)
    t = time.perf_counter()
    x, truth = _features(a.videos, a.clusters, a.dim)
    gen_s = time.perf_counter() - t
    rss_data = _peak_mib()

    t = time.perf_counter()
    mean, comps = C.fit_pca(x, cfg.pca_dim)
    z = C.pca_transform(x, mean, comps)
    pca_s = time.perf_counter() - t
    t = time.perf_counter()
    raw, labels, info = C.kmeans(z, cfg.n_clusters, cfg)
    km_s = time.perf_counter() - t
    w = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    iu = np.triu_indices(len(w), 1)
    cos = (w @ w.T)[iu]
    near = cos >= np.quantile(cos, 0.99)  # the 1% most similar centroid pairs (mostly the same super-group)
    rows = []
    for bits in cfg.bits:
        t = time.perf_counter()
        b, st = C.optimize_hash_centers(raw, bits, cfg)
        wall = round(time.perf_counter() - t, 2)
        bi = b.astype(np.int32)
        ham = (bits - (bi @ bi.T)[iu]) / 2
        rows.append({**st, "wall_s": wall, "near_pairs_mean_hamming": round(float(ham[near].mean()), 2),
                     "other_pairs_mean_hamming": round(float(ham[~near].mean()), 2)})
    result = {
        "videos": a.videos, "dim": a.dim, "pca_dim": int(comps.shape[0]), "clusters": a.clusters,
        "cpu_count": os.cpu_count(), "load_avg_1min_at_end": round(os.getloadavg()[0], 2),
        "generate_s": round(gen_s, 2), "pca_s": round(pca_s, 2), "kmeans_s": round(km_s, 2),
        "kmeans_nredo": a.nredo, "kmeans_niter": cfg.kmeans_niter, "empty_clusters": info["empty_clusters"],
        "label_purity_vs_planted": round(_purity(truth, labels, a.clusters), 4),
        "peak_rss_mib": round(_peak_mib(), 1), "rss_after_data_mib": round(rss_data, 1),
        "centres": rows,
    }
    if a.json:
        print(json.dumps(result))
        return
    print(f"{a.videos} videos x {a.dim} dims -> PCA {comps.shape[0]}, {a.clusters} clusters "
          f"({os.cpu_count()} CPUs, 1-min load at end {result['load_avg_1min_at_end']})")
    print(f"  data generation {gen_s:7.2f} s")
    print(f"  PCA             {pca_s:7.2f} s")
    print(f"  k-means         {km_s:7.2f} s   (niter {cfg.kmeans_niter}, nredo {a.nredo}, k-means++; "
          f"purity vs planted {result['label_purity_vs_planted']}, empty {info['empty_clusters']})")
    for r in rows:
        print(f"  centres {r['bits']:>2} bits {r['wall_s']:7.2f} s   d_max {r['d_max']:>2}  min d {r['min_hamming']:>2}  "
              f"mean d {r['mean_hamming']:6.2f}  pairs<d {r['violations']}  spearman {r['init_spearman']:.3f} -> "
              f"{r['spearman']:.3f}  sweeps {r['sweeps']}  ADMM its {r['admm_iterations']}  "
              f"mean d of top-1% similar pairs {r['near_pairs_mean_hamming']} vs others {r['other_pairs_mean_hamming']}")
    print(f"  peak RSS        {result['peak_rss_mib']:7.1f} MiB (after data generation {rss_data:.1f} MiB)")


if __name__ == "__main__":
    main()
