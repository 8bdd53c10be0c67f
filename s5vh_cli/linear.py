"""Training-free video hashing: LSH (random hyperplanes) and ITQ (PCA + iterative quantisation) on frame features.

``s5vh train --method lsh|itq`` fits one of these in seconds and writes a model file that ``encode``, ``index`` and
``query`` use exactly like an S5VH model: the file holds the projection as a ``LinearHash`` module, and
``checkpoint.load_model`` rebuilds it from the stored ``ModelConfig.method``.

A video's code is ``sign((mean_t x_t - mu) @ P)`` (bit 1 when >= 0): the projection of its mean frame feature.
The continuous value before the sign (the "soft code") and the projection of every frame are what
``s5vh encode --descriptor`` stores for re-ranking.
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


def check_linear_weights_fit(cfg: ModelConfig, state_dict: dict) -> None:
    """Refuse stored weights that are not exactly ``mean`` [D] and ``projection`` [D, L] of ``cfg`` (checked
    before anything is allocated from the config)."""
    want = {"mean": (cfg.feature_dim,), "projection": (cfg.feature_dim, cfg.bits // cfg.temporal_pool)}
    if set(state_dict) != set(want):
        raise MismatchError(f"a {cfg.method} model holds exactly 'mean' and 'projection', not "
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
        self.register_buffer("mean", torch.zeros(cfg.feature_dim))
        # with temporal_pool K, one projection to bits/K dimensions serves each of the K stretches of time
        self.register_buffer("projection", torch.zeros(cfg.feature_dim, cfg.bits // cfg.temporal_pool))

    def set_fit(self, mean: np.ndarray, projection: np.ndarray) -> LinearHash:
        want = tuple(self.projection.shape)
        if projection.shape != want or mean.shape != (self.cfg.feature_dim,):
            raise MismatchError(f"projection {projection.shape} / mean {mean.shape} do not fit {list(want)}")
        self.mean.copy_(torch.from_numpy(np.asarray(mean, np.float32)))
        self.projection.copy_(torch.from_numpy(np.asarray(projection, np.float32)))
        return self

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 3 or x.shape[2] != self.cfg.feature_dim:
            raise MismatchError(f"model input must be [videos, frames, {self.cfg.feature_dim}], got "
                                f"{tuple(x.shape)}")

    def soft_frame_codes(self, x: Tensor) -> Tensor:
        """Projection of every frame [B, T, L] (its mean over frames is the video's pre-sign code)."""
        self._check_input(x)
        return (x - self.mean) @ self.projection

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
