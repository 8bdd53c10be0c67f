"""Hamming-distance indexes: faiss binary indexes by factory name, with ids and provenance beside them.

An index is two files written together:

* ``index.bin`` - a plain faiss binary index (``faiss.read_index_binary`` opens it): an ``IndexBinaryIDMap2``
  around the index named by the factory string, whose int64 ids are our database keys. Keys are assigned
  sequentially as codes are added and never reused after removal.
* ``index.bin.meta.h5`` - an artifact of kind ``index``: the key -> (string id, path) map, a copy of the packed
  codes (so that every index type can be rebuilt after a removal and checked against exact search), the
  provenance of the codes (bits, model, backbone, sampling, frames) and the sha256 of ``index.bin``.

Writers replace both files under one lock (index renamed first, then the metadata); readers hash the index
bytes they actually load and compare with the metadata, so a mismatched pair is never used.

Supported types (faiss ``index_binary_factory`` names):
``BFlat`` exact; ``BHNSW<M>`` graph search; ``BIVF<nlist>`` inverted lists (``nprobe``);
``BHash<b>`` one hash table on the first b bits; ``BHash<m>x<b>`` multi-index hashing (m tables of b bits,
``nflip`` bit flips probed per table).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import artifacts
from .artifacts import Codes
from .errors import ArtifactError, InputError, MismatchError, S5VHError
from .progress import NULL, Progress

META_SUFFIX = ".meta.h5"
# Provenance copied from the codes artifact into the index and required to agree when codes are added.
PROVENANCE_KEYS = ("model_path", "backbone", "backbone_sha256", "sampling", "frames", "feature_dim")
_AGREE_KEYS = ("backbone", "sampling", "frames")
_TYPE_RE = {
    "flat": re.compile(r"^BFlat$"),
    "hnsw": re.compile(r"^BHNSW(\d+)$"),
    "ivf": re.compile(r"^BIVF(\d+)$"),
    "hash": re.compile(r"^BHash(\d+)$"),
    "mih": re.compile(r"^BHash(\d+)x(\d+)$"),
}
ADD_BATCH = 65536


def meta_path(index_path: str | os.PathLike) -> Path:
    p = Path(index_path)
    if not p.name:
        raise InputError(f"{index_path}: is a folder, expected an index file such as index.bin")
    return p.with_name(p.name + META_SUFFIX)


def _prev_path(index_path: Path) -> Path:
    """A hard link to the previous index, kept while the index and its metadata are replaced one after the
    other: a reader (or the next writer) that finds the new index beside the old metadata uses it."""
    return index_path.with_name(index_path.name + ".prev")


def _sha_or_none(path: Path) -> str | None:
    try:
        return artifacts.sha256_file(path)
    except S5VHError:
        return None


def _repair_pair(path: Path, mpath: Path) -> None:
    """Under the writer's lock: finish or undo what a writer killed between its two renames left."""
    prev = _prev_path(path)
    if not prev.exists():
        return
    recorded = None
    with contextlib.suppress(S5VHError):
        with artifacts.open_artifact(mpath, "index") as f:
            recorded = artifacts._attr_str(f, "index_sha256")
    if recorded is not None and _sha_or_none(path) != recorded and _sha_or_none(prev) == recorded:
        os.replace(prev, path)  # the old pair, byte for byte
    else:
        prev.unlink(missing_ok=True)


@dataclass
class IndexParams:
    """Search-time knobs stored with the index and overridable per query."""

    nprobe: int | None = None  # BIVF: inverted lists visited per query
    ef_search: int | None = None  # BHNSW: candidate list size during search
    nflip: int | None = None  # BHash: bits flipped per table when probing


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


