"""`s5vh eval`: retrieval quality of codes against class labels, with the SSVH protocols.

Queries are processed in chunks, so all-vs-all on FCVID (45,600 x 45,600) never holds an N x N matrix:
each chunk computes its Hamming distances, ranks them by (distance, database row) and reduces them to
per-query numbers and per-radius counts before the next chunk starts.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import artifacts
from .codes import full_ranking, hamming, topk_from_distances
from .errors import ArtifactError, InputError, MismatchError
from .metrics import (
    DEFAULT_KS,
    PRAccumulator,
    ap_at_k,
    average_precision,
    precision_at_k,
    ranked_relevance,
    recall_at_k,
    relevance,
)
from .progress import NULL, Progress

# Protocol presets: which label keys the public .mat files use and whether the database is the query set.
PROTOCOLS: dict[str, dict[str, Any]] = {
    "custom": {"query_key": None, "db_key": None, "same": None,
               "doc": "database = --database if given, else the query set itself (self included)"},
    "fcv": {"query_key": "labels", "db_key": "labels", "same": True,
            "doc": "FCVID: all test videos are both queries and database, each query's own copy included"},
    "ucf": {"query_key": "labels", "db_key": "labels", "same": False,
            "doc": "UCF101: queries = test split, database = training split (--database)"},
    "hmdb": {"query_key": "labels", "db_key": "labels", "same": False,
             "doc": "HMDB51: queries = test split, database = training split (--database)"},
    "act": {"query_key": "q_label", "db_key": "re_label", "same": False,
            "doc": "ActivityNet: queries = query_feats (q_label), database = test_feats (re_label)"},
}
LABEL_KEYS = ("labels", "re_label", "q_label", "label")


# ----------------------------------------------------------------------------------------------------------
# labels
# ----------------------------------------------------------------------------------------------------------
# Class indices above this are not class numbers but damage (or another kind of array). Real label sets have
# at most a few thousand classes; the limit only keeps the numbers sane, nothing is allocated per class.
MAX_CLASS_INDEX = 2**31 - 1
# A one-hot matrix built from class indices (load_labels) may not exceed this many cells.
MAX_ONE_HOT_CELLS = 1 << 28


def read_labels(path: str | os.PathLike, n: int | None = None, key: str | None = None) -> np.ndarray:
    """Labels from HDF5 (dataset ``labels``) or a MATLAB .mat file (v5 via scipy, v7.3 via h5py), as stored:

    class indices int64 [N] (one class per video) or a 0/1 matrix uint8 [N, C] (multi-hot). ``key`` picks the
    variable (else ``labels``, ``re_label``, ``q_label``, ``label``, or the only 2-D array). ``n`` (number of
    videos) fixes MATLAB's transposed layout and is checked. Only the chosen array is read, after the file's
    storage is checked (artifacts.check_stored_here); anything that is not a label array (an s5vh artifact,
    non-integer or negative class indices, a matrix with values other than 0 and 1) is refused in one line.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such labels file")
    if not p.is_file():
        raise InputError(f"{p}: not a regular file, expected a labels file (HDF5 or .mat)")
    try:
        is_h5 = h5py.is_hdf5(p)
    except OSError as e:
        raise InputError(f"{p}: cannot read ({e.strerror or e})") from None
    with artifacts.reading(p, "labels"):
        if is_h5:
            lab, key = _read_h5_labels(p, key)
        else:
            lab, key = _read_mat_labels(p, key)
        return _check_labels(p, key, lab, n)


def _pick_key(p: Path, shapes: dict[str, tuple[int, ...]], key: str | None) -> str:
    if key is not None:
        if key not in shapes:
            raise InputError(f"{p}: no label array {key!r} (found: {', '.join(sorted(shapes)) or 'none'})")
        return key
    found = next((k for k in LABEL_KEYS if k in shapes), None)
    if found is not None:
        return found
    two_d = [k for k, v in shapes.items() if len(v) == 2]
    if len(two_d) != 1:
        raise InputError(f"{p}: cannot tell which array holds the labels (found: "
                         f"{', '.join(sorted(shapes)) or 'none'}); name it with the key option")
    return two_d[0]


