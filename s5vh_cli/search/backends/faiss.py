"""The embedded backend: a faiss binary index in one local file that plain faiss can read.

The file is an ``IndexBinaryIDMap2`` around the index named by a factory string, whose int64 ids are the
database keys. Types (faiss ``index_binary_factory`` names): ``BFlat`` exact; ``BHNSW<M>`` graph search;
``BIVF<nlist>`` inverted lists (``nprobe``); ``BHash<b>`` one hash table on the first b bits;
``BHash<m>x<b>`` multi-index hashing (m tables of b bits, ``nflip`` bit flips probed per table).
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

import numpy as np

from ...errors import ArtifactError, InputError
from ...progress import Progress
from .base import Candidates, Entries, IndexBackend, IndexParams

_TYPE_RE = {
    "flat": re.compile(r"^BFlat$"),
    "hnsw": re.compile(r"^BHNSW(\d+)$"),
    "ivf": re.compile(r"^BIVF(\d+)$"),
    "hash": re.compile(r"^BHash(\d+)$"),
    "mih": re.compile(r"^BHash(\d+)x(\d+)$"),
}
ADD_BATCH = 65536
MAX_EF_SEARCH = 1 << 20  # candidate lists beyond this are memory, not recall (faiss aborts on absurd values)
MAX_HASH_PROBES = 1 << 24  # buckets probed per table: sum_{i <= nflip} C(b, i)


def _faiss():
    # Spinning OpenMP workers collapse throughput when cores are shared (measured 6x slower flat search on a
    # loaded 2-core machine); passive waiting costs nothing when they are not. Read once, at faiss's first import.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import faiss

    return faiss


def parse_type(name: str, bits: int, n: int | None = None) -> tuple[str, tuple[int, ...]]:
    """Validate a factory name for ``bits``-bit codes; returns (family, numbers)."""
    for family, rx in _TYPE_RE.items():
        m = rx.match(name)
        if not m:
            continue
        nums = tuple(int(g) for g in m.groups())
        if family == "hnsw" and not 2 <= nums[0] <= 256:
            raise InputError(f"index type {name}: HNSW M must be between 2 and 256")
        if family == "ivf" and nums[0] < 1:
            raise InputError(f"index type {name}: nlist must be at least 1")
        if family == "ivf" and n is not None and n < nums[0]:
            raise InputError(f"index type {name}: needs at least {nums[0]} codes to train {nums[0]} lists, "
                             f"got {n}; use a smaller nlist (about sqrt(N)) or BFlat")
        if family == "hash" and not 1 <= nums[0] <= min(bits, 30):
            raise InputError(f"index type {name}: hash bits must be 1..{min(bits, 30)} for {bits}-bit codes")
        if family == "mih" and (nums[0] < 1 or not 1 <= nums[1] <= 30 or nums[0] * nums[1] > bits):
            raise InputError(f"index type {name}: m x b must use at most {bits} bits with b in 1..30")
        return family, nums
    raise InputError(f"unknown index type {name!r}; use BFlat, BHNSW<M> (e.g. BHNSW32), BIVF<nlist> "
                     f"(e.g. BIVF1024), BHash<b> (e.g. BHash16) or BHash<m>x<b> (e.g. BHash4x16)")


def _hash_bits(family: str, nums: tuple[int, ...]) -> int:
    return nums[0] if family == "hash" else nums[1]


def max_nflip(family: str, nums: tuple[int, ...]) -> int:
    """Largest nflip whose probe count per table stays under MAX_HASH_PROBES."""
    b = _hash_bits(family, nums)
    total, f = 0, 0
    while f <= b:
        total += math.comb(b, f)
        if total > MAX_HASH_PROBES:
            return f - 1
        f += 1
    return b


class FaissBackend(IndexBackend):
    name = "faiss"
    default_type = "BFlat"

    def __init__(self, index_type: str, bits: int, params: IndexParams, idmap: Any, inner: Any) -> None:
        super().__init__(index_type, bits, params)
        self.family, self.nums = parse_type(index_type, bits)
        self.idmap = idmap
        self._inner = inner  # keeps the wrapped index alive and reachable for its search knobs
        self._top_key: int | None = None  # largest key held (None: not known yet), to skip no-op key filters

    # ---- construction and persistence -----------------------------------------------------------------
    @classmethod
    def check_type(cls, index_type: str, bits: int, n: int | None = None) -> None:
        parse_type(index_type, bits, n)

    @classmethod
    def _make_inner(cls, index_type: str, bits: int, codes: np.ndarray, progress: Progress) -> Any:
        faiss = _faiss()
        parse_type(index_type, bits, n=codes.shape[0])
        inner = faiss.index_binary_factory(bits, index_type)  # already the concrete class; do not downcast
        if not inner.is_trained:
            progress.log(f"training {index_type} on {codes.shape[0]} codes")
            inner.train(np.ascontiguousarray(codes))
        return inner

    @classmethod
    def build(cls, index_type: str, bits: int, entries: Entries, params: IndexParams, options: dict[str, Any],
              provenance: dict[str, Any], previous: bytes | None, progress: Progress) -> FaissBackend:
        if options:
            given = ", ".join("--" + k.replace("_", "-") for k in sorted(options))
            raise InputError(f"the faiss backend takes no {given} (those are milvus options)")
        inner = cls._make_inner(index_type, bits, entries.codes, progress)
        b = cls(index_type, bits, params, _faiss().IndexBinaryIDMap2(inner), inner)
        b.check_params(params)
        b.apply_params(params)
        b.add(entries, progress)
        b.params = b._read_params()
        return b

    @classmethod
    def from_bytes(cls, raw: bytes, index_type: str, bits: int, params: IndexParams, options: dict[str, Any],
                   where: str) -> FaissBackend:
        faiss = _faiss()
        _check_header(raw, bits, where)
        try:
            idx = faiss.deserialize_index_binary(np.frombuffer(raw, dtype=np.uint8))
        except Exception as e:
            from ...artifacts import _short

            raise ArtifactError(f"{where}: not a readable faiss binary index ({_short(e)})") from None
        if type(idx).__name__ != "IndexBinaryIDMap2" or idx.d != bits:
            raise ArtifactError(f"{where}: expected an IndexBinaryIDMap2 of {bits}-bit codes, found "
                                f"{type(idx).__name__} d={idx.d}")
        inner = faiss.downcast_IndexBinary(idx.index)
        b = cls(index_type, bits, params, idx, inner)
        if not b._inner_matches_type():
            raise ArtifactError(f"{where}: the faiss index is a {type(inner).__name__}, not the {index_type} its "
                                "metadata names")
        stored = b._read_params()
        b.params = stored.merged(params)
        return b

    def to_bytes(self) -> bytes:
        return _faiss().serialize_index_binary(self.idmap).tobytes()

    def _inner_matches_type(self) -> bool:
        name = type(self._inner).__name__
        want = {"flat": "IndexBinaryFlat", "hnsw": "IndexBinaryHNSW", "ivf": "IndexBinaryIVF",
                "hash": "IndexBinaryHash", "mih": "IndexBinaryMultiHash"}[self.family]
        if name != want:
            return False
        if self.family == "ivf":
            return int(self._inner.nlist) == self.nums[0]
        if self.family == "hash":
            return int(self._inner.b) == self.nums[0]
        if self.family == "mih":
            return int(self._inner.nhash) == self.nums[0] and int(self._inner.b) == self.nums[1]
        return True

    # ---- contents ---------------------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return int(self.idmap.ntotal)

    @property
    def exact(self) -> bool:
        return self.family == "flat"

    def keys(self) -> np.ndarray:
        return _faiss().vector_to_array(self.idmap.id_map).astype(np.int64)

    def check_entries(self, keys: np.ndarray, codes: np.ndarray) -> str | None:
        if self.ntotal != keys.shape[0]:
            return f"{self.ntotal} codes stored, {keys.shape[0]} listed"
        # IDMap2 keeps ids in insertion order, as the metadata keeps its rows: rolled or swapped keys show here
        if not np.array_equal(self.keys(), keys):
            return "the keys differ or are in another order"
        if self.family == "flat" and not np.array_equal(
                _faiss().vector_to_array(self._inner.xb).reshape(-1, self.bits // 8), codes):
            return "the stored codes differ"
        return None

    def add(self, entries: Entries, progress: Progress) -> None:
        codes, keys = entries.codes, entries.keys
        n = codes.shape[0]
        if n and self._top_key is not None:
            self._top_key = max(self._top_key, int(keys.max()))
        progress.start("index add", total=n)
        try:
            for s in range(0, n, ADD_BATCH):
                self.idmap.add_with_ids(np.ascontiguousarray(codes[s:s + ADD_BATCH]),
                                        np.ascontiguousarray(keys[s:s + ADD_BATCH], dtype=np.int64))
                progress.advance(min(ADD_BATCH, n - s))
        finally:
            progress.finish()

    def remove(self, keys: np.ndarray, kept: Entries, progress: Progress) -> None:
        kept_codes = kept.codes
        if self.family == "flat":
            self.idmap.remove_ids(np.ascontiguousarray(keys, dtype=np.int64))
            return
        # HNSW and hash tables cannot delete; IDMap2's removal on IVF would leave the inner ids stale.
        # IVF keeps its trained coarse quantizer (clone + reset) so removals do not move the cluster centres.
        if self.family == "ivf":
            inner = _faiss().clone_binary_index(self._inner)
            inner.reset()
        elif kept_codes.shape[0]:
            inner = self._make_inner(self.index_type, self.bits, kept_codes, progress)
        else:
            self.idmap.reset()
            return
        self._inner = inner
        self.idmap = _faiss().IndexBinaryIDMap2(inner)
        self.apply_params(self.params)
        self.add(kept, progress)

    # ---- search -----------------------------------------------------------------------------------------
    def _selector(self, key_below: int | None) -> Any:
        """Search parameters that keep keys below ``key_below``; None when that filters nothing."""
        if key_below is None or self.ntotal == 0:
            return None
        if self._top_key is None:
            self._top_key = int(self.keys().max())
        if key_below > self._top_key:
            return None
        faiss = _faiss()
        p = faiss.SearchParameters()
        p.sel = faiss.IDSelectorRange(0, int(key_below))
        return p

    def search(self, queries: np.ndarray, k: int, key_below: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        sel = self._selector(key_below)
        if sel is None:
            return self.idmap.search(queries, k)
        return self.idmap.search(queries, k, params=sel)

    def range_search(self, queries: np.ndarray, radius: int, key_below: int | None = None) -> list[Candidates]:
        nq = queries.shape[0]
        if self._selector(key_below) is not None:
            out = self.range_search(queries, radius)
            return [(d[lb < key_below], lb[lb < key_below]) for d, lb in out]
        if self.family != "hnsw":
            lims, dist, lab = self.idmap.range_search(queries, int(radius) + 1)  # faiss's radius is exclusive
            return [(dist[lims[i]:lims[i + 1]], lab[lims[i]:lims[i + 1]]) for i in range(nq)]
        # HNSW has no range search: grow k-NN until the farthest candidate is beyond the radius
        out: list[Candidates] = []
        ntotal = self.ntotal
        for i in range(nq):
            kk = min(ntotal, 64)
            while True:
                d, lb = self.idmap.search(queries[i:i + 1], kk)
                d, lb = d[0][lb[0] >= 0], lb[0][lb[0] >= 0]
                if kk >= ntotal or d.size < kk or d[-1] > radius:
                    break
                kk = min(ntotal, kk * 4)
            m = d <= radius
            out.append((d[m], lb[m]))
        return out

    # ---- parameters ---------------------------------------------------------------------------------------
    def check_params(self, params: IndexParams) -> None:
        """Values must make sense for any index; the type's own bounds apply to the knobs it has (the others
        are ignored, so one script can query indexes of several types)."""
        p = params
        for name, v, low in (("--nprobe", p.nprobe, 1), ("--ef-search", p.ef_search, 1), ("--nflip", p.nflip, 0)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low):
                raise InputError(f"{name} must be an integer of at least {low}, got {v}")
        if self.family == "ivf" and p.nprobe is not None and p.nprobe > self.nums[0]:
            raise InputError(f"--nprobe must be between 1 and the index's {self.nums[0]} lists, got {p.nprobe}")
        if self.family == "hnsw" and p.ef_search is not None and p.ef_search > MAX_EF_SEARCH:
            raise InputError(f"--ef-search must be between 1 and {MAX_EF_SEARCH}, got {p.ef_search}")
        if self.family in ("hash", "mih") and p.nflip is not None:
            top = max_nflip(self.family, self.nums)
            if p.nflip > top:
                raise InputError(f"--nflip must be between 0 and {top} for {_hash_bits(self.family, self.nums)}-bit "
                                 f"hash tables (more probes than that is a scan), got {p.nflip}")

    def apply_params(self, params: IndexParams) -> None:
        inner = self._inner
        if self.family == "ivf" and params.nprobe is not None:
            inner.nprobe = int(params.nprobe)
        if self.family == "hnsw" and params.ef_search is not None:
            inner.hnsw.efSearch = int(params.ef_search)
        if self.family in ("hash", "mih") and params.nflip is not None:
            inner.nflip = int(params.nflip)
        self.params = self._read_params()

    def _read_params(self) -> IndexParams:
        inner = self._inner
        if self.family == "ivf":
            return IndexParams(nprobe=int(inner.nprobe))
        if self.family == "hnsw":
            return IndexParams(ef_search=int(inner.hnsw.efSearch))
        if self.family in ("hash", "mih"):
            return IndexParams(nflip=int(inner.nflip))
        return IndexParams()

    def info(self) -> dict[str, Any]:
        return {"backend": self.name}


def _check_header(raw: bytes, bits: int, where: str) -> None:
    """Refuse a file whose IDMap2 header declares more vectors than its bytes can hold, before faiss allocates.

    Layout (faiss/impl/index_write.cpp): fourcc "IBM2", then the common binary-index header d (int32),
    code_size (int32), ntotal (int64), is_trained (uint8), metric_type (int32).
    """
    if len(raw) < 25 or raw[:4] != b"IBM2":
        raise ArtifactError(f"{where}: not an s5vh faiss index (expected an IndexBinaryIDMap2 file)")
    d = int.from_bytes(raw[4:8], "little", signed=True)
    code_size = int.from_bytes(raw[8:12], "little", signed=True)
    ntotal = int.from_bytes(raw[12:20], "little", signed=True)
    if d != bits or code_size * 8 != bits or ntotal < 0:
        raise ArtifactError(f"{where}: damaged faiss header (d={d}, code_size={code_size}, ntotal={ntotal}; "
                            f"expected {bits}-bit codes)")
    # every stored vector costs at least its code and its 8-byte id in the file
    if ntotal * (code_size + 8) > len(raw):
        raise ArtifactError(f"{where}: damaged faiss index: its header declares {ntotal} codes but the file has "
                            f"{len(raw)} bytes")