@dataclass
class HammingIndex:
    """An opened index: the faiss object plus the key/id/path map, codes copy and provenance."""

    path: Path | None
    index: Any  # faiss.IndexBinaryIDMap2
    index_type: str
    bits: int
    keys: np.ndarray  # int64 [N], ascending in insertion order
    ids: list[str]
    paths: list[str]
    codes: np.ndarray  # uint8 [N, bits/8], row i belongs to keys[i]
    model_sha256: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    params: IndexParams = field(default_factory=IndexParams)
    next_key: int = 0
    sources: list[dict[str, Any]] = field(default_factory=list)
    index_sha256: str = ""
    _inner: Any = None  # keeps the wrapped faiss index alive

    @property
    def n(self) -> int:
        return int(self.keys.shape[0])

    @property
    def exact(self) -> bool:
        return self.index_type == "BFlat"

    def row_of(self) -> dict[int, int]:
        return {int(k): i for i, k in enumerate(self.keys)}

    def info(self) -> dict[str, Any]:
        return {
            "index": str(self.path) if self.path else None, "meta": str(meta_path(self.path)) if self.path else None,
            "type": self.index_type, "exact": self.exact, "bits": self.bits, "count": self.n,
            "next_key": self.next_key, "model_sha256": self.model_sha256,
            **{k: self.provenance.get(k, "") for k in PROVENANCE_KEYS},
            "params": {k: v for k, v in vars(self.params).items() if v is not None},
            "sources": self.sources, "index_sha256": self.index_sha256,
            "index_bytes": self.path.stat().st_size if self.path and self.path.exists() else None,
        }


# ----------------------------------------------------------------------------------------------------------
# faiss construction
# ----------------------------------------------------------------------------------------------------------
def _faiss():
    # Spinning OpenMP workers collapse throughput when cores are shared (measured 6x slower flat search on a
    # loaded 2-core machine); passive waiting costs nothing when they are not. Read once, at faiss's first import.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import faiss

    return faiss


def _make_inner(index_type: str, bits: int, codes: np.ndarray, params: IndexParams, progress: Progress) -> Any:
    faiss = _faiss()
    family, _ = parse_type(index_type, bits, n=codes.shape[0])
    inner = faiss.index_binary_factory(bits, index_type)  # already the concrete class; do not downcast (ownership)
    if not inner.is_trained:
        progress.log(f"training {index_type} on {codes.shape[0]} codes")
        inner.train(np.ascontiguousarray(codes))
    _apply_params(inner, family, params)
    return inner


def _apply_params(inner: Any, family: str, params: IndexParams) -> None:
    if family == "ivf" and params.nprobe is not None:
        inner.nprobe = int(params.nprobe)
    if family == "hnsw" and params.ef_search is not None:
        inner.hnsw.efSearch = int(params.ef_search)
    if family in ("hash", "mih") and params.nflip is not None:
        inner.nflip = int(params.nflip)


def _read_params(inner: Any, family: str) -> IndexParams:
    if family == "ivf":
        return IndexParams(nprobe=int(inner.nprobe))
    if family == "hnsw":
        return IndexParams(ef_search=int(inner.hnsw.efSearch))
    if family in ("hash", "mih"):
        return IndexParams(nflip=int(inner.nflip))
    return IndexParams()


def _wrap(inner: Any, codes: np.ndarray, keys: np.ndarray, progress: Progress) -> Any:
    faiss = _faiss()
    idmap = faiss.IndexBinaryIDMap2(inner)
    _add_batched(idmap, codes, keys, progress)
    return idmap


def _add_batched(idmap: Any, codes: np.ndarray, keys: np.ndarray, progress: Progress) -> None:
    n = codes.shape[0]
    progress.start("index add", total=n)
    try:
        for s in range(0, n, ADD_BATCH):
            idmap.add_with_ids(np.ascontiguousarray(codes[s:s + ADD_BATCH]),
                               np.ascontiguousarray(keys[s:s + ADD_BATCH], dtype=np.int64))
            progress.advance(min(ADD_BATCH, n - s))
    finally:
        progress.finish()


def _rebuild(h: HammingIndex, progress: Progress) -> None:
    """Build a fresh faiss index of the same type over h.codes/h.keys (used after removals).

    IVF keeps its trained coarse quantizer (clone + reset) so removals do not move the cluster centres.
    """
    family, _ = parse_type(h.index_type, h.bits)
    if family == "ivf":
        inner = _faiss().clone_binary_index(h.index.index)
        inner.reset()
        _apply_params(inner, family, h.params)
    else:
        inner = _make_inner(h.index_type, h.bits, h.codes, h.params, progress)
    h.index = _wrap(inner, h.codes, h.keys, progress)
    h._inner = inner


