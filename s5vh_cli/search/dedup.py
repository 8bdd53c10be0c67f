"""Groups of duplicate videos in an index, each with a suggested keeper. Nothing here deletes or moves files.

Groups are the connected components of the graph whose edges join entries within Hamming distance ``radius``
(all-against-all radius search). The keeper of a group is the copy a person would keep: the highest
resolution, then the highest bitrate, then the longest, then the oldest file, then the lowest key.

Without ``radius`` the threshold is chosen from the library's own distances (``auto_radius``): every entry's
distance to its nearest other entry splits into a low mode (copies) and a high mode (videos with no copy), and
the split that best separates the two (Otsu's criterion on the histogram) is one bound. A library with no
copies has no low mode, so a second bound keeps chance meetings out: the same codes with each bit shuffled
independently across the videos form a library of unrelated videos with the same bit statistics, and the radius
stays below the smallest nearest-neighbour distance in it. The smaller of the two, and never more than a
quarter of the code length. docs/dedup.md gives its measured
precision and recall.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import artifacts
from ..codes import hamming
from ..errors import InputError
from ..progress import NULL, Progress
from .backends import IndexParams
from .index import HammingIndex, range_search

BATCH = 4096  # queries per all-against-all search call


@dataclass
class Member:
    key: int
    id: str
    path: str
    distance: int  # Hamming distance to the group's keeper
    record: dict[str, Any] = field(default_factory=dict)  # file records: size, duration, width, height, ...

    @property
    def bitrate(self) -> float | None:
        size, dur = self.record.get("file_size"), self.record.get("duration")
        return size * 8 / dur if size is not None and dur else None

    def as_dict(self, keeper: bool) -> dict[str, Any]:
        r = self.record
        return {"key": self.key, "id": self.id, "path": artifacts.display_path(self.path), "keeper": keeper,
                "distance": self.distance, "width": r.get("width"), "height": r.get("height"),
                "duration": r.get("duration"), "size": r.get("file_size"),
                "bitrate": round(self.bitrate) if self.bitrate else None,
                "mtime_ns": r.get("file_mtime_ns")}


@dataclass
class Group:
    members: list[Member]  # the keeper first, then by distance to it, then key

    @property
    def keeper(self) -> Member:
        return self.members[0]

    @property
    def max_distance(self) -> int:
        return max(m.distance for m in self.members)

    def as_dict(self, number: int) -> dict[str, Any]:
        return {"group": number, "size": len(self.members), "max_distance": self.max_distance,
                "keeper": artifacts.display_path(self.keeper.path or self.keeper.id),
                "members": [m.as_dict(i == 0) for i, m in enumerate(self.members)]}


@dataclass
class DedupResult:
    index: str
    bits: int
    videos: int
    radius: int
    radius_rule: dict[str, Any]
    groups: list[Group]
    edges: list[tuple[int, int, int]]  # (key a, key b, distance) within ``edge_radius``, a < b
    edge_radius: int
    seconds: float = 0.0

    @property
    def duplicates(self) -> int:
        """Entries that are not their group's keeper."""
        return sum(len(g.members) - 1 for g in self.groups)

    def as_dict(self) -> dict[str, Any]:
        return {"index": artifacts.display_path(self.index), "bits": self.bits, "videos": self.videos,
                "radius": self.radius, "radius_rule": self.radius_rule, "groups": len(self.groups),
                "duplicates": self.duplicates, "seconds": round(self.seconds, 3),
                "duplicate_groups": [g.as_dict(i) for i, g in enumerate(self.groups, start=1)]}


