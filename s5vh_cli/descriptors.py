"""Compact float descriptors for the second search stage, and how two of them are compared.

A binary code finds candidates fast; a small float16 descriptor stored beside it re-scores the top K exactly
(``s5vh query --rerank K``). Two kinds (``s5vh encode --descriptor``):

  soft    [L]      the video's continuous code before the sign (S5VH: mean over frames of tanh of the pre-sign
                   frame codes; ITQ/LSH: the projection of the mean frame feature). Compared by cosine.
  frames  [F, L]   the continuous code of F frames sampled uniformly in time (F = ``--descriptor-frames``).
                   Compared in time order: the mean cosine of frame t of the query with frame t of the
                   candidate. Both are sampled at the same relative times, so a copy lines up frame by frame;
                   the order is what tells a clip from its reverse and from a neighbouring segment of the same
                   shot. Alignments with more freedom (any order-preserving path, or the best straight-line time
                   mapping to fit sub-clips) were measured on a validation set of transformed renderings and
                   lost: they also fit look-alike neighbours (docs/BENCHMARKS.md section 2a).

Memory per video: 2 L bytes (soft) or 2 F L bytes (frames), e.g. 128 B and 1 KiB at 64 bits with F = 8: 128 MB and
1 GiB per million videos.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

KINDS = ("none", "soft", "frames")


def normalise(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(n, 1e-12)


def frame_positions(frames: int, count: int) -> np.ndarray:
    """Indices of ``count`` frames spread uniformly over ``frames`` (all of them when count >= frames)."""
    if count <= 0 or count >= frames:
        return np.arange(frames)
    return np.floor((np.arange(count) + 0.5) * frames / count).astype(np.int64)


def soft_similarity(query: np.ndarray, cands: np.ndarray) -> np.ndarray:
    """Cosine between a query's soft code [L] and candidates' [K, L] -> [K]."""
    return normalise(cands) @ normalise(query)


def sequence_similarity(query: np.ndarray, cands: np.ndarray, order: str = "aligned") -> np.ndarray:
    """Similarity of a query's frame descriptors [Tq, L] to candidates' [K, Td, L] -> [K], in [-1, 1].

    ``order``: ``aligned`` (frame t against frame t: the frames are sampled at the same relative times of both
    videos; needs Tq == Td), ``monotone`` (the best order-preserving alignment of any shape: each query frame
    matched to a candidate frame never earlier than the previous query frame's match) or ``none`` (each query
    frame's best match anywhere: a bag of frames).
    """
    q = normalise(query)
    c = normalise(cands)
    if q.ndim != 2 or c.ndim != 3 or q.shape[1] != c.shape[2]:
        raise InputError(f"frame descriptors do not fit: query {q.shape}, candidates {c.shape}")
    sim = np.einsum("tl,ksl->kts", q, c)  # [K, Tq, Td]
    if order == "aligned":
        if q.shape[0] != c.shape[1]:
            raise InputError("aligned comparison needs the same number of frames")
        return np.einsum("ktt->k", sim) / q.shape[0]
    if order == "none":
        return sim.max(axis=2).mean(axis=1)
    if order != "monotone":
        raise InputError(f"order must be aligned, monotone or none, got {order!r}")
    # dp[k, j]: best total for query frames 0..i with frame i matched to candidate frame j
    dp = sim[:, 0, :]
    for i in range(1, sim.shape[1]):
        dp = sim[:, i, :] + np.maximum.accumulate(dp, axis=1)
    return dp.max(axis=1) / sim.shape[1]