# ----------------------------------------------------------------------------------------------------------
# provenance checks
# ----------------------------------------------------------------------------------------------------------
def _codes_provenance(c: Codes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in PROVENANCE_KEYS:
        v = c.attrs.get(k, "")
        if isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


def _check_compatible(h: HammingIndex, c: Codes, where: str) -> None:
    name = str(c.path) if c.path else "codes"
    if c.bits != h.bits:
        raise MismatchError(f"{name}: codes have {c.bits} bits but {where} holds {h.bits}-bit codes")
    if c.model_sha256 != h.model_sha256:
        raise MismatchError(f"{name}: codes come from model sha256 {c.model_sha256[:12] or '(none)'} but {where} "
                            f"holds codes of model {h.model_sha256[:12] or '(none)'}; Hamming distances across "
                            f"models are meaningless")
    prov = _codes_provenance(c)
    for k in _AGREE_KEYS:
        a, b = prov.get(k, ""), h.provenance.get(k, "")
        if a not in ("", None, "unknown") and b not in ("", None, "unknown") and str(a) != str(b):
            raise MismatchError(f"{name}: codes have {k}={a} but {where} has {k}={b}")


def _source_entry(c: Codes) -> dict[str, Any]:
    sha = artifacts.sha256_file(c.path) if c.path and Path(c.path).exists() else ""
    return {"path": str(c.path) if c.path else "", "sha256": sha, "count": c.n,
            "added": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


# ----------------------------------------------------------------------------------------------------------
# write / open
# ----------------------------------------------------------------------------------------------------------
def _write(h: HammingIndex, path: str | os.PathLike, command: str) -> None:
    faiss = _faiss()
    path = Path(path)
    mpath = meta_path(path)
    prev = _prev_path(path)
    with artifacts.output_lock(path):
        _repair_pair(path, mpath)
        with artifacts.atomic_output(mpath) as mtmp:
            # index temp is renamed first (inner context exits first), then the metadata naming its hash;
            # until the metadata is renamed, index.bin.prev keeps the old index for readers
            with artifacts.atomic_output(path) as itmp:
                faiss.write_index_binary(h.index, str(itmp))
                h.index_sha256 = artifacts.sha256_file(itmp)
                _write_meta(h, mtmp, command)
                if path.exists():
                    try:
                        os.link(path, prev)
                    except OSError as e:
                        raise InputError(f"{path.parent}: cannot write here ({e.strerror or e})") from None
        prev.unlink(missing_ok=True)
    h.path = path


def _write_meta(h: HammingIndex, tmp: Path, command: str) -> None:
    cfg = {"index_type": h.index_type, "bits": h.bits,
           "params": {k: v for k, v in vars(h.params).items() if v is not None}}
    prov = artifacts.provenance(command, config=cfg, inputs={s["path"]: s["sha256"] for s in h.sources})
    with h5py.File(tmp, "w") as f:
        artifacts.set_provenance(f, "index", prov)
        f.attrs["index_type"] = h.index_type
        f.attrs["bits"] = h.bits
        f.attrs["model_sha256"] = h.model_sha256
        for k in PROVENANCE_KEYS:
            v = h.provenance.get(k, "")
            f.attrs[k] = "" if v is None else v
        f.attrs["params"] = json.dumps(vars(h.params))
        f.attrs["next_key"] = int(h.next_key)
        f.attrs["sources"] = json.dumps(h.sources)
        f.attrs["index_sha256"] = h.index_sha256
        f.create_dataset("keys", data=np.asarray(h.keys, dtype=np.int64))
        f.create_dataset("codes", data=np.asarray(h.codes, dtype=np.uint8).reshape(-1, h.bits // 8))
        artifacts._write_ids_paths(f, list(h.ids), list(h.paths))


def open_index(path: str | os.PathLike, params: IndexParams | None = None, retries: int = 20) -> HammingIndex:
    """Open ``index.bin`` and its metadata; verify they belong together. ``params`` override search knobs."""
    faiss = _faiss()
    path = Path(path)
    mpath = meta_path(path)
    if not path.exists():
        raise InputError(f"{path}: no such index file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected an index file from `s5vh index`")
    if not mpath.exists():
        raise ArtifactError(f"{path}: its metadata file {mpath.name} is missing; rebuild with `s5vh index`")
    for attempt in range(retries + 1):
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise InputError(f"{path}: cannot read ({e.strerror or e})") from None
        import hashlib

        sha = hashlib.sha256(raw).hexdigest()
        with artifacts.open_artifact(mpath, "index", required=("keys", "codes")) as f, \
                artifacts.reading(mpath, "index metadata"):
            recorded = artifacts._attr_str(f, "index_sha256")
            prev = _prev_path(path)
            if recorded != sha and prev.exists():
                # a writer is (or was killed) between its two renames: the previous index matches the metadata
                with contextlib.suppress(OSError):
                    old = prev.read_bytes()
                    if hashlib.sha256(old).hexdigest() == recorded:
                        raw, sha = old, recorded
            if recorded != sha:
                if attempt < retries:  # a writer may be between its two renames
                    time.sleep(0.1)
                    continue
                raise ArtifactError(f"{path}: index and metadata out of sync (index sha256 {sha[:12]}, metadata "
                                    f"records {recorded[:12]}); rebuild with `s5vh index`")
            keys = f["keys"][()].astype(np.int64)
            bits = int(f.attrs["bits"])
            codes = f["codes"][()]
            n = keys.shape[0]
            ids = artifacts._read_strings(f, "ids", n)
            paths = artifacts._read_strings(f, "paths", n)
            prov = {}
            for k in PROVENANCE_KEYS:
                v = f.attrs.get(k, "")
                prov[k] = v.decode() if isinstance(v, bytes) else (v.item() if isinstance(v, np.generic) else v)
            stored = artifacts.read_json_attr(f, "params")
            sources = json.loads(artifacts._attr_str(f, "sources", "[]"))
            index_type = artifacts._attr_str(f, "index_type")
            model_sha = artifacts._attr_str(f, "model_sha256")
            next_key = int(f.attrs.get("next_key", n))
        break
    try:
        idx = faiss.deserialize_index_binary(np.frombuffer(raw, dtype=np.uint8))
    except Exception as e:
        raise ArtifactError(f"{path}: not a readable faiss binary index ({artifacts._short(e)})") from None
    if bits <= 0 or bits % 8 or codes.ndim != 2 or codes.dtype != np.uint8:
        raise ArtifactError(f"{mpath}: damaged index metadata (bits {bits}, codes {codes.dtype} {codes.shape})")
    if type(idx).__name__ != "IndexBinaryIDMap2" or idx.d != bits:
        raise ArtifactError(f"{path}: expected an IndexBinaryIDMap2 of {bits}-bit codes, found "
                            f"{type(idx).__name__} d={idx.d}")
    if codes.shape != (n, bits // 8) or idx.ntotal != n:
        raise ArtifactError(f"{path}: index holds {idx.ntotal} codes but its metadata lists {n}")
    try:
        family, _ = parse_type(index_type, bits)
    except InputError:
        raise ArtifactError(f"{mpath}: damaged index metadata (index type {index_type!r})") from None
    inner = faiss.downcast_IndexBinary(idx.index)
    p = IndexParams(**{k: stored.get(k) for k in vars(IndexParams())})
    if params is not None:
        p = IndexParams(**{k: (getattr(params, k) if getattr(params, k) is not None else getattr(p, k))
                           for k in vars(p)})
    _apply_params(inner, family, p)
    p = _read_params(inner, family)
    return HammingIndex(path=path, index=idx, index_type=index_type, bits=bits, keys=keys, ids=ids, paths=paths,
                        codes=codes, model_sha256=model_sha, provenance=prov, params=p, next_key=next_key,
                        sources=sources, index_sha256=sha, _inner=inner)


# ----------------------------------------------------------------------------------------------------------
# build / add / remove
# ----------------------------------------------------------------------------------------------------------
def build_index(codes: Codes | Sequence[Codes], out: str | os.PathLike, index_type: str = "BFlat",
                params: IndexParams | None = None, progress: Progress | None = None) -> HammingIndex:
    """Build ``out`` (+ ``out.meta.h5``) from one or more codes artifacts of the same model."""
    progress = progress or NULL
    parts = [codes] if isinstance(codes, Codes) else list(codes)
    if not parts:
        raise InputError("index: no codes given")
    first = parts[0]
    h = HammingIndex(path=None, index=None, index_type=index_type, bits=first.bits,
                     keys=np.empty(0, np.int64), ids=[], paths=[], codes=np.empty((0, first.bits // 8), np.uint8),
                     model_sha256=first.model_sha256, provenance=_codes_provenance(first),
                     params=params or IndexParams())
    for c in parts[1:]:
        _check_compatible(h, c, f"{first.path}")
    all_codes = np.concatenate([c.codes for c in parts]) if len(parts) > 1 else first.codes
    if all_codes.shape[0] == 0:
        raise InputError(f"{first.path}: holds no codes")
    for out_file in (Path(out), meta_path(out)):
        for c in parts:
            artifacts.check_not_input(out_file, {"codes": c.path})
    family, _ = parse_type(index_type, h.bits, n=all_codes.shape[0])
    h.codes = np.ascontiguousarray(all_codes)
    h.keys = np.arange(all_codes.shape[0], dtype=np.int64)
    h.next_key = int(all_codes.shape[0])
    h.ids = [i for c in parts for i in c.ids]
    h.paths = [p for c in parts for p in c.paths]
    h.sources = [_source_entry(c) for c in parts]
    inner = _make_inner(index_type, h.bits, h.codes, h.params, progress)
    h.index = _wrap(inner, h.codes, h.keys, progress)
    h._inner = inner
    h.params = _read_params(inner, family)
    _write(h, out, "index")
    return h


def add_codes(index_path: str | os.PathLike, codes: Codes, progress: Progress | None = None,
              allow_duplicates: bool = False) -> tuple[HammingIndex, np.ndarray]:
    """Append a codes artifact to an index; returns the index and the new keys."""
    progress = progress or NULL
    with artifacts.output_lock(meta_path(index_path).with_name(Path(index_path).name + ".add")):
        h = open_index(index_path)
        _check_compatible(h, codes, str(index_path))
        entry = _source_entry(codes)
        if not allow_duplicates and entry["sha256"] and any(s.get("sha256") == entry["sha256"] for s in h.sources):
            raise InputError(f"{codes.path}: these codes were already added to {index_path}")
        new_keys = np.arange(h.next_key, h.next_key + codes.n, dtype=np.int64)
        _add_batched(h.index, codes.codes, new_keys, progress)
        h.keys = np.concatenate([h.keys, new_keys])
        h.codes = np.concatenate([h.codes, codes.codes])
        h.ids = h.ids + list(codes.ids)
        h.paths = h.paths + list(codes.paths)
        h.next_key += codes.n
        h.sources.append(entry)
        _write(h, index_path, "index add")
    return h, new_keys


def resolve_keys(h: HammingIndex, keys: Sequence[int] = (), ids: Sequence[str] = (),
                 paths: Sequence[str] = ()) -> np.ndarray:
    """Database keys named by key, string id or path; unknown names raise one error listing them."""
    found: set[int] = set()
    unknown: list[str] = []
    key_set = set(h.keys.tolist())
    for k in keys:
        if int(k) in key_set:
            found.add(int(k))
        else:
            unknown.append(f"key {k}")
    if ids:
        by_id: dict[str, list[int]] = {}
        for k, i in zip(h.keys.tolist(), h.ids, strict=True):
            by_id.setdefault(i, []).append(k)
        for i in ids:
            if i in by_id:
                found.update(by_id[i])
            else:
                unknown.append(f"id {i!r}")
    if paths:
        by_path: dict[str, list[int]] = {}
        for k, p in zip(h.keys.tolist(), h.paths, strict=True):
            by_path.setdefault(p, []).append(k)
            by_path.setdefault(os.path.abspath(p), []).append(k)
        for p in paths:
            hit = by_path.get(p) or by_path.get(os.path.abspath(p))
            if hit:
                found.update(hit)
            else:
                unknown.append(f"path {artifacts.display_path(p)!r}")
    if unknown:
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise InputError(f"{h.path}: not in the index: {', '.join(unknown[:5])}{more}; nothing was removed")
    return np.array(sorted(found), dtype=np.int64)


def remove(index_path: str | os.PathLike, keys: Sequence[int] = (), ids: Sequence[str] = (),
           paths: Sequence[str] = (), progress: Progress | None = None) -> tuple[HammingIndex, np.ndarray]:
    """Remove entries by key, string id or path (all must exist). Keys are never reused."""
    progress = progress or NULL
    with artifacts.output_lock(meta_path(index_path).with_name(Path(index_path).name + ".add")):
        h = open_index(index_path)
        gone = resolve_keys(h, keys, ids, paths)
        if gone.size == 0:
            raise InputError(f"{index_path}: nothing to remove (give --id, --key, --path or --ids-file)")
        keep = ~np.isin(h.keys, gone)
        h.keys = h.keys[keep]
        h.codes = np.ascontiguousarray(h.codes[keep])
        h.ids = [i for i, k in zip(h.ids, keep, strict=True) if k]
        h.paths = [p for p, k in zip(h.paths, keep, strict=True) if k]
        family, _ = parse_type(h.index_type, h.bits)
        if family == "flat":
            h.index.remove_ids(gone)
        elif h.n:
            # HNSW and hash tables cannot delete; IDMap2's removal on IVF would leave the inner ids stale
            _rebuild(h, progress)
        else:
            h.index.reset()
        if h.index.ntotal != h.n:
            raise ArtifactError(f"{index_path}: removal left {h.index.ntotal} codes, expected {h.n}")
        _write(h, index_path, "index remove")
    return h, gone


# ----------------------------------------------------------------------------------------------------------
# search
# ----------------------------------------------------------------------------------------------------------
def _sort_candidates(d: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((k, d))
    return d[order].astype(np.int32), k[order].astype(np.int64)


def search(h: HammingIndex, queries: np.ndarray, k: int,
           exclude: Sequence[set[int]] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Top-``k`` per query as (distances int32, keys int64), ordered by (distance, key).

    faiss's own order among equal distances (and which tied items it keeps at the k-th distance) is not
    specified. On ``BFlat`` candidates are fetched until the k-th distance is strictly below the last one
    fetched (all ties at the boundary are then in hand) and re-sorted, so the result equals a brute-force
    ranking with ties broken by key. Approximate indexes return one candidate set per query, re-sorted the
    same way (growing k there would only re-scan the same probed lists). ``exclude`` holds keys to drop per
    query (e.g. the query itself).
    """
    q = np.ascontiguousarray(queries, dtype=np.uint8)
    if q.ndim != 2 or q.shape[1] * 8 != h.bits:
        raise MismatchError(f"queries are {q.shape[-1] * 8}-bit codes but {h.path} holds {h.bits}-bit codes")
    if k < 1:
        raise InputError(f"--topk must be at least 1, got {k}")
    nq, ntotal = q.shape[0], h.index.ntotal
    results: list[tuple[np.ndarray, np.ndarray]] = [(np.empty(0, np.int32), np.empty(0, np.int64))] * nq
    if ntotal == 0 or nq == 0:
        return results
    excl = list(exclude) if exclude is not None else [set() for _ in range(nq)]
    need = np.array([min(k + len(e), ntotal) for e in excl])
    fetch = np.minimum(ntotal, np.maximum(need + 8, 2 * need)) if h.exact else need
    pending = np.arange(nq)
    while pending.size:
        kk = int(fetch[pending].max())
        dist, lab = h.index.search(q[pending], kk)
        still = []
        for row, qi in enumerate(pending):
            valid = lab[row] >= 0
            d, lb = dist[row][valid], lab[row][valid]
            n_need = int(need[qi])
            truncated = (h.exact and kk < ntotal and d.size == kk and d.size >= n_need
                         and d[-1] == d[n_need - 1])
            if truncated:
                still.append(qi)
                fetch[qi] = min(ntotal, kk * 4)
                continue
            d, lb = _sort_candidates(d, lb)
            if excl[qi]:
                keep = ~np.isin(lb, np.fromiter(excl[qi], dtype=np.int64))
                d, lb = d[keep], lb[keep]
            results[qi] = (d[:k], lb[:k])
        pending = np.array(still, dtype=np.int64)
    return results


def range_search(h: HammingIndex, queries: np.ndarray, radius: int,
                 exclude: Sequence[set[int]] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """All entries within Hamming distance ``radius`` (inclusive) per query, ordered by (distance, key).

    Uses faiss range search where the index has it (faiss's radius is exclusive, hence radius + 1); HNSW has
    none, so its candidates are grown by k-NN search until the farthest exceeds the radius.
    """
    q = np.ascontiguousarray(queries, dtype=np.uint8)
    if q.ndim != 2 or q.shape[1] * 8 != h.bits:
        raise MismatchError(f"queries are {q.shape[-1] * 8}-bit codes but {h.path} holds {h.bits}-bit codes")
    if radius < 0:
        raise InputError(f"--radius must be >= 0, got {radius}")
    nq = q.shape[0]
    excl = list(exclude) if exclude is not None else [set() for _ in range(nq)]
    out: list[tuple[np.ndarray, np.ndarray]] = []
    if h.index.ntotal == 0 or nq == 0:
        return [(np.empty(0, np.int32), np.empty(0, np.int64)) for _ in range(nq)]
    family, _ = parse_type(h.index_type, h.bits)
    if family != "hnsw":
        lims, dist, lab = h.index.range_search(q, int(radius) + 1)
        for i in range(nq):
            d, lb = dist[lims[i]:lims[i + 1]], lab[lims[i]:lims[i + 1]]
            out.append(_sort_candidates(d, lb))
    else:
        ntotal = h.index.ntotal
        for i in range(nq):
            kk = min(ntotal, 64)
            while True:
                d, lb = h.index.search(q[i:i + 1], kk)
                d, lb = d[0][lb[0] >= 0], lb[0][lb[0] >= 0]
                if kk >= ntotal or d.size < kk or d[-1] > radius:
                    break
                kk = min(ntotal, kk * 4)
            m = d <= radius
            out.append(_sort_candidates(d[m], lb[m]))
    if any(excl):
        for i, e in enumerate(excl):
            if e:
                d, lb = out[i]
                keep = ~np.isin(lb, np.fromiter(e, dtype=np.int64))
                out[i] = (d[keep], lb[keep])
    return out


def check_recall(h: HammingIndex, k: int = 20, n_queries: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Recall@k of this index against exact search over ``n_queries`` codes sampled from the index.

    ``recall`` counts a returned item as correct when it is no farther than the exact k-th neighbour (so
    equally near alternatives in a tie are not penalised); ``id_recall`` is the plain overlap of key sets
    with the exact (distance, key) top-k.
    """
    from .codes import rank

    if h.n == 0:
        raise InputError(f"{h.path}: the index is empty; nothing to check")
    rng = np.random.default_rng(seed)
    rows = rng.choice(h.n, size=min(n_queries, h.n), replace=False)
    queries = h.codes[rows]
    t0 = time.perf_counter()
    approx = search(h, queries, k)
    t_approx = time.perf_counter() - t0
    kk = min(k, h.n)
    ex_d, ex_i = rank(queries, h.codes, kk)
    hits = id_hits = 0
    for qi, (d, lb) in enumerate(approx):
        kth = ex_d[qi, -1]
        hits += int(min(kk, (d <= kth).sum()))
        id_hits += len(set(lb.tolist()) & set(h.keys[ex_i[qi]].tolist()))
    total = kk * len(rows)
    return {"k": kk, "queries": int(len(rows)), "recall": hits / total, "id_recall": id_hits / total,
            "seconds": t_approx, "queries_per_s": len(rows) / t_approx if t_approx > 0 else None,
            "type": h.index_type, "params": {k2: v for k2, v in vars(h.params).items() if v is not None}}