# ----------------------------------------------------------------------------------------------------------
# the threshold
# ----------------------------------------------------------------------------------------------------------
def nearest_distances(h: HammingIndex, progress: Progress = NULL) -> np.ndarray:
    """Each entry's Hamming distance to its nearest other entry (bits + 1 when the index has one entry).

    A 2-NN search per entry: the entry itself is one of the two at distance 0, so the other distance is its
    nearest neighbour's (0 when it has an exact twin). Only distances are needed, so ties do not matter."""
    out = np.full(h.n, h.bits + 1, dtype=np.int64)
    if h.n < 2:
        return out
    progress.start("nearest neighbours", total=h.n)
    try:
        for s in range(0, h.n, BATCH):
            q = np.ascontiguousarray(h.codes[s:s + BATCH])
            d, k = h.backend.search(q, 2, key_below=h.next_key)
            out[s:s + q.shape[0]] = np.where(k[:, 1] >= 0, d[:, 1], h.bits + 1)
            progress.advance(q.shape[0])
    finally:
        progress.finish()
    return out


def otsu_split(values: np.ndarray, top: int) -> int:
    """The threshold t (values <= t form the low class) maximising the between-class variance of ``values``
    restricted to 0..top+1 bins; ties go to the smaller t."""
    hist = np.bincount(np.clip(values, 0, top + 1), minlength=top + 2).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0
    levels = np.arange(hist.size, dtype=np.float64)
    w0 = np.cumsum(hist)
    m0 = np.cumsum(hist * levels)
    best_t, best = 0, -1.0
    for t in range(hist.size - 1):
        a, b = w0[t], total - w0[t]
        if a == 0 or b == 0:
            continue
        mu0, mu1 = m0[t] / a, (m0[-1] - m0[t]) / b
        between = a * b * (mu0 - mu1) ** 2
        if between > best + 1e-9:
            best_t, best = t, between
    return best_t


def chance_radius(h: HammingIndex, sample: int = 200_000, seed: int = 0,
                  progress: Progress = NULL) -> tuple[int, dict[str, Any]]:
    """One radius below which unrelated videos of this library would not meet: the nearest-neighbour distances
    of a null library, made by shuffling each bit of the codes independently across the videos (every bit keeps
    how often it is set, but which videos share it becomes chance), minus one. A library of up to ``sample``
    videos is shuffled whole; a larger one is subsampled to ``sample`` videos."""
    from ..codes import pack, unpack
    from .backends.base import Entries
    from .backends.faiss import FaissBackend

    rng = np.random.default_rng(seed)
    rows = rng.choice(h.n, size=sample, replace=False) if h.n > sample else np.arange(h.n)
    bits = unpack(h.codes[rows], signed=False)
    for col in range(bits.shape[1]):
        bits[:, col] = rng.permutation(bits[:, col])
    null = pack(bits)
    keys = np.arange(null.shape[0], dtype=np.int64)
    # an in-memory exact scan of the null library, whatever backend holds the real one
    be = FaissBackend.build("BFlat", h.bits, Entries(keys, null, [], []), IndexParams(), {}, {}, None, NULL)
    nn = np.empty(null.shape[0], dtype=np.int64)
    progress.start("null library", total=null.shape[0])
    try:
        for s in range(0, null.shape[0], BATCH):
            d, _ = be.search(null[s:s + BATCH], 2)
            nn[s:s + d.shape[0]] = d[:, 1]
            progress.advance(d.shape[0])
    finally:
        progress.finish()
    r = int(nn.min()) - 1
    return max(0, r), {"null_videos": int(null.shape[0]), "null_nearest_min": int(nn.min()),
                       "null_nearest_median": float(np.median(nn))}


def auto_radius(h: HammingIndex, nn: np.ndarray | None = None, progress: Progress = NULL) -> tuple[int, dict[str, Any]]:
    """A radius from the library's own distances (see the module docstring)."""
    cap = h.bits // 4
    if h.n < 2:
        return 0, {"rule": "auto", "reason": "one entry: nothing to compare", "cap": cap}
    nn = nearest_distances(h, progress) if nn is None else nn
    t = otsu_split(nn, h.bits)
    chance, null = chance_radius(h, progress=progress)
    r = int(max(0, min(t, chance, cap)))
    return r, {"rule": "auto", "radius": r, "otsu_split": int(t), "chance_radius": chance, "cap": cap, **null,
               "nearest_distance_histogram": np.bincount(np.minimum(nn, h.bits + 1), minlength=h.bits + 2).tolist(),
               "explain": "the smallest of: the Otsu split of each video's distance to its nearest other video; "
                          "one less than the smallest such distance in the same codes with each bit shuffled "
                          "across the videos; a quarter of the code length"}


