"""Optional figures for `s5vh eval --plots DIR` (matplotlib is the [plots] extra).

t-SNE uses scikit-learn when installed, else the small exact implementation below (fine for the
<= 1,000 codes we plot), with Hamming distance as the input metric.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .codes import hamming
from .errors import InputError

TSNE_MAX_POINTS = 1000  # exact t-SNE is O(n^2) per step: about 30 s for 1,000 points on one core


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("--plots needs matplotlib: pip install 's5vh[plots]'") from None
    return plt


def _p_conditional(d2: np.ndarray, perplexity: float) -> np.ndarray:
    """Row-wise Gaussian affinities whose entropy matches log(perplexity) (binary search on the precision)."""
    n = d2.shape[0]
    p = np.zeros((n, n))
    target = np.log(perplexity)
    for i in range(n):
        lo, hi, beta = 0.0, np.inf, 1.0
        di = np.delete(d2[i], i)
        for _ in range(64):
            w = np.exp(-(di - di.min()) * beta)
            s = w.sum()
            h = np.log(s) + beta * (w * (di - di.min())).sum() / s
            if abs(h - target) < 1e-5:
                break
            if h > target:
                lo = beta
                beta = beta * 2 if hi == np.inf else (beta + hi) / 2
            else:
                hi = beta
                beta = (beta + lo) / 2
        p[i, np.arange(n) != i] = w / s
    return p


def tsne(dist: np.ndarray, perplexity: float = 30.0, iters: int = 500, seed: int = 0) -> np.ndarray:
    """2-D exact t-SNE (van der Maaten & Hinton 2008) of a precomputed distance matrix [n, n]."""
    n = dist.shape[0]
    perplexity = min(perplexity, max(2.0, (n - 1) / 3))
    d = np.asarray(dist, dtype=np.float64)
    d2 = (d / max(d.max(), 1e-12)) ** 2
    p = _p_conditional(d2, perplexity)
    p = (p + p.T) / (2 * n)
    p = np.maximum(p, 1e-12)
    rng = np.random.default_rng(seed)
    y = rng.normal(scale=1e-4, size=(n, 2))
    vel = np.zeros_like(y)
    gains = np.ones_like(y)
    early = min(250, iters // 4)
    lr = max(n / 12.0 / 4.0, 50.0)  # the "auto" learning rate of Belkina et al. 2019, as scikit-learn uses
    for it in range(iters):
        exag = 12.0 if it < early else 1.0
        sq = (y * y).sum(1)
        num = 1.0 / (1.0 + sq[:, None] + sq[None, :] - 2 * y @ y.T)
        np.fill_diagonal(num, 0.0)
        q = np.maximum(num / num.sum(), 1e-12)
        pq = (exag * p - q) * num
        grad = 4 * ((np.diag(pq.sum(1)) - pq) @ y)
        mom = 0.5 if it < early else 0.8
        gains = np.where(np.sign(grad) != np.sign(vel), gains + 0.2, gains * 0.8).clip(0.01)
        vel = mom * vel - lr * gains * grad
        y += vel
        y -= y.mean(0)
    return y


def embed_codes(codes: np.ndarray, seed: int = 0) -> np.ndarray:
    dist = hamming(codes, codes).astype(np.float64)
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        return tsne(dist, seed=seed)
    n = codes.shape[0]
    return TSNE(n_components=2, metric="precomputed", init="random", random_state=seed,
                perplexity=min(30.0, max(2.0, (n - 1) / 3))).fit_transform(dist)


def write_plots(results: dict[str, Any], codes: np.ndarray, labels: np.ndarray, folder: str | os.PathLike,
                seed: int = 0) -> list[Path]:
    """PR curve, mAP@K curve and a t-SNE of (up to 1,000 sampled) query codes coloured by first label."""
    plt = _pyplot()
    out = Path(folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{out}: cannot create the plots folder ({e.strerror})") from None
    written = []
    title = f"{results.get('bits')} bits, {results.get('n_query')} queries x {results.get('n_database')} database"

    if "pr_curve" in results:
        pr = results["pr_curve"]
        fig, ax = plt.subplots(figsize=(5, 4))
        pts = [(r, p) for r, p in zip(pr["recall"], pr["precision"], strict=True) if r is not None and p is not None]
        if pts:
            ax.plot([a for a, _ in pts], [b for _, b in pts], marker=".")
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title(f"PR over Hamming radius 0..{results.get('bits')}\n{title}", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        written.append(_save(fig, out / "pr_curve.png", plt))

    ks = [int(k) for k in results["map_at_k"]]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(ks, [results["map_at_k"][str(k)] for k in ks], marker="o", label="mAP@K (SSVH)")
    ax.plot(ks, [results["precision_at_k"][str(k)] for k in ks], marker="s", label="precision@K")
    ax.set_xlabel("K")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    written.append(_save(fig, out / "map_at_k.png", plt))

    rng = np.random.default_rng(seed)
    n = codes.shape[0]
    rows = np.sort(rng.choice(n, size=min(n, TSNE_MAX_POINTS), replace=False))
    if rows.size >= 5:
        y = embed_codes(codes[rows], seed=seed)
        lab = np.asarray(labels)[rows]
        cls = lab if lab.ndim == 1 else lab.argmax(axis=1)  # class indices, or the first label of each row
        fig, ax = plt.subplots(figsize=(6, 6))
        ax.scatter(y[:, 0], y[:, 1], c=cls, cmap="tab20", s=6)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"t-SNE of {rows.size} codes (Hamming), colour = first label", fontsize=9)
        written.append(_save(fig, out / "tsne.png", plt))
    return written


def _save(fig: Any, path: Path, plt: Any) -> Path:
    from .artifacts import atomic_output

    fig.tight_layout()
    try:
        with atomic_output(path) as tmp:  # an interrupted run never leaves a half-written image
            fig.savefig(tmp, dpi=120, format="png")
    finally:
        plt.close(fig)
    return path
