"""Partial copies: which indexed video a clip was cut from, and where, by temporal voting over window codes.

Both sides are cut into windows (``s5vh encode --segment``): the database videos once, the query clip at query
time. Every query window is searched on its own; each hit (a database window of video v starting at d, for a
query window starting at q) votes for the pair (v, offset d - q), with weight ``1 - distance / (bits / 2)``
(zero or less for a distance no better than chance, which then does not vote). A copied excerpt makes many
query windows agree on one (video, offset); unrelated hits scatter. The best-supported pair per video gives the
video's score, the query's matched time range (its voting windows) and the same range shifted into the video.

Offsets are binned at ``resolution`` seconds; a query window counts once per bin (its best hit there), and a
pair's support is its bin plus the two neighbours, so an offset that falls between two bins is not split.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from .errors import InputError


@dataclass
class SegmentMatch:
    video: str
    score: float  # summed vote weight of the supporting query windows
    windows: int  # query windows supporting the match
    offset: float  # database time minus query time, seconds
    query_start: float
    query_end: float
    video_start: float
    video_end: float

    def as_dict(self) -> dict:
        return {"video": self.video, "score": round(self.score, 4), "windows": self.windows,
                "offset_s": round(self.offset, 3), "query_range_s": [round(self.query_start, 3), round(self.query_end, 3)],
                "video_range_s": [round(self.video_start, 3), round(self.video_end, 3)]}


def vote(q_start: np.ndarray, q_end: np.ndarray, hit_rows: list[np.ndarray], hit_dist: list[np.ndarray],
         db_video: list[str], db_start: np.ndarray, db_end: np.ndarray, bits: int, resolution: float = 1.0,
         top: int = 10, weights: list[np.ndarray] | None = None) -> list[SegmentMatch]:
    """Rank videos by temporal voting (module docstring).

    ``hit_rows[i]`` / ``hit_dist[i]``: database rows and Hamming distances found for query window i.
    ``weights``, optional: per-hit weights to use instead of the distance-based ones (e.g. re-ranking scores).
    """
    if len(hit_rows) != len(q_start) or len(hit_dist) != len(q_start):
        raise InputError("vote: one hit list per query window is needed")
    if resolution <= 0:
        raise InputError(f"resolution must be positive, got {resolution}")
    db_start = np.asarray(db_start, np.float64)
    db_end = np.asarray(db_end, np.float64)
    # (video, bin) -> {query window: (weight, offset)}: a window votes once per bin, with its best hit there
    bins: dict[tuple[str, int], dict[int, tuple[float, float]]] = defaultdict(dict)
    for i, (rows, dist) in enumerate(zip(hit_rows, hit_dist, strict=True)):
        w = weights[i] if weights is not None else 1.0 - np.asarray(dist, np.float64) / (bits / 2.0)
        for r, wi in zip(np.asarray(rows).tolist(), np.asarray(w, np.float64).tolist(), strict=True):
            if wi <= 0:
                continue
            off = float(db_start[r] - q_start[i])
            key = (db_video[r], int(round(off / resolution)))
            if wi > bins[key].get(i, (0.0, 0.0))[0]:
                bins[key][i] = (wi, off)
    best: dict[str, tuple[float, int]] = {}
    for v, b in list(bins):
        support = _support(bins, v, b)
        s = sum(w for w, _ in support.values())
        if v not in best or s > best[v][0] or (s == best[v][0] and b < best[v][1]):
            best[v] = (s, b)
    out = []
    for v, (s, b) in best.items():
        support = _support(bins, v, b)
        wins = sorted(support)
        ws = np.array([support[i][0] for i in wins])
        offs = np.array([support[i][1] for i in wins])
        offset = float(np.sum(ws * offs) / np.sum(ws))
        qs, qe = float(np.min(q_start[wins])), float(np.max(q_end[wins]))
        vid_rows = [r for r, name in enumerate(db_video) if name == v]
        vmax = float(db_end[vid_rows].max()) if vid_rows else qe + offset
        out.append(SegmentMatch(video=v, score=float(s), windows=len(wins), offset=offset, query_start=qs,
                                query_end=qe, video_start=max(0.0, qs + offset), video_end=min(vmax, qe + offset)))
    out.sort(key=lambda m: (-m.score, m.video))
    return out[:top]


def _support(bins: dict, video: str, b: int) -> dict[int, tuple[float, float]]:
    """Query windows voting for bins b-1, b, b+1 of ``video`` (each window's best hit among them)."""
    merged: dict[int, tuple[float, float]] = {}
    for bb in (b - 1, b, b + 1):
        for i, (w, off) in bins.get((video, bb), {}).items():
            if w > merged.get(i, (0.0, 0.0))[0]:
                merged[i] = (w, off)
    return merged
