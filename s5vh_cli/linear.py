"""Training-free video hashing: LSH (random hyperplanes) and ITQ (PCA + iterative quantisation) on frame features.

``s5vh train --method lsh|itq`` fits one of these in seconds and writes a model file that ``encode``, ``index`` and
``query`` use exactly like an S5VH model: the file holds the projection as a ``LinearHash`` module, and
``checkpoint.load_model`` rebuilds it from the stored ``ModelConfig.method``.

A video's code is ``sign((mean_t x_t - mu) @ P)`` (bit 1 when >= 0): the projection of its mean frame feature.
The continuous value before the sign (the "soft code") and the projection of every frame are what
``s5vh encode --descriptor`` stores for re-ranking.

With ``--whiten DIM`` (``ModelConfig.whiten_dim``) every frame feature x is first mapped to
``z = normalise((sqrt(max(x, 0)) - m) @ W)``, a learnt whitening (Radenovic et al., 2018) fitted on the library's
own transformed renderings from ``s5vh extract --views N``, without labels: W first whitens the differences
between a frame of a rendering and its best-matching frame of the original (what a copy changes), then keeps the
``DIM`` directions in which the whitened frames spread most (what tells videos apart). The hash is then fitted and
applied to z instead of x, and z at the descriptor's frames is the re-ranking descriptor.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from .config import ModelConfig
from .errors import InputError, MismatchError

METHODS = ("lsh", "itq")


def _as_matrix(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise InputError(f"features to fit must be [N, D], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise InputError("features hold NaN or infinite values")
    return x


def fit_lsh(x: np.ndarray, bits: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D], projection [D, bits]): Gaussian hyperplanes through the mean of ``x`` [N, D]."""
    x = _as_matrix(x)
    rng = np.random.default_rng(seed)
    return x.mean(axis=0), rng.standard_normal((x.shape[1], bits))