# ----------------------------------------------------------------------------------------------------------
# groups
# ----------------------------------------------------------------------------------------------------------
def pairs_within(h: HammingIndex, radius: int, progress: Progress = NULL) -> list[tuple[int, int, int]]:
    """All (key a, key b, distance) with a < b and distance <= radius (all-against-all radius search)."""
    edges: list[tuple[int, int, int]] = []
    progress.start("all-against-all search", total=h.n)
    try:
        for s in range(0, h.n, BATCH):
            rows = np.arange(s, min(h.n, s + BATCH))
            res = range_search(h, h.codes[rows], radius)
            for r, (d, keys) in zip(rows.tolist(), res, strict=True):
                a = int(h.keys[r])
                for dist, b in zip(d.tolist(), keys.tolist(), strict=True):
                    if b > a:
                        edges.append((a, int(b), int(dist)))
            progress.advance(rows.size)
    finally:
        progress.finish()
    edges.sort()
    return edges


def _components(keys: np.ndarray, edges: list[tuple[int, int, int]], radius: int) -> list[list[int]]:
    parent = {int(k): int(k) for k in keys.tolist()}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b, d in edges:
        if d <= radius:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    comps: dict[int, list[int]] = {}
    for k in parent:
        comps.setdefault(find(k), []).append(k)
    return [sorted(c) for c in comps.values() if len(c) > 1]


def keeper_order(m: Member) -> tuple:
    """Sort key: the keeper sorts first (highest resolution, bitrate, duration; oldest; lowest key)."""
    r = m.record
    area = (r.get("width") or 0) * (r.get("height") or 0)
    return (-area, -(m.bitrate or 0.0), -(r.get("duration") or 0.0), r.get("file_mtime_ns", 1 << 62), m.key)


def groups_at(h: HammingIndex, edges: list[tuple[int, int, int]], radius: int) -> list[Group]:
    row = h.row_of()
    out = []
    for comp in _components(h.keys, edges, radius):
        members = [Member(key=k, id=h.ids[row[k]], path=h.paths[row[k]], distance=0, record=h.record(row[k]))
                   for k in comp]
        members.sort(key=keeper_order)
        keeper_code = h.codes[row[members[0].key]][None, :]
        dists = hamming(keeper_code, np.stack([h.codes[row[m.key]] for m in members]))[0]
        for m, d in zip(members, dists.tolist(), strict=True):
            m.distance = int(d)
        members = [members[0]] + sorted(members[1:], key=lambda m: (m.distance, m.key))
        out.append(Group(members))
    out.sort(key=lambda g: (-len(g.members), g.keeper.key))
    return out


def find_duplicates(h: HammingIndex, radius: int | None = None, progress: Progress | None = None,
                    edge_margin: int = 4) -> DedupResult:
    """Duplicate groups of ``h`` at ``radius`` (chosen by ``auto_radius`` when None).

    Edges up to ``radius + edge_margin`` are kept in the result so that a report can regroup at a nearby
    threshold without searching again.
    """
    progress = progress or NULL
    t0 = time.perf_counter()
    if radius is not None and not 0 <= radius <= h.bits:
        raise InputError(f"--radius must be between 0 and {h.bits} (the code length), got {radius}")
    if h.n == 0:
        raise InputError(f"{h.path}: the index is empty")
    if radius is None:
        radius, rule = auto_radius(h, progress=progress)
    else:
        rule = {"rule": "given", "radius": radius}
    edge_radius = min(h.bits, radius + max(0, edge_margin))
    edges = pairs_within(h, edge_radius, progress)
    groups = groups_at(h, edges, radius)
    return DedupResult(index=str(h.path), bits=h.bits, videos=h.n, radius=radius, radius_rule=rule, groups=groups,
                       edges=edges, edge_radius=edge_radius, seconds=time.perf_counter() - t0)