def _read_h5_labels(p: Path, key: str | None) -> tuple[np.ndarray, str]:
    try:
        f = h5py.File(p, "r")
    except OSError as e:
        raise ArtifactError(f"{p}: damaged HDF5/.mat file ({artifacts._short(e)})") from None
    with f:
        artifacts.check_stored_here(f, p)  # before any data is read
        kind = f.attrs.get("s5vh_artifact")
        if isinstance(kind, bytes):
            kind = kind.decode(errors="replace")
        if isinstance(kind, str) and kind in artifacts.KINDS:
            raise InputError(f"{p}: a {kind} file from {artifacts._PRODUCED_BY[kind]}, not a labels file")
        shapes = {name: obj.shape for name, obj in f.items()
                  if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "biuf" and obj.ndim in (1, 2)}
        key = _pick_key(p, shapes, key)
        return np.asarray(f[key][()]), key


def _read_mat_labels(p: Path, key: str | None) -> tuple[np.ndarray, str]:
    try:
        import scipy.io

        info = scipy.io.whosmat(str(p))
    except Exception as e:
        raise ArtifactError(f"{p}: not a readable .mat or HDF5 labels file ({artifacts._short(e)})") from None
    size = p.stat().st_size
    shapes = {}
    for name, shape, cls in info:
        if cls in ("double", "single", "logical", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64",
                   "uint64") and len(shape) <= 2:
            cells = int(np.prod([int(s) for s in shape], dtype=object))
            # a .mat variable is at most deflate-compressed (about 1030:1) and at least one byte a cell
            if cells > artifacts.MAX_EXPANSION * size:
                raise ArtifactError(f"{p}: '{name}' declares {'x'.join(map(str, shape))} values, more than a "
                                    f"{size:,}-byte file can hold; refused")
            shapes[name] = tuple(int(s) for s in shape)
    key = _pick_key(p, shapes, key)
    try:
        raw = scipy.io.loadmat(str(p), variable_names=[key])
    except Exception as e:
        raise ArtifactError(f"{p}: not a readable .mat or HDF5 labels file ({artifacts._short(e)})") from None
    return np.asarray(raw[key]), key


def _check_labels(p: Path, key: str, lab: np.ndarray, n: int | None) -> np.ndarray:
    if lab.dtype.kind not in "biuf" or lab.ndim not in (1, 2):
        raise ArtifactError(f"{p}: '{key}' has shape {lab.shape} / dtype {lab.dtype}; expected class indices [N] "
                            "or a 0/1 label matrix [N, C]")
    if lab.ndim == 2 and 1 in lab.shape and n is not None and lab.size == n and lab.shape != (n, n):
        lab = lab.reshape(-1)
    if lab.ndim == 1:
        if lab.dtype.kind == "f":
            if not np.isfinite(lab).all():
                raise ArtifactError(f"{p}: '{key}' holds NaN or infinite values; expected class indices")
            if not np.all(lab == np.round(lab)):
                raise ArtifactError(f"{p}: '{key}' is a 1-D array of non-integers; expected class indices")
        if lab.size and lab.min() < 0:
            raise ArtifactError(f"{p}: '{key}' holds negative class indices")
        if lab.size and lab.max() > MAX_CLASS_INDEX:
            raise ArtifactError(f"{p}: '{key}' holds class index {lab.max():.0f}, above {MAX_CLASS_INDEX}; not a "
                                "class number (damaged file, or not a labels array)")
        lab = lab.astype(np.int64)
        if n is not None and lab.shape[0] != n:
            raise MismatchError(f"{p}: '{key}' has {lab.shape[0]} class indices but there are {n} videos")
        return lab
    if 0 in lab.shape:
        raise ArtifactError(f"{p}: '{key}' has shape {lab.shape}: no videos or no classes")
    if lab.dtype.kind == "f" and not np.isfinite(lab).all():
        raise ArtifactError(f"{p}: '{key}' holds NaN or infinite values; expected a 0/1 label matrix")
    if lab.dtype != np.bool_ and not np.isin(lab, (0, 1)).all():
        raise ArtifactError(f"{p}: '{key}' holds values other than 0 and 1; a label matrix marks each class "
                            "with 0 or 1 (is this a labels file?)")
    lab = lab.astype(np.uint8)
    if n is not None and lab.shape[0] != n:
        if lab.shape[1] == n:  # MATLAB v7.3 (HDF5) stores the transpose
            lab = lab.T
        else:
            raise MismatchError(f"{p}: '{key}' has {lab.shape[0]} rows but there are {n} videos")
    return np.ascontiguousarray(lab)


