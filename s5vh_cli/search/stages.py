"""What happens above the Hamming ranking: mirror-robust merging, exact re-ranking, and voting over windows.

All three take the (distance, key) candidate lists that ``index.search`` returns, so they apply to every
backend alike:

* ``merge_min``: a query and its mirror image searched separately; each key keeps its best distance, then the
  ranking rule (distance, key). The union of the two exact top-k lists holds the top-k of the merged ranking.
* ``rerank``: the top K candidates re-scored by the descriptors stored in the index (``s5vh_cli.descriptors``),
  best score first; equal scores keep their Hamming order. With a mirror image, each candidate keeps its better
  score of the two.
* ``vote_windows``: every window of the query searched on its own, the hits turned into (video, time offset)
  votes by ``s5vh_cli.voting.vote``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..descriptors import sequence_similarity, soft_similarity
from ..errors import InputError
from ..voting import SegmentMatch, vote
from .index import HammingIndex, search


@dataclass
class Ranked:
    """One query's answer: keys best first, their Hamming distances, and the re-ranking scores when re-ranked."""

    distances: np.ndarray  # int32 [n]
    keys: np.ndarray  # int64 [n]
    scores: np.ndarray | None = None  # float [n], descending, when re-ranked


def merge_min(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best distance per key over two (distances, keys) lists, ordered by (distance, key), cut at ``k``."""
    best: dict[int, int] = {}
    for d, keys in (a, b):
        for dist, key in zip(d.tolist(), keys.tolist(), strict=True):
            if key not in best or dist < best[key]:
                best[key] = dist
    if not best:
        return np.empty(0, np.int32), np.empty(0, np.int64)
    keys = np.fromiter(best, dtype=np.int64, count=len(best))
    d = np.fromiter(best.values(), dtype=np.int64, count=len(best))
    order = np.lexsort((keys, d))[:k]
    return d[order].astype(np.int32), keys[order]


def descriptor_scores(h: HammingIndex, rows: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Similarity of a query descriptor to the index's descriptors of ``rows`` (cosine, or frames in time order)."""
    cand = h.descriptors[rows].astype(np.float32)
    q = np.asarray(query, dtype=np.float32)
    if h.descriptors.ndim == 2:
        return soft_similarity(q, cand)
    return sequence_similarity(q, cand, "aligned")


def rerank(h: HammingIndex, cands: tuple[np.ndarray, np.ndarray], descriptor: np.ndarray,
           flip_descriptor: np.ndarray | None, k: int) -> Ranked:
    """Re-score candidates (in Hamming order) by descriptor similarity; keep the best ``k``."""
    d, keys = cands
    if keys.size == 0:
        return Ranked(d, keys, np.empty(0, np.float32))
    row_of = h.row_of()
    rows = np.array([row_of[int(x)] for x in keys.tolist()], dtype=np.int64)
    score = descriptor_scores(h, rows, descriptor)
    if flip_descriptor is not None:
        score = np.maximum(score, descriptor_scores(h, rows, flip_descriptor))
    order = np.argsort(-score, kind="stable")[:k]  # stable: equal scores keep the Hamming order
    return Ranked(d[order], keys[order], score[order].astype(np.float32))


def check_descriptor(h: HammingIndex, descriptor: np.ndarray | None, name: str) -> None:
    if h.descriptors is None:
        raise InputError(f"{h.path}: --rerank needs descriptors in the index; encode with `s5vh encode --descriptor "
                         "frames` (or soft) and build the index from those codes")
    if descriptor is None or tuple(descriptor.shape) != tuple(h.descriptors.shape[1:]):
        got = "none" if descriptor is None else str(tuple(descriptor.shape))
        raise InputError(f"{name}: its descriptor ({got}) does not fit the index's {tuple(h.descriptors.shape[1:])}; "
                         "query with a clip or features file, or codes encoded with the same --descriptor")


def vote_windows(h: HammingIndex, windows: dict[str, np.ndarray], hits_per_window: int, top: int,
                 rerank_hits: bool) -> list[SegmentMatch]:
    """Search every window of one query, then vote (``voting.vote``) for (indexed video, offset)."""
    if h.segments is None:
        raise InputError(f"{h.path}: holds whole videos, not time windows; window voting needs an index of "
                         "`s5vh encode --segment` codes")
    res = search(h, windows["codes"], hits_per_window)
    if windows.get("flip_codes") is not None:
        res = [merge_min(a, b, hits_per_window) for a, b in zip(res, search(h, windows["flip_codes"],
                                                                           hits_per_window), strict=True)]
    row_of = h.row_of()
    rows = [np.array([row_of[int(k)] for k in keys.tolist()], dtype=np.int64) for _, keys in res]
    weights = None
    if rerank_hits:
        weights = []
        for i, r in enumerate(rows):
            s = descriptor_scores(h, r, windows["descriptors"][i]) if r.size else np.empty(0)
            if windows.get("flip_descriptors") is not None and r.size:
                s = np.maximum(s, descriptor_scores(h, r, windows["flip_descriptors"][i]))
            weights.append(np.maximum(s, 0.0) ** 4)  # near-identical windows dominate weak look-alikes
    seg = h.segments
    return vote(windows["start"], windows["end"], rows, [d for d, _ in res], seg["video_id"], seg["start"],
                seg["end"], h.bits, resolution=min(1.0, float(h.provenance.get("hop_seconds") or 1.0)), top=top,
                weights=weights)
