"""Partial copies: which indexed video a clip was cut from, and where, by temporal voting over window codes.

Both sides are cut into windows (``s5vh encode --segment``): the database videos once, the query clip at query
time. Every query window is searched on its own; each hit (a database window of video v starting at d, for a
query window starting at q) votes for the pair (v, offset d - q), with weight ``1 - distance / (bits / 2)``
(zero or less for a distance no better than chance, which then does not vote). A copied excerpt makes many
query windows agree on one (video, offset); unrelated hits scatter. The best-supported pair per video gives the
video's score, the query's matched time range (its voting windows) and the same range shifted into the video.

Offsets are binned at ``resolution`` seconds; a query window counts once per bin (its best hit there), and a
pair's support is its bin plus the two neighbours, so an offset that falls between two bins is not split.

Speed: a copy may be played faster or slower than its source (database time = offset + speed x query time). The
votes are cast once per speed of ``speeds`` (by default ``SPEEDS``, quarter-octave steps from 0.5 to 2, fixed
before any measurement), each into its own offset bins ``d - speed x q``; a video's answer is its best-supported
(speed, offset), where a speed other than 1 must gather ``speed_margin`` times the vote weight to win (speed 1 is
the common case, and in a still stretch every speed fits about as well). The matched range in the video is then ``offset + speed x`` the query's
range, so a sped-up excerpt is reported over all the source time it covers.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from .errors import InputError

SPEEDS = tuple(2.0 ** (k / 4) for k in (0, -1, 1, -2, 2, -3, 3, -4, 4))  # 1 first: it wins ties
SPEED_MARGIN = 1.1  # another speed must gather this many times speed 1's vote weight (chosen on validation copies)


@dataclass
class SegmentMatch:
    video: str
    score: float  # summed vote weight of the supporting query windows
    windows: int  # query windows supporting the match
    offset: float  # database time minus speed x query time, seconds
    query_start: float
    query_end: float
    video_start: float
    video_end: float
    speed: float = 1.0  # database seconds per query second (above 1: the copy is sped up)

    def as_dict(self) -> dict:
        return {"video": self.video, "score": round(self.score, 4), "windows": self.windows,
                "offset_s": round(self.offset, 3), "speed": round(self.speed, 3), "query_range_s": [round(self.query_start, 3), round(self.query_end, 3)],
                "video_range_s": [round(self.video_start, 3), round(self.video_end, 3)]}


def vote(q_start: np.ndarray, q_end: np.ndarray, hit_rows: list[np.ndarray], hit_dist: list[np.ndarray],
         db_video: list[str], db_start: np.ndarray, db_end: np.ndarray, bits: int, resolution: float = 1.0,
         top: int = 10, weights: list[np.ndarray] | None = None,
         speeds: tuple[float, ...] = SPEEDS, speed_margin: float = SPEED_MARGIN) -> list[SegmentMatch]:
    """Rank videos by temporal voting (module docstring).

    ``hit_rows[i]`` / ``hit_dist[i]``: database rows and Hamming distances found for query window i.
    ``weights``, optional: per-hit weights to use instead of the distance-based ones (e.g. re-ranking scores).
    """
    if len(hit_rows) != len(q_start) or len(hit_dist) != len(q_start):
        raise InputError("vote: one hit list per query window is needed")
    if resolution <= 0:
        raise InputError(f"resolution must be positive, got {resolution}")
    if not speeds or any(not sp > 0 for sp in speeds):
        raise InputError(f"speeds must be positive, got {speeds}")
    db_start = np.asarray(db_start, np.float64)
    db_end = np.asarray(db_end, np.float64)
    # (video, speed, bin) -> {query window: (weight, offset)}: a window votes once per bin, with its best hit there
    bins: dict[tuple[str, int, int], dict[int, tuple[float, float]]] = defaultdict(dict)
    for i, (rows, dist) in enumerate(zip(hit_rows, hit_dist, strict=True)):
        w = weights[i] if weights is not None else 1.0 - np.asarray(dist, np.float64) / (bits / 2.0)
        for r, wi in zip(np.asarray(rows).tolist(), np.asarray(w, np.float64).tolist(), strict=True):
            if wi <= 0:
                continue
            for si, sp in enumerate(speeds):
                off = float(db_start[r] - sp * q_start[i])
                key = (db_video[r], si, int(round(off / resolution)))
                if wi > bins[key].get(i, (0.0, 0.0))[0]:
                    bins[key][i] = (wi, off)
    best: dict[str, tuple[float, int, int]] = {}  # video -> (support, discounted for a speed other than 1)
    for v, si, b in list(bins):
        s = sum(w for w, _ in _support(bins, v, si, b).values())
        if speeds[si] != 1.0:
            s /= speed_margin
        if v not in best or s > best[v][0] or (s == best[v][0] and (si, b) < best[v][1:]):
            best[v] = (s, si, b)
    out = []
    for v, (_, si, b) in best.items():
        support = _support(bins, v, si, b)
        s = sum(w for w, _ in support.values())
        sp = float(speeds[si])
        wins = sorted(support)
        ws = np.array([support[i][0] for i in wins])
        offs = np.array([support[i][1] for i in wins])
        offset = float(np.sum(ws * offs) / np.sum(ws))
        qs, qe = float(np.min(q_start[wins])), float(np.max(q_end[wins]))
        vid_rows = [r for r, name in enumerate(db_video) if name == v]
        vmax = float(db_end[vid_rows].max()) if vid_rows else offset + sp * qe
        out.append(SegmentMatch(video=v, score=float(s), windows=len(wins), offset=offset, query_start=qs,
                                query_end=qe, video_start=max(0.0, offset + sp * qs),
                                video_end=min(vmax, offset + sp * qe), speed=sp))
    out.sort(key=lambda m: (-m.score, m.video))
    return out[:top]


def _support(bins: dict, video: str, si: int, b: int) -> dict[int, tuple[float, float]]:
    """Query windows voting for bins b-1, b, b+1 of ``video`` at speed ``si`` (each window's best hit among them)."""
    merged: dict[int, tuple[float, float]] = {}
    for bb in (b - 1, b, b + 1):
        for i, (w, off) in bins.get((video, si, bb), {}).items():
            if w > merged.get(i, (0.0, 0.0))[0]:
                merged[i] = (w, off)
    return merged
