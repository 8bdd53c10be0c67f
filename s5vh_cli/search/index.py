"""Hamming indexes: an entry table (keys, ids, paths, codes, per-video file records) above one backend.

An index is two files written together:

* ``index.bin`` - what the backend keeps locally. For the default ``faiss`` backend it is a plain faiss binary
  index (``faiss.read_index_binary`` opens it): an ``IndexBinaryIDMap2`` whose int64 ids are our keys.
* ``index.bin.meta.h5`` - an artifact of kind ``index``: the key -> (id, path, file records) table, a copy of
  the packed codes (so that every index type can be rebuilt after a removal and checked against exact
  search), the provenance of the codes (bits, model, backbone, sampling, frames), the backend and its options,
  and the sha256 of ``index.bin``.

Every writer (build, add, remove, sync) holds the index's one lock for its whole read-modify-write and replaces
both files under it (the index renamed first, then the metadata); readers hash the index bytes they load and
compare with the metadata, so a mismatched pair is never used.

A backend whose data lives in a server (Milvus) changes the server before the metadata is committed, so the
metadata rename is the commit point there too: keys are handed out above every committed key, searches only
consider keys below the metadata's ``next_key`` (what an unfinished writer added is invisible), and whoever
opens the index while no writer holds the lock puts the server back in line with the metadata (deleting what
a killed writer added, re-inserting what it removed or what a server lost) from the metadata's copy of every
code.

The ranking rule - distance, then key - is applied here, once, above the backends: exact backends return the
same ranking as a brute force whatever their engines' order among ties.

Entries are videos, identified by their absolute path (by their id when they have no path). Adding is
idempotent per video: an entry whose file has the same content (file sha256, else the same code) is skipped;
a changed file replaces its entry under a new key. Keys are assigned in order and never reused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np

from .. import artifacts
from ..artifacts import Codes
from ..errors import ArtifactError, InputError, MismatchError, S5VHError
from ..progress import NULL, Progress
from .backends import IndexBackend, IndexParams, get_backend
from .backends.base import Entries

META_SUFFIX = ".meta.h5"
# Provenance copied from the codes artifact into the index and required to agree when codes are added.
PROVENANCE_KEYS = ("model_path", "backbone", "backbone_sha256", "sampling", "frames", "feature_dim", "method",
                   "descriptor", "descriptor_frames", "segment_seconds", "hop_seconds")
_AGREE_KEYS = ("backbone", "sampling", "frames")
OnExisting = Literal["skip", "replace", "error"]
ON_EXISTING = ("skip", "replace", "error")
_FILE_KEYS = ("file_size", "file_mtime_ns", "file_sha256")

__all__ = ["HammingIndex", "IndexParams", "AddReport", "add_codes", "build_index", "check_recall", "meta_path",
           "open_index", "range_search", "remove", "resolve_keys", "search", "entry_identity", "index_lock", "merge_codes",
           "drop_keys", "write_index", "migrate_index", "verify_index"]


def meta_path(index_path: str | os.PathLike) -> Path:
    p = Path(index_path)
    if not p.name:
        raise InputError(f"{index_path}: is a folder, expected an index file such as index.bin")
    return p.with_name(p.name + META_SUFFIX)


def _prev_path(index_path: Path) -> Path:
    """A hard link to the previous index, kept while the index and its metadata are replaced one after the
    other: a reader (or the next writer) that finds the new index beside the old metadata uses it."""
    return index_path.with_name(index_path.name + ".prev")


_HELD = threading.local()  # .paths: the index locks this thread holds


def _held() -> set[str]:
    if not hasattr(_HELD, "paths"):
        _HELD.paths = set()
    return _HELD.paths


@contextlib.contextmanager
def index_lock(index_path: str | os.PathLike, wait: bool = True) -> Iterator[None]:
    """The one lock every writer of an index holds for its whole read-modify-write.

    With ``wait=False`` a lock held elsewhere raises InputError at once."""
    key = os.path.abspath(index_path)
    with artifacts.output_lock(Path(index_path), wait=wait):
        _held().add(key)
        try:
            yield
        finally:
            _held().discard(key)


def entry_identity(path: str, vid: str) -> str:
    """What makes two entries the same video: the normalised absolute path, else the id. A window row
    (``encode --segment``, id ``<video>#t=<start>,<end>``) is its video's path plus that time fragment."""
    if path:
        frag = vid[vid.rfind("#t="):] if "#t=" in vid else ""
        return "path:" + os.path.normpath(os.path.abspath(path)) + frag
    return "id:" + vid


@dataclass
class HammingIndex:
    """An opened index: the backend plus the key/id/path/record table, codes copy and provenance."""

    path: Path | None
    backend: IndexBackend
    bits: int
    keys: np.ndarray  # int64 [N], ascending in insertion order
    ids: list[str]
    paths: list[str]
    codes: np.ndarray  # uint8 [N, bits/8], row i belongs to keys[i]
    records: dict[str, np.ndarray] = field(default_factory=dict)  # RECORD_FIELDS, each [N]
    model_sha256: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    next_key: int = 0
    sources: list[dict[str, Any]] = field(default_factory=list)
    index_sha256: str = ""
    # second-stage descriptors (encode --descriptor): float16 [N, L] or [N, F, L], row i belongs to keys[i]
    descriptors: np.ndarray | None = None
    # window rows (encode --segment): video_id [N] (list), start [N], end [N] seconds
    segments: dict[str, Any] | None = None
    repaired: dict[str, Any] = field(default_factory=dict)  # what opening put back in line on a server backend

    @property
    def n(self) -> int:
        return int(self.keys.shape[0])

    def entries(self) -> Entries:
        """The whole table as the backends take it."""
        return Entries(self.keys, self.codes, self.ids, self.paths)

    @property
    def descriptor(self) -> str:
        if self.descriptors is None:
            return "none"
        return "soft" if self.descriptors.ndim == 2 else "frames"

    def take(self, rows: np.ndarray) -> None:
        """Keep only ``rows`` of the per-row extras (descriptors, window rows)."""
        if self.descriptors is not None:
            self.descriptors = self.descriptors[rows]
        if self.segments is not None:
            self.segments = _segments_take(self.segments, rows)

    @property
    def index_type(self) -> str:
        return self.backend.index_type

    @property
    def params(self) -> IndexParams:
        return self.backend.params

    @property
    def exact(self) -> bool:
        return self.backend.exact

    def row_of(self) -> dict[int, int]:
        """key -> row; built once per keys array (a server asks on every query, and 1M keys take ~0.3 s)."""
        cached = self.__dict__.get("_row_of")
        if cached is None or cached[0] is not self.keys:
            cached = (self.keys, {k: i for i, k in enumerate(self.keys.tolist())})
            self.__dict__["_row_of"] = cached
        return cached[1]

    def record(self, row: int) -> dict[str, Any]:
        """The file records of one entry, with unknown values left out."""
        out = {}
        for name, arr in self.records.items():
            v = arr[row]
            v = v.decode() if isinstance(v, bytes) else v.item()
            if v not in (-1, "") and not (isinstance(v, float) and np.isnan(v)):
                out[name] = v
        return out

    def info(self) -> dict[str, Any]:
        return {
            "index": artifacts.display_path(str(self.path)) if self.path else None,
            "meta": artifacts.display_path(str(meta_path(self.path))) if self.path else None,
            "backend": self.backend.name, "backend_options": self.backend.options(), "type": self.index_type,
            "exact": self.exact, "bits": self.bits, "count": self.n, "next_key": self.next_key,
            "model_sha256": self.model_sha256,
            **{k: self.provenance.get(k, "") for k in PROVENANCE_KEYS},
            "params": self.params.set_values(),
            "sources": self.sources, "index_sha256": self.index_sha256,
            "index_bytes": self.path.stat().st_size if self.path and self.path.exists() else None,
            **({"repaired": self.repaired} if self.repaired else {}),
        }


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
    _check_extras(h.descriptors, h.segments, c, where)
    for k in ("segment_seconds", "hop_seconds", "descriptor_frames"):
        a, b = prov.get(k, ""), h.provenance.get(k, "")
        if str(a) != str(b):
            raise MismatchError(f"{name}: codes have {k}={a or '(none)'} but {where} has {k}={b or '(none)'}")


def _segments_take(seg: dict[str, Any], rows: np.ndarray) -> dict[str, Any]:
    rows = np.asarray(rows, dtype=np.int64)
    return {"video_id": [seg["video_id"][i] for i in rows.tolist()], "start": np.asarray(seg["start"])[rows],
            "end": np.asarray(seg["end"])[rows]}


def _segments_concat(parts: list[dict[str, Any]]) -> dict[str, Any]:
    return {"video_id": [v for p in parts for v in p["video_id"]],
            "start": np.concatenate([np.asarray(p["start"], np.float64) for p in parts]),
            "end": np.concatenate([np.asarray(p["end"], np.float64) for p in parts])}


def _check_extras(desc: np.ndarray | None, seg: dict[str, Any] | None, c: Codes, where: str) -> None:
    """Codes added to an index must carry the same kind of descriptors and the same kind of rows (whole videos or
    windows) as the index, so that every row can be re-ranked and voted on alike."""
    name = str(c.path) if c.path else "codes"
    have = "none" if desc is None else ("soft" if desc.ndim == 2 else "frames")
    if c.descriptor != have or (desc is not None and c.descriptors is not None
                                and c.descriptors.shape[1:] != desc.shape[1:]):
        shape = "" if c.descriptors is None else f" {tuple(c.descriptors.shape[1:])}"
        want = "" if desc is None else f" {tuple(desc.shape[1:])}"
        raise MismatchError(f"{name}: codes carry descriptors {c.descriptor}{shape} but {where} holds {have}{want}; "
                            "encode them with the same --descriptor and --descriptor-frames")
    if (c.segments is None) != (seg is None):
        raise MismatchError(f"{name}: codes of {'whole videos' if c.segments is None else 'time windows'} cannot "
                            f"join {where}, which holds {'whole videos' if seg is None else 'time windows'}")


def _source_entry(c: Codes, count: int) -> dict[str, Any]:
    sha = artifacts.sha256_file(c.path) if c.path and Path(c.path).exists() else ""
    return {"path": str(Path(c.path).resolve()) if c.path else "", "sha256": sha, "count": count,
            "added": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _records_of(c: Codes) -> dict[str, np.ndarray]:
    """The codes' per-video file records in the index's columns (unknown where the codes lack them)."""
    return artifacts.video_records(c.meta, c.n)


# ----------------------------------------------------------------------------------------------------------
# write / open
# ----------------------------------------------------------------------------------------------------------
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


def write_index(h: HammingIndex, path: str | os.PathLike, command: str) -> None:
    """Replace the index pair; the caller holds ``index_lock(path)``."""
    path = Path(path)
    mpath = meta_path(path)
    prev = _prev_path(path)
    _repair_pair(path, mpath)
    raw = h.backend.to_bytes()
    with artifacts.atomic_output(mpath) as mtmp:
        # index temp is renamed first (inner context exits first), then the metadata naming its hash;
        # until the metadata is renamed, index.bin.prev keeps the old index for readers
        with artifacts.atomic_output(path) as itmp:
            itmp.write_bytes(raw)
            h.index_sha256 = hashlib.sha256(raw).hexdigest()
            _write_meta(h, mtmp, command)
            if path.exists():
                try:
                    os.link(path, prev)
                except OSError as e:
                    raise InputError(f"{path.parent}: cannot write here ({e.strerror or e})") from None
    prev.unlink(missing_ok=True)
    h.path = path


def _write_meta(h: HammingIndex, tmp: Path, command: str) -> None:
    cfg = {"index_type": h.index_type, "bits": h.bits, "backend": h.backend.name, "params": h.params.set_values()}
    prov = artifacts.provenance(command, config=cfg, inputs={s["path"]: s["sha256"] for s in h.sources})
    with h5py.File(tmp, "w") as f:
        artifacts.set_provenance(f, "index", prov)
        f.attrs["index_type"] = h.index_type
        f.attrs["backend"] = h.backend.name
        f.attrs["backend_options"] = json.dumps(h.backend.options())
        f.attrs["bits"] = h.bits
        f.attrs["model_sha256"] = h.model_sha256
        for k in PROVENANCE_KEYS:
            v = h.provenance.get(k, "")
            f.attrs[k] = "" if v is None else v
        f.attrs["params"] = json.dumps(h.params.set_values())
        f.attrs["next_key"] = int(h.next_key)
        f.attrs["sources"] = json.dumps(h.sources)
        f.attrs["index_sha256"] = h.index_sha256
        f.create_dataset("keys", data=np.asarray(h.keys, dtype=np.int64))
        f.create_dataset("codes", data=np.asarray(h.codes, dtype=np.uint8).reshape(-1, h.bits // 8))
        artifacts._write_ids_paths(f, list(h.ids), list(h.paths))
        artifacts.write_records(f, h.records, h.n)
        if h.descriptors is not None:
            f.create_dataset("descriptors", data=np.asarray(h.descriptors, dtype=np.float16))
        if h.segments is not None:
            g = f.create_group("segments")
            g.create_dataset("video_id", data=np.array(list(h.segments["video_id"]), dtype=object),
                             dtype=artifacts.STR)
            g.create_dataset("start", data=np.asarray(h.segments["start"], np.float64))
            g.create_dataset("end", data=np.asarray(h.segments["end"], np.float64))


def _int_attr(f: h5py.File, key: str, where: Path, default: int | None = None) -> int:
    v = f.attrs.get(key, default)
    if isinstance(v, np.ndarray) and v.shape == ():
        v = v.item()
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise ArtifactError(f"{where}: damaged index metadata ({key!r} is {type(v).__name__}, expected an integer)")
    return int(v)


def _stat_id(p: Path) -> tuple[int, int, int] | None:
    """Identifies one version of a file that writers replace by renaming."""
    try:
        st = p.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def open_index(path: str | os.PathLike, params: IndexParams | None = None, retries: int = 20,
               progress: Progress | None = None) -> HammingIndex:
    """Open ``index.bin`` and its metadata; verify they belong together. ``params`` override search knobs.

    A server backend whose contents drifted from the metadata is repaired here when no writer holds the index
    lock (``HammingIndex.repaired`` says what was done); while a writer works, its unfinished changes are left
    to it."""
    for _ in range(retries + 1):
        h = _open_once(Path(path), params, retries, progress or NULL)
        if h is not None:
            return h
    raise ArtifactError(f"{path}: the index kept changing while it was being opened; try again")


def _open_once(path: Path, params: IndexParams | None, retries: int, progress: Progress) -> HammingIndex | None:
    mpath = meta_path(path)
    if not path.exists():
        raise InputError(f"{path}: no such index file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected an index file from `s5vh index`")
    if not mpath.exists():
        kind = _artifact_kind(path)
        if kind:
            raise InputError(f"{path}: is a {kind} file, not an index; build one with `s5vh index CODES -o INDEX`")
        raise ArtifactError(f"{path}: its metadata file {mpath.name} is missing; rebuild with `s5vh index`")
    for attempt in range(retries + 1):
        mstat = _stat_id(mpath)
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise InputError(f"{path}: cannot read ({e.strerror or e})") from None
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
            bits = _int_attr(f, "bits", mpath)
            if bits <= 0 or bits % 8 or bits > 4096:
                raise ArtifactError(f"{mpath}: damaged index metadata (bits {bits})")
            kds, cds = f["keys"], f["codes"]
            if kds.ndim != 1 or kds.dtype.kind not in "iu" or cds.dtype != np.uint8 or cds.shape != (kds.shape[0], bits // 8):
                raise ArtifactError(f"{mpath}: damaged index metadata (keys {kds.dtype} {kds.shape}, codes "
                                    f"{cds.dtype} {cds.shape}, {bits} bits)")
            keys = kds[()].astype(np.int64)
            codes = cds[()]
            n = keys.shape[0]
            ids = artifacts._read_strings(f, "ids", n)
            paths = artifacts._read_strings(f, "paths", n)
            records = artifacts.read_records(f, n)
            prov = {}
            for k in PROVENANCE_KEYS:
                v = f.attrs.get(k, "")
                prov[k] = v.decode() if isinstance(v, bytes) else (v.item() if isinstance(v, np.generic) else v)
            stored = _stored_params(artifacts.read_json_attr(f, "params"), mpath)
            sources = _json_list(artifacts._attr_str(f, "sources", "[]"), "sources", mpath)
            index_type = artifacts._attr_str(f, "index_type")
            backend_name = artifacts._attr_str(f, "backend", "faiss")
            options = artifacts.read_json_attr(f, "backend_options")
            model_sha = artifacts._attr_str(f, "model_sha256")
            next_key = _int_attr(f, "next_key", mpath, default=n)
            descriptors, segments = _read_extras(f, n, mpath)
        break
    try:
        cls = get_backend(backend_name)
    except InputError:
        raise ArtifactError(f"{mpath}: damaged index metadata (backend {backend_name!r})") from None
    try:
        cls.check_type(index_type, bits)
    except InputError:
        raise ArtifactError(f"{mpath}: damaged index metadata (index type {index_type!r})") from None
    # keys are handed out in increasing order and kept in that order, so they must rise strictly
    if n and (keys[0] < 0 or (n > 1 and not bool(np.all(keys[1:] > keys[:-1]))) or next_key <= int(keys[-1])):
        raise ArtifactError(f"{mpath}: damaged index metadata (keys not strictly increasing from 0 or more, or "
                            f"next_key {next_key} is not above the largest key)")
    backend = cls.from_bytes(raw, index_type, bits, IndexParams(), options, str(path))
    try:
        backend.check_params(stored)
    except InputError as e:
        raise ArtifactError(f"{mpath}: damaged index metadata (stored search parameters: {e})") from None
    backend.apply_params(stored)
    table = Entries(keys, codes, ids, paths)
    repaired: dict[str, Any] = {}
    drift = backend.drift(table, next_key)
    if drift:
        outcome = _repair(path, mpath, mstat, backend, table, next_key, progress)
        if outcome is None:
            backend.close()
            return None  # the metadata was replaced meanwhile: open the new pair
        repaired = outcome
    elif backend.ntotal != n:
        raise ArtifactError(f"{path}: index holds {backend.ntotal} codes but its metadata lists {n}")
    problem = backend.check_entries(keys, codes)
    if problem:
        raise ArtifactError(f"{path}: the index file and its metadata disagree ({problem}); rebuild with "
                            "`s5vh index`")
    if params is not None:
        p = backend.params.merged(params)
        backend.check_params(p)
        backend.apply_params(p)
    return HammingIndex(path=path, backend=backend, bits=bits, keys=keys, ids=ids, paths=paths, codes=codes,
                        records=records, model_sha256=model_sha, provenance=prov, next_key=next_key,
                        sources=sources, index_sha256=sha, repaired=repaired, descriptors=descriptors,
                        segments=segments)


def _read_extras(f: h5py.File, n: int, where: Path) -> tuple[np.ndarray | None, dict[str, Any] | None]:
    """Descriptors and window rows of an index's metadata, checked against its row count."""
    desc = seg = None
    if "descriptors" in f:
        d = f["descriptors"]
        if d.ndim not in (2, 3) or d.shape[0] != n or d.dtype.kind != "f":
            raise ArtifactError(f"{where}: damaged index metadata (descriptors {d.dtype} {d.shape} for {n} rows)")
        desc = d[()]
    if "segments" in f:
        g = f["segments"]
        if not all(k in g for k in ("video_id", "start", "end")) or any(g[k].shape != (n,) for k in g):
            raise ArtifactError(f"{where}: damaged index metadata (segments do not hold one row per entry)")
        seg = {"video_id": [str(x) for x in g["video_id"].asstr()[()]], "start": g["start"][()].astype(np.float64),
               "end": g["end"][()].astype(np.float64)}
    return desc, seg


def _repair(path: Path, mpath: Path, mstat: tuple[int, int, int] | None, backend: IndexBackend, table: Entries,
            next_key: int, progress: Progress) -> dict[str, Any] | None:
    """Put a drifted backend back in line with the metadata, under the index lock.

    Returns what was repaired ({} when a writer holds the lock: the difference may be its unfinished work, which
    searches do not see, and it repairs on its own open), or None when the metadata was replaced since it was
    read (the caller opens again)."""
    if os.path.abspath(path) in _held():
        lock: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    else:
        lock = index_lock(path, wait=False)
        try:
            lock.__enter__()
        except InputError:
            return {}
    try:
        if _stat_id(mpath) != mstat:
            return None
        drift = backend.drift(table, next_key)  # again: a writer may have finished or died meanwhile
        if not drift:
            return {}
        progress.log(f"{path}: the {backend.name} backend differs from the metadata "
                     f"({', '.join(f'{k} {v}' for k, v in drift.as_dict().items())}); repairing from the metadata")
        backend.repair(drift, table, next_key, progress)
        if backend.ntotal != table.n or backend.drift(table, next_key):
            raise ArtifactError(f"{path}: the {backend.name} backend still differs from the metadata after repair")
        return drift.as_dict()
    finally:
        if not isinstance(lock, contextlib.nullcontext):
            lock.__exit__(None, None, None)


def _artifact_kind(path: Path) -> str | None:
    """'codes', 'features', 'model'... when ``path`` is some other s5vh file given where an index is expected."""
    with contextlib.suppress(Exception):
        if h5py.is_hdf5(path):
            with h5py.File(path, "r") as f:
                k = f.attrs.get("s5vh_artifact")
                k = k.decode() if isinstance(k, bytes) else k
                return f"{k} (HDF5)" if isinstance(k, str) else "HDF5"
        with open(path, "rb") as fh:
            if fh.read(4) == b"PK\x03\x04":
                return "model (a `s5vh train` checkpoint)"
    return None


def _stored_params(d: dict[str, Any], where: Path) -> IndexParams:
    if not isinstance(d, dict):
        raise ArtifactError(f"{where}: damaged index metadata ('params' is not an object)")
    out = {}
    for k in vars(IndexParams()):
        v = d.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise ArtifactError(f"{where}: damaged index metadata (params.{k} = {v!r})")
        out[k] = v
    return IndexParams(**out)


def _json_list(text: str, key: str, where: Path) -> list[Any]:
    try:
        v = json.loads(text)
    except ValueError:
        v = None
    if not isinstance(v, list):
        raise ArtifactError(f"{where}: damaged index metadata ({key!r} is not a JSON list)")
    return v


# ----------------------------------------------------------------------------------------------------------
# build / add / remove
# ----------------------------------------------------------------------------------------------------------
def _dedupe_rows(ids: list[str], paths: list[str]) -> tuple[np.ndarray, int]:
    """Rows to keep so that each video appears once (the first occurrence), and how many were dropped."""
    seen: set[str] = set()
    keep = []
    for i, (vid, p) in enumerate(zip(ids, paths, strict=True)):
        ident = entry_identity(p, vid)
        if ident not in seen:
            seen.add(ident)
            keep.append(i)
    return np.asarray(keep, dtype=np.int64), len(ids) - len(keep)


def build_index(codes: Codes | Sequence[Codes], out: str | os.PathLike, index_type: str | None = None,
                params: IndexParams | None = None, progress: Progress | None = None, backend: str = "faiss",
                backend_options: dict[str, Any] | None = None) -> HammingIndex:
    """Build ``out`` (+ ``out.meta.h5``) from one or more codes artifacts of the same model.

    ``index_type`` defaults to the backend's exact type (``BFlat`` for faiss, ``BIN_FLAT`` for Milvus).
    A video that appears more than once (same path, or same id without a path) is indexed once.
    """
    progress = progress or NULL
    parts = [codes] if isinstance(codes, Codes) else list(codes)
    if not parts:
        raise InputError("index: no codes given")
    cls = get_backend(backend)
    index_type = index_type or cls.default_type
    first = parts[0]
    for c in parts[1:]:
        if c.bits != first.bits or c.model_sha256 != first.model_sha256:
            raise MismatchError(f"{c.path}: codes from another model or bit length than {first.path}")
    all_codes = np.concatenate([c.codes for c in parts]) if len(parts) > 1 else first.codes
    if all_codes.shape[0] == 0:
        raise InputError(f"{first.path}: holds no codes")
    for out_file in (Path(out), meta_path(out)):
        for c in parts:
            artifacts.check_not_input(out_file, {"codes": c.path})
    ids = [i for c in parts for i in c.ids]
    paths = [p for c in parts for p in c.paths]
    records = artifacts.concat_records([_records_of(c) for c in parts])
    for c in parts[1:]:
        _check_extras(first.descriptors, first.segments, c, str(first.path))
    descriptors = None
    if first.descriptors is not None:
        descriptors = np.concatenate([c.descriptors for c in parts]) if len(parts) > 1 else first.descriptors
    segments = _segments_concat([c.segments for c in parts]) if first.segments is not None else None
    keep, dropped = _dedupe_rows(ids, paths)
    if dropped:
        progress.log(f"{dropped} repeated video(s) in the codes indexed once")
    cls.check_type(index_type, first.bits, n=int(keep.size))
    codes_arr = np.ascontiguousarray(all_codes[keep])
    keys = np.arange(keep.size, dtype=np.int64)
    entries = Entries(keys, codes_arr, [ids[i] for i in keep], [paths[i] for i in keep])
    prov = _codes_provenance(first)
    with index_lock(out):
        be = cls.build(index_type, first.bits, entries, params or IndexParams(), backend_options or {},
                       {"bits": first.bits, "model_sha256": first.model_sha256, **prov}, _previous(out), progress)
        h = HammingIndex(path=None, backend=be, bits=first.bits, keys=keys, ids=list(entries.ids),
                         paths=list(entries.paths), codes=codes_arr,
                         records={k: v[keep] for k, v in records.items()}, model_sha256=first.model_sha256,
                         provenance=prov, next_key=int(keep.size),
                         descriptors=None if descriptors is None else descriptors[keep],
                         segments=None if segments is None else _segments_take(segments, keep))
        for c in parts[1:]:
            _check_compatible(h, c, f"{first.path}")
        h.sources = [_source_entry(c, c.n) for c in parts]
        write_index(h, out, "index")
    return h


def _previous(out: str | os.PathLike) -> bytes | None:
    """The local index file a build is about to replace (None when there is none or it cannot be read)."""
    try:
        p = Path(out)
        return p.read_bytes() if p.is_file() and meta_path(p).is_file() else None
    except OSError:
        return None


def migrate_index(src: str | os.PathLike, out: str | os.PathLike, backend: str, index_type: str | None = None,
                  params: IndexParams | None = None, backend_options: dict[str, Any] | None = None,
                  progress: Progress | None = None) -> HammingIndex:
    """Copy the index ``src`` into ``backend`` at ``out``: the same entries under the same keys, with their
    ids, paths, file records, provenance, sources and ``next_key`` (so keys stay never reused).

    An exact index becomes the target backend's exact type unless ``index_type`` says otherwise; an approximate
    one needs ``index_type``. ``out`` may be ``src`` itself (the index then changes backend in place)."""
    progress = progress or NULL
    cls = get_backend(backend)
    same = os.path.abspath(src) == os.path.abspath(out)
    for p in (Path(out), meta_path(out)):
        if not same and p.resolve() in (Path(src).resolve(), meta_path(src).resolve()):
            raise InputError(f"{out}: would overwrite the source index's files")
    with index_lock(out), (index_lock(src) if not same else contextlib.nullcontext()):
        h = open_index(src, progress=progress)
        if index_type is None:
            if not h.exact:
                raise InputError(f"{src}: is an approximate {h.index_type} index; say which {backend} type to "
                                 f"migrate it to with --type")
            index_type = cls.default_type
        cls.check_type(index_type, h.bits, n=h.n)
        progress.log(f"migrating {h.n} entries from {h.backend.name} {h.index_type} to {backend} {index_type}")
        be = cls.build(index_type, h.bits, h.entries(), params or IndexParams(), backend_options or {},
                       {"bits": h.bits, "model_sha256": h.model_sha256, **h.provenance}, _previous(out), progress)
        new = HammingIndex(path=None, backend=be, bits=h.bits, keys=h.keys, ids=h.ids, paths=h.paths, codes=h.codes,
                           records=h.records, model_sha256=h.model_sha256, provenance=h.provenance,
                           next_key=h.next_key, sources=h.sources)
        write_index(new, out, "index migrate")
        h.backend.close()
    return new


def verify_index(index_path: str | os.PathLike, progress: Progress | None = None) -> dict[str, Any]:
    """Compare every stored key and code with the metadata and repair what differs (under the index lock).

    Returns {"checked": N, "repaired": {...}} (empty when everything agreed). Only server backends can differ;
    a faiss file's keys and (flat) codes are compared on every open."""
    progress = progress or NULL
    with index_lock(index_path):
        h = open_index(index_path, progress=progress)
        table = h.entries()
        drift = h.backend.drift(table, h.next_key, full=True)
        if drift:
            progress.log(f"{index_path}: repairing {', '.join(f'{k} {v}' for k, v in drift.as_dict().items())}")
            h.backend.repair(drift, table, h.next_key, progress)
            if h.backend.ntotal != h.n or h.backend.drift(table, h.next_key, full=True):
                raise ArtifactError(f"{index_path}: the {h.backend.name} backend still differs from the metadata "
                                    "after repair")
        h.backend.close()
        return {"checked": h.n, "repaired": {**h.repaired, **(drift.as_dict() if drift else {})}}


@dataclass
class AddReport:
    """What an add did: new keys, replaced entries (old key -> new key), entries skipped as unchanged."""

    added: np.ndarray
    replaced: dict[int, int] = field(default_factory=dict)
    skipped: int = 0
    repeated: int = 0  # rows of the input naming a video an earlier row already named
    refreshed: int = 0  # skipped entries whose file records (mtime, size, hash) were brought up to date

    @property
    def changed(self) -> bool:
        return bool(self.added.size or self.refreshed)

    def as_dict(self) -> dict[str, Any]:
        return {"added": int(self.added.size - len(self.replaced)), "replaced": len(self.replaced),
                "skipped": self.skipped, "refreshed": self.refreshed, "repeated_in_input": self.repeated,
                "added_keys": [int(k) for k in self.added.tolist()],
                "replaced_keys": {str(k): int(v) for k, v in self.replaced.items()}}


def _same_content(h: HammingIndex, row: int, c: Codes, crow: int, crec: dict[str, np.ndarray]) -> bool:
    a = h.records.get("file_sha256")
    b = crec.get("file_sha256")
    if a is not None and b is not None and a[row] and b[crow]:
        return bool(a[row] == b[crow])
    return bool(np.array_equal(h.codes[row], c.codes[crow]))


def add_codes(index_path: str | os.PathLike, codes: Codes, on_existing: OnExisting = "skip",
              progress: Progress | None = None) -> tuple[HammingIndex, AddReport]:
    """Add a codes artifact to an index, idempotently per video.

    A video already in the index (same absolute path; same id when there is no path) with the same content
    (file sha256 when both sides know it, else the same code) is left alone with ``on_existing="skip"``
    (the default; its file records are refreshed), re-added under a new key with ``"replace"``, and refused
    with ``"error"``. A video whose content changed replaces its entry with ``"skip"`` and ``"replace"``, and
    is refused with ``"error"``. Nothing is written when nothing changes.
    """
    progress = progress or NULL
    if on_existing not in ON_EXISTING:
        raise InputError(f"--on-existing must be one of {', '.join(ON_EXISTING)}, got {on_existing!r}")
    with index_lock(index_path):
        h = open_index(index_path)
        report = merge_codes(h, codes, on_existing, progress)
        if report.changed:
            write_index(h, index_path, "index add")
    return h, report


def merge_codes(h: HammingIndex, codes: Codes, on_existing: OnExisting, progress: Progress) -> AddReport:
    """``add_codes`` in memory: change ``h`` (table and backend); the caller holds the lock and writes."""
    _check_compatible(h, codes, str(h.path))
    crec = _records_of(codes)
    where = {entry_identity(p, i): r for r, (i, p) in enumerate(zip(h.ids, h.paths, strict=True))}
    rows, _ = _dedupe_rows(codes.ids, codes.paths)
    report = AddReport(added=np.empty(0, np.int64), repeated=codes.n - int(rows.size))
    take: list[int] = []
    replace_rows: list[int] = []  # index rows whose entries are replaced
    refresh: list[tuple[int, int]] = []  # (index row, codes row): same content, newer file records
    clashes: list[str] = []
    for r in rows.tolist():
        old = where.get(entry_identity(codes.paths[r], codes.ids[r]))
        if old is None:
            take.append(r)
            continue
        same = _same_content(h, old, codes, r, crec)
        if on_existing == "error":
            clashes.append(artifacts.display_path(codes.paths[r] or codes.ids[r]))
        elif same and on_existing == "skip":
            report.skipped += 1
            if crec["file_sha256"][r] and any(crec[k][r] != h.records[k][old] for k in _FILE_KEYS):
                refresh.append((old, r))
        else:
            take.append(r)
            replace_rows.append(old)
    if clashes:
        more = f" and {len(clashes) - 3} more" if len(clashes) > 3 else ""
        raise InputError(f"{h.path}: already holds {', '.join(clashes[:3])}{more} (--on-existing error); "
                         "nothing was added")
    for old, r in refresh:
        for k in h.records:
            h.records[k][old] = crec[k][r]
    report.refreshed = len(refresh)
    if not take:
        return report
    take_arr = np.asarray(take, dtype=np.int64)
    new_keys = np.arange(h.next_key, h.next_key + take_arr.size, dtype=np.int64)
    old_keys = h.keys[np.asarray(replace_rows, dtype=np.int64)] if replace_rows else np.empty(0, np.int64)
    ident_new = {entry_identity(codes.paths[r], codes.ids[r]): k for r, k in zip(take, new_keys.tolist(), strict=True)}
    for row, okey in zip(replace_rows, old_keys.tolist(), strict=True):
        report.replaced[int(okey)] = ident_new[entry_identity(h.paths[row], h.ids[row])]
    if old_keys.size:
        drop_keys(h, old_keys, progress)
    h.backend.add(Entries(new_keys, np.ascontiguousarray(codes.codes[take_arr]), [codes.ids[r] for r in take],
                          [codes.paths[r] for r in take]), progress)
    h.keys = np.concatenate([h.keys, new_keys])
    h.codes = np.concatenate([h.codes, codes.codes[take_arr]])
    h.ids = h.ids + [codes.ids[r] for r in take]
    h.paths = h.paths + [codes.paths[r] for r in take]
    h.records = artifacts.concat_records([h.records, {k: v[take_arr] for k, v in crec.items()}])
    if h.descriptors is not None:
        h.descriptors = np.concatenate([h.descriptors, codes.descriptors[take_arr]])
    if h.segments is not None:
        h.segments = _segments_concat([h.segments, _segments_take(codes.segments, take_arr)])
    h.next_key += int(take_arr.size)
    h.sources.append(_source_entry(codes, int(take_arr.size)))
    report.added = new_keys
    return report


def drop_keys(h: HammingIndex, gone: np.ndarray, progress: Progress) -> None:
    """Remove ``gone`` keys from the table and the backend (in memory; the caller writes)."""
    keep = ~np.isin(h.keys, gone)
    h.keys = h.keys[keep]
    h.codes = np.ascontiguousarray(h.codes[keep])
    h.ids = [i for i, k in zip(h.ids, keep, strict=True) if k]
    h.paths = [p for p, k in zip(h.paths, keep, strict=True) if k]
    h.records = {k: v[keep] for k, v in h.records.items()}
    h.take(np.nonzero(keep)[0])
    h.backend.remove(gone, h.entries(), progress)
    if h.backend.ntotal != h.n:
        raise ArtifactError(f"{h.path}: removal left {h.backend.ntotal} codes, expected {h.n}")


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
            if p:
                by_path.setdefault(entry_identity(p, ""), []).append(k)
        for p in paths:
            hit = by_path.get(entry_identity(p, ""))
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
    with index_lock(index_path):
        h = open_index(index_path)
        gone = resolve_keys(h, keys, ids, paths)
        if gone.size == 0:
            raise InputError(f"{index_path}: nothing to remove (give --id, --key, --path or --ids-file)")
        drop_keys(h, gone, progress)
        write_index(h, index_path, "index remove")
    return h, gone


# ----------------------------------------------------------------------------------------------------------
# search: the ranking rule, applied once above every backend
# ----------------------------------------------------------------------------------------------------------
def _sort_candidates(d: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((k, d))
    return d[order].astype(np.int32), k[order].astype(np.int64)


def _check_queries(h: HammingIndex, queries: np.ndarray) -> np.ndarray:
    q = np.ascontiguousarray(queries, dtype=np.uint8)
    if q.ndim != 2 or q.shape[1] * 8 != h.bits:
        raise MismatchError(f"queries are {q.shape[-1] * 8}-bit codes but {h.path} holds {h.bits}-bit codes")
    return q


def search(h: HammingIndex, queries: np.ndarray, k: int,
           exclude: Sequence[set[int]] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Top-``k`` per query as (distances int32, keys int64), ordered by (distance, key).

    An engine's own order among equal distances (and which tied items it keeps at the k-th distance) is not
    specified. On exact backends candidates are fetched until the k-th distance is strictly below the last one
    fetched (all ties at the boundary are then in hand) and re-sorted, so the result equals a brute-force
    ranking with ties broken by key. Approximate indexes return one candidate set per query, re-sorted the
    same way (growing k there would only re-scan the same probed lists). ``exclude`` holds keys to drop per
    query (e.g. the query itself).
    """
    q = _check_queries(h, queries)
    if k < 1:
        raise InputError(f"--topk must be at least 1, got {k}")
    be = h.backend
    nq, ntotal = q.shape[0], be.ntotal
    results: list[tuple[np.ndarray, np.ndarray]] = [(np.empty(0, np.int32), np.empty(0, np.int64))] * nq
    if ntotal == 0 or nq == 0:
        return results
    excl = list(exclude) if exclude is not None else [set() for _ in range(nq)]
    need = np.array([min(k + len(e), ntotal) for e in excl])
    cap = min(ntotal, be.max_k) if be.max_k else ntotal  # most candidates one search may return per query
    if int(need.max()) > cap:
        plus = " (counting the results excluded)" if int(need.max()) > k else ""
        raise InputError(f"--topk {k}{plus} is more than the {be.name} backend returns per query ({be.max_k}); "
                         f"ask for fewer")
    fetch = np.minimum(cap, np.maximum(need + 8, 2 * need)) if h.exact else need
    pending = np.arange(nq)
    while pending.size:
        kk = int(fetch[pending].max())
        dist, lab = be.search(q[pending], kk, key_below=h.next_key)
        still = []
        for row, qi in enumerate(pending):
            valid = lab[row] >= 0
            d, lb = dist[row][valid], lab[row][valid]
            n_need = int(need[qi])
            truncated = (h.exact and kk < ntotal and d.size == kk and d.size >= n_need
                         and d[-1] == d[n_need - 1])
            if truncated and kk >= cap:  # the backend's limit is reached inside a tie
                d, lb = _complete_ties(h, q[qi], d, lb, n_need, cap)
            elif truncated:
                still.append(qi)
                fetch[qi] = min(cap, kk * 4)
                continue
            d, lb = _sort_candidates(d, lb)
            if excl[qi]:
                keep = ~np.isin(lb, np.fromiter(excl[qi], dtype=np.int64))
                d, lb = d[keep], lb[keep]
            results[qi] = (d[:k], lb[:k])
        pending = np.array(still, dtype=np.int64)
    return results


def _complete_ties(h: HammingIndex, q1: np.ndarray, d: np.ndarray, lb: np.ndarray, need: int,
                   cap: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``need`` nearest of one query by (distance, key) when an exact backend's per-query limit ``cap`` is
    reached by candidates tied at the boundary distance D = d[need-1] = d[-1].

    Everything nearer than D is among the candidates; the rest are the smallest keys at distance D. Searching
    again among keys below the m-th smallest key seen at D (m = how many are still needed) keeps at least m of
    them in reach, and the bound falls each round until a search ends beyond D or short of the limit: then every
    key under the bound at distance D is in hand."""
    big = int(d[need - 1])
    near_d, near_k = d[d < big], lb[d < big]
    m = need - near_k.size
    at = np.sort(lb[d == big])
    bound = h.next_key
    while True:
        new_bound = int(at[m - 1]) + 1
        if new_bound >= bound:  # only when need == cap: nothing left to narrow
            raise InputError(f"--topk {need} cannot be completed within the {h.backend.name} backend's limit of "
                             f"{cap} results per query ({at.size} entries tie at distance {big}); ask for fewer")
        bound = new_bound
        dd, ll = h.backend.search(q1[None], cap, key_below=bound)
        ok = ll[0] >= 0
        dd, ll = dd[0][ok], ll[0][ok]
        at = np.sort(ll[dd == big])
        if dd.size < cap or int(dd[-1]) > big:
            break
    return (np.concatenate([near_d, np.full(m, big, dtype=near_d.dtype)]),
            np.concatenate([near_k, at[:m]]).astype(np.int64))


def range_search(h: HammingIndex, queries: np.ndarray, radius: int,
                 exclude: Sequence[set[int]] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """All entries within Hamming distance ``radius`` (inclusive) per query, ordered by (distance, key)."""
    q = _check_queries(h, queries)
    if not 0 <= radius <= h.bits:
        raise InputError(f"--radius must be between 0 and {h.bits} (the code length), got {radius}")
    nq = q.shape[0]
    if h.backend.ntotal == 0 or nq == 0:
        return [(np.empty(0, np.int32), np.empty(0, np.int64)) for _ in range(nq)]
    out = [_sort_candidates(d, lb) for d, lb in h.backend.range_search(q, int(radius), key_below=h.next_key)]
    if exclude is not None:
        for i, e in enumerate(exclude):
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
    from ..codes import rank

    if h.n == 0:
        raise InputError(f"{h.path}: the index is empty; nothing to check")
    if k < 1:
        raise InputError(f"-k must be at least 1, got {k}")
    if n_queries < 1:
        raise InputError(f"--queries must be at least 1, got {n_queries}")
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
            "type": h.index_type, "params": h.params.set_values()}