def one_hot(classes: np.ndarray, n_classes: int | None = None) -> np.ndarray:
    """uint8 [N, C] one-hot matrix of class indices [N] (C = the largest index + 1 unless given)."""
    cls = np.asarray(classes, dtype=np.int64)
    c = int(cls.max(initial=-1)) + 1 if n_classes is None else int(n_classes)
    if cls.size * max(c, 1) > MAX_ONE_HOT_CELLS:
        raise InputError(f"a one-hot matrix of {cls.size} videos x {c} classes is too large; keep the labels as "
                         "class indices")
    out = np.zeros((cls.size, c), dtype=np.uint8)
    out[np.arange(cls.size), cls] = 1
    return out


def load_labels(path: str | os.PathLike, n: int | None = None, key: str | None = None) -> np.ndarray:
    """Label matrix [N, C] (uint8 0/1): ``read_labels`` with class indices turned into one-hot rows."""
    lab = read_labels(path, n=n, key=key)
    if lab.ndim == 1:
        with artifacts.reading(path, "labels"):
            return one_hot(lab)
    return lab


# ----------------------------------------------------------------------------------------------------------
# the core loop
# ----------------------------------------------------------------------------------------------------------
def evaluate(query_codes: np.ndarray, query_labels: np.ndarray, db_codes: np.ndarray, db_labels: np.ndarray,
             bits: int, ks: tuple[int, ...] = DEFAULT_KS, full_map: bool = True, pr: bool = True,
             chunk: int | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """mAP@K (SSVH), P@K, R@K, mAP and the PR curve over Hamming radii, chunked over queries."""
    progress = progress or NULL
    nq, n = query_codes.shape[0], db_codes.shape[0]
    if nq == 0 or n == 0:
        raise InputError("evaluation needs at least one query and one database item")
    query_labels, db_labels = np.asarray(query_labels), np.asarray(db_labels)
    if query_labels.shape[0] != nq or db_labels.shape[0] != n:
        raise MismatchError(f"labels rows ({query_labels.shape[0]}, {db_labels.shape[0]}) do not match the codes "
                            f"({nq} queries, {n} database items)")
    query_labels, db_labels = _comparable(query_labels, db_labels)
    ks = tuple(sorted(set(int(k) for k in ks)))
    if not ks or ks[0] < 1:
        raise InputError(f"K values must be positive, got {ks}")
    notes = []
    beyond = [k for k in ks if k > n]
    if beyond:
        notes.append(f"K = {', '.join(map(str, beyond))} exceeds the {n}-item database: those rankings hold only "
                     f"{n} items, and mAP@K (normalised by K) cannot reach 1 there")
    kmax = min(ks[-1], n)
    chunk = chunk or max(1, min(1024, 4_000_000 // n))
    ap_k = {k: np.zeros(nq) for k in ks}
    p_k = {k: np.zeros(nq) for k in ks}
    r_k = {k: np.zeros(nq) for k in ks}
    ap_full = np.zeros(nq)
    n_rel = np.zeros(nq, dtype=np.int64)
    acc = PRAccumulator(bits) if pr else None
    progress.start("evaluate", total=nq)
    t0 = time.perf_counter()
    try:
        for s in range(0, nq, chunk):
            e = min(nq, s + chunk)
            dist = hamming(query_codes[s:e], db_codes)
            rel = relevance(query_labels[s:e], db_labels)
            n_rel[s:e] = rel.sum(axis=1)
            if full_map:
                order = full_ranking(dist)
                rr = ranked_relevance(rel, order)
                ap_full[s:e] = average_precision(rr)
            else:
                _, top = topk_from_distances(dist, kmax)
                rr = ranked_relevance(rel, top)
            for k in ks:
                ap_k[k][s:e] = ap_at_k(rr, k)
                p_k[k][s:e] = precision_at_k(rr, k)
                r_k[k][s:e] = recall_at_k(rr, k, n_rel[s:e])
            if acc is not None:
                acc.update(dist, rel)
            progress.advance(e - s)
    finally:
        progress.finish()

    def mean(x: np.ndarray) -> float | None:
        x = x[np.isfinite(x)]
        return float(x.mean()) if x.size else None

    out: dict[str, Any] = {
        "n_query": int(nq), "n_database": int(n), "bits": int(bits), "ks": list(ks),
        "tie_rule": "Hamming distance ascending, then database row ascending",
        "map_at_k": {str(k): float(ap_k[k].mean()) for k in ks},
        "precision_at_k": {str(k): float(p_k[k].mean()) for k in ks},
        "recall_at_k": {str(k): mean(r_k[k]) for k in ks},
        "map": float(ap_full.mean()) if full_map else None,
        "queries_without_relevant": int((n_rel == 0).sum()),
        "k_beyond_database": beyond,
        "notes": notes,
        "seconds": time.perf_counter() - t0,
    }
    if acc is not None:
        out["pr_curve"] = acc.result()
    return out


def _comparable(ql: np.ndarray, dl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Query and database labels in one form: both class indices [N] when each video has exactly one class,
    else two 0/1 matrices with the same classes."""
    from .metrics import _single_label

    for lab in (ql, dl):
        if lab.ndim not in (1, 2):
            raise MismatchError(f"labels must be class indices [N] or a 0/1 matrix [N, C], got shape {lab.shape}")
    if ql.ndim == 2 and dl.ndim == 2 and ql.shape[1] != dl.shape[1]:
        raise MismatchError(f"query labels have {ql.shape[1]} classes but database labels have {dl.shape[1]}")
    sq = ql if ql.ndim == 1 else _single_label(ql)
    sd = dl if dl.ndim == 1 else _single_label(dl)
    if sq is not None and sd is not None:
        return sq, sd
    c = ql.shape[1] if ql.ndim == 2 else dl.shape[1]
    for lab, what in ((ql, "query"), (dl, "database")):
        if lab.ndim == 1 and lab.size and lab.max() >= c:
            raise MismatchError(f"{what} labels hold class {lab.max()} but the other labels have {c} classes")
    return (ql if ql.ndim == 2 else one_hot(ql, c)), (dl if dl.ndim == 2 else one_hot(dl, c))


# ----------------------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------------------
@dataclass
class CodeSet:
    path: str
    codes: np.ndarray
    bits: int
    model_sha256: str
    ids: list[str]


def _kind(path: str) -> str:
    if not Path(path).is_file():
        raise InputError(f"{path}: no such file")
    kind = artifacts.h5_kind(path)
    if kind is None:
        raise InputError(f"{path}: not an HDF5 codes or features file")
    if kind == "":  # damaged, or not an s5vh artifact: the codes reader says which, in one line
        artifacts.open_artifact(path, "codes").close()
    if kind not in ("codes", "features"):
        what = f"a {kind} file" if kind else "an HDF5 file that is not an s5vh artifact"
        raise InputError(f"{path}: {what}; eval takes a codes file, or a features file with --model")
    return kind


def load_code_set(path: str, model: str | None = None, device: str = "auto", ssm_backend: str = "auto",
                  batch_size: int = 256, progress: Progress | None = None, _cache: dict | None = None) -> CodeSet:
    """Codes of a codes file, or of a features file encoded with ``model``."""
    kind = _kind(path)
    if kind == "codes":
        c = artifacts.read_codes(path)
        return CodeSet(path=path, codes=c.codes, bits=c.bits, model_sha256=c.model_sha256, ids=c.ids)
    if model is None:
        raise InputError(f"{path}: a features file; pass --model to encode it (or give a codes file)")
    from .checkpoint import load_model
    from .device import resolve_device
    from .encode import encode_array

    f = artifacts.read_features(path)  # before the model: a bad features file is refused before any model work
    cache = _cache if _cache is not None else {}
    if "model" not in cache:
        dev = resolve_device(device)
        m, _ = load_model(model, device="cpu")
        if m.cfg.encoder == "mamba":
            from .ssm import resolve_backend

            backend, _why = resolve_backend(ssm_backend, dev)
            m.set_backend(backend)
        cache.update(model=m.to(dev), dev=dev, sha=artifacts.sha256_file(model))
    codes = encode_array(cache["model"], f.feats, batch_size=batch_size, device=cache["dev"], progress=progress)
    return CodeSet(path=path, codes=codes, bits=cache["model"].cfg.bits, model_sha256=cache["sha"], ids=f.ids)


def evaluate_files(query: str, labels: str, database: str | None = None, db_labels: str | None = None,
                   protocol: str = "custom", labels_key: str | None = None, db_labels_key: str | None = None,
                   model: str | None = None, ks: tuple[int, ...] = DEFAULT_KS, full_map: bool = True,
                   pr: bool = True, device: str = "auto", ssm_backend: str = "auto", batch_size: int = 256,
                   progress: Progress | None = None) -> tuple[dict[str, Any], CodeSet, np.ndarray]:
    """Evaluate per a protocol preset; returns (results, query codes, query labels) for plotting."""
    progress = progress or NULL
    if protocol not in PROTOCOLS:
        raise InputError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    preset = PROTOCOLS[protocol]
    same = preset["same"]
    if same is True and database is not None and os.path.realpath(database) != os.path.realpath(query):
        raise InputError(f"--protocol {protocol} uses the query set as the database; drop --database")
    if same is False and database is None:
        raise InputError(f"--protocol {protocol} needs --database ({preset['doc']})")
    if same is None:
        same = database is None or os.path.realpath(database) == os.path.realpath(query)
    cache: dict = {}
    q = load_code_set(query, model, device, ssm_backend, batch_size, progress, cache)
    ql = read_labels(labels, n=q.codes.shape[0], key=labels_key or preset["query_key"])
    if same:
        d, dl = q, ql
        if db_labels is not None and os.path.realpath(db_labels) != os.path.realpath(labels):
            raise InputError("the database is the query set, so --db-labels must be omitted")
    else:
        d = load_code_set(database, model, device, ssm_backend, batch_size, progress, cache)
        if d.bits != q.bits:
            raise MismatchError(f"{database}: {d.bits}-bit codes but {query} holds {q.bits}-bit codes")
        if d.model_sha256 != q.model_sha256:
            raise MismatchError(f"{database}: codes from model {d.model_sha256[:12] or '(none)'} but {query} "
                                f"holds codes of model {q.model_sha256[:12] or '(none)'}")
        if db_labels is None:
            raise InputError("a separate database needs --db-labels")
        dl = read_labels(db_labels, n=d.codes.shape[0], key=db_labels_key or preset["db_key"])
    res = evaluate(q.codes, ql, d.codes, dl, q.bits, ks=ks, full_map=full_map, pr=pr, progress=progress)
    res = {"protocol": protocol, "query": query, "database": database if not same else query,
           "self_included": bool(same), "model_sha256": q.model_sha256, **res}
    return res, q, ql