def fit_itq(x: np.ndarray, bits: int, n_iter: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """(mean, projection = PCA @ R, quantisation loss per iteration): ITQ (Gong & Lazebnik, 2011) on ``x`` [N, D].

    Needs at least ``bits`` rows and dimensions (the PCA keeps ``bits`` components).
    """
    x = _as_matrix(x)
    n, d = x.shape
    if bits > min(n, d):
        raise InputError(f"ITQ with {bits} bits needs at least {bits} training rows and feature dimensions "
                         f"(have {n} rows of {d} dimensions)")
    mean = x.mean(axis=0)
    xc = x - mean
    cov = xc.T @ xc / max(n - 1, 1)
    evals, evecs = np.linalg.eigh(cov)
    pca = evecs[:, np.argsort(evals)[::-1][:bits]]
    v = xc @ pca
    rng = np.random.default_rng(seed)
    r, _ = np.linalg.qr(rng.standard_normal((bits, bits)))
    history = []
    for _ in range(n_iter):
        b = np.where(v @ r >= 0, 1.0, -1.0)
        u, _, vt = np.linalg.svd(b.T @ v)  # orthogonal Procrustes: the R that best maps V onto B
        r = (u @ vt).T
        history.append(float(np.sum((np.where(v @ r >= 0, 1.0, -1.0) - v @ r) ** 2)))
    return mean, pca @ r, history


WHITEN_SHRINK = 0.1  # share of the mean eigenvalue added to the copy-difference covariance's diagonal
WHITEN_MAX_VIDEOS = 2000  # a seeded sample of this many videos is plenty for D x D covariances; cost grows with it


def _powered(x: np.ndarray) -> np.ndarray:
    """Square root of the (non-negative) CNN features, in float64 for the covariances."""
    return np.sqrt(np.maximum(np.asarray(x, np.float64), 0.0))


def whiten_frames(x: Tensor, mean: Tensor, projection: Tensor) -> Tensor:
    """Whitened, unit-length frames [..., D'] of frame features [..., D]: the one definition of the mapping,
    used by the model file and by the fit."""
    return torch.nn.functional.normalize((x.clamp(min=0.0).sqrt() - mean) @ projection, dim=-1)


def fit_whitening(feats: np.ndarray, views: np.ndarray, dim: int, max_videos: int = WHITEN_MAX_VIDEOS,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(mean m [D], projection W [D, dim]) of the learnt whitening (module docstring) from frame features
    ``feats`` [N, T, D] and their transformed renderings ``views`` [N, V, T, D].

    Pairs: every frame of every rendering with the frame of its original that it is most similar to (cosine), so
    sub-clips and frame-rate changes pair up too. Covariances are summed one video at a time (memory D x D), over
    a seeded sample of ``max_videos`` videos when there are more.
    """
    n, t, d = feats.shape
    if views is None or views.ndim != 4 or views.shape[0] != n or views.shape[2:] != feats.shape[1:]:
        raise InputError("the whitening needs the transformed renderings of every video: extract the training "
                         "features with `s5vh extract --views N`")
    if not 1 <= dim <= d:
        raise InputError(f"whitening dimensions must be between 1 and the feature dimension {d}, got {dim}")
    cs = np.zeros((d, d))
    sx = np.zeros(d)
    sxx = np.zeros((d, d))
    pairs = rows = 0
    chosen = range(n) if n <= max_videos else np.sort(np.random.default_rng(seed).choice(n, max_videos, replace=False))
    for i in chosen:
        x = _powered(feats[i])  # [T, D]
        v = _powered(views[i]).reshape(-1, d)  # [V*T, D]
        xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        vn = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        diff = v - x[(vn @ xn.T).argmax(axis=1)]
        cs += diff.T @ diff
        pairs += len(diff)
        both = np.concatenate([x, v])
        sx += both.sum(axis=0)
        sxx += both.T @ both
        rows += len(both)
    cs /= pairs
    cs += WHITEN_SHRINK * np.trace(cs) / d * np.eye(d)
    evals, evecs = np.linalg.eigh(cs)
    w = evecs @ np.diag(np.maximum(evals, 1e-12) ** -0.5) @ evecs.T  # cs^(-1/2)
    mean = sx / rows
    cov = sxx / rows - np.outer(mean, mean)
    evals2, evecs2 = np.linalg.eigh(w.T @ cov @ w)
    keep = np.argsort(evals2)[::-1][:dim]
    return mean, w @ evecs2[:, keep]


def apply_whitening(x: np.ndarray, mean: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """``whiten_frames`` on arrays (float32)."""
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    with torch.no_grad():
        return whiten_frames(as_t(x), as_t(mean), as_t(projection)).numpy()


def check_linear_weights_fit(cfg: ModelConfig, state_dict: dict) -> None:
    """Refuse stored weights that are not exactly ``mean`` [D'] and ``projection`` [D', L] of ``cfg`` (D' = D, or
    the whitening's dimensions with ``w_mean`` [D] and ``w_projection`` [D, D']), checked before anything is
    allocated from the config."""
    inner = cfg.whiten_dim or cfg.feature_dim
    want = {"mean": (inner,), "projection": (inner, cfg.bits // cfg.temporal_pool)}
    if cfg.whiten_dim:
        want.update(w_mean=(cfg.feature_dim,), w_projection=(cfg.feature_dim, cfg.whiten_dim))
    if set(state_dict) != set(want):
        raise MismatchError(f"a {cfg.method} model holds exactly {', '.join(repr(k) for k in sorted(want))}, not "
                            f"{', '.join(sorted(map(str, state_dict)))[:120]}")
    for k, shape in want.items():
        t = state_dict[k]
        if not isinstance(t, Tensor) or not t.is_floating_point() or tuple(t.shape) != shape:
            raise MismatchError(f"weight {k} must be a float tensor of shape {shape}")


class LinearHash(nn.Module):
    """codes = sign((mean_t x_t - mean) @ projection), with the interface of ``S5VH`` that encode/query use."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        if cfg.method not in METHODS:
            raise InputError(f"LinearHash is for methods {', '.join(METHODS)}, not {cfg.method!r}")
        self.cfg = cfg
        inner = cfg.whiten_dim or cfg.feature_dim
        if cfg.whiten_dim:
            self.register_buffer("w_mean", torch.zeros(cfg.feature_dim))
            self.register_buffer("w_projection", torch.zeros(cfg.feature_dim, cfg.whiten_dim))
        self.register_buffer("mean", torch.zeros(inner))
        # with temporal_pool K, one projection to bits/K dimensions serves each of the K stretches of time
        self.register_buffer("projection", torch.zeros(inner, cfg.bits // cfg.temporal_pool))

    def set_fit(self, mean: np.ndarray, projection: np.ndarray,
                whitening: tuple[np.ndarray, np.ndarray] | None = None) -> LinearHash:
        want = tuple(self.projection.shape)
        if projection.shape != want or mean.shape != (want[0],):
            raise MismatchError(f"projection {projection.shape} / mean {mean.shape} do not fit {list(want)}")
        if (whitening is not None) != bool(self.cfg.whiten_dim):
            raise MismatchError("a whitening is given exactly when the config asks for one (whiten_dim)")
        if whitening is not None:
            w_mean, w_proj = whitening
            if w_mean.shape != tuple(self.w_mean.shape) or w_proj.shape != tuple(self.w_projection.shape):
                raise MismatchError(f"whitening {w_proj.shape} / {w_mean.shape} does not fit "
                                    f"{list(self.w_projection.shape)}")
            self.w_mean.copy_(torch.from_numpy(np.asarray(w_mean, np.float32)))
            self.w_projection.copy_(torch.from_numpy(np.asarray(w_proj, np.float32)))
        self.mean.copy_(torch.from_numpy(np.asarray(mean, np.float32)))
        self.projection.copy_(torch.from_numpy(np.asarray(projection, np.float32)))
        return self

    def frame_features(self, x: Tensor) -> Tensor:
        """What the hash sees of every frame: the features themselves, or their learnt whitening (``whiten_dim``)."""
        self._check_input(x)
        if not self.cfg.whiten_dim:
            return x
        return whiten_frames(x, self.w_mean, self.w_projection)

    def soft_frame_codes_and_descriptors(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(frame codes [B, T, L], per-frame re-ranking descriptors [B, T, .]) from one pass over the frames: the
        descriptors are the whitened frames when whitened, else the frame codes themselves."""
        z = self.frame_features(x)
        h = (z - self.mean) @ self.projection
        return h, (z if self.cfg.whiten_dim else h)

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 3 or x.shape[2] != self.cfg.feature_dim:
            raise MismatchError(f"model input must be [videos, frames, {self.cfg.feature_dim}], got "
                                f"{tuple(x.shape)}")

    def soft_frame_codes(self, x: Tensor) -> Tensor:
        """Projection of every frame [B, T, L] (its mean over frames is the video's pre-sign code)."""
        return (self.frame_features(x) - self.mean) @ self.projection

    def soft_video(self, h: Tensor) -> Tensor:
        """The video's pre-sign code [B, L] from frame projections [B, T, L/K]: the projection of the mean
        feature (of each of the K stretches of time, side by side, with ``temporal_pool`` K)."""
        k = self.cfg.temporal_pool
        if k == 1:
            return h.mean(dim=1)
        from .model import stretch_of

        t = h.shape[1]
        member = torch.nn.functional.one_hot(stretch_of(torch.arange(t, device=h.device), t, k), k).to(h.dtype)
        means = torch.einsum("tk,btl->bkl", member, h) / member.sum(dim=0).clamp(min=1.0)[None, :, None]
        return means.reshape(h.shape[0], -1)

    def bits_from_soft(self, h: Tensor) -> Tensor:
        return self.soft_video(h) >= 0

    def soft_code(self, x: Tensor) -> Tensor:
        return self.soft_video(self.soft_frame_codes(x))

    def hash(self, x: Tensor) -> Tensor:
        """Video codes [B, L] as booleans (True = bit 1)."""
        return self.bits_from_soft(self.soft_frame_codes(x))

    def set_backend(self, name: str) -> None:  # noqa: ARG002 - no selective scan in a linear model
        return None

    def n_parameters(self) -> int:
        return 0
