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
def load_labels(path: str | os.PathLike, n: int | None = None, key: str | None = None) -> np.ndarray:
    """Label matrix [N, C] from HDF5 (dataset ``labels``) or a MATLAB .mat file (v5 via scipy, v7.3 via h5py).

    ``key`` picks the variable (else ``labels``, ``re_label``, ``q_label``, or the only 2-D array). A 1-D
    vector of class indices becomes one-hot. ``n`` (number of videos) fixes MATLAB's transposed layout.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such labels file")
    arrays: dict[str, np.ndarray] = {}
    if h5py.is_hdf5(p):
        try:
            with h5py.File(p, "r") as f:
                for name, obj in f.items():
                    if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "biuf" and obj.ndim in (1, 2):
                        arrays[name] = obj[()]
        except OSError as e:
            raise ArtifactError(f"{p}: damaged HDF5/.mat file ({artifacts._short(e)})") from None
    else:
        try:
            import scipy.io

            raw = scipy.io.loadmat(str(p))
        except Exception as e:
            raise ArtifactError(f"{p}: not a readable .mat or HDF5 labels file ({artifacts._short(e)})") from None
        arrays = {k: np.asarray(v) for k, v in raw.items()
                  if not k.startswith("__") and isinstance(v, np.ndarray) and v.dtype.kind in "biuf" and v.ndim <= 2}
    if key is not None and key not in arrays:
        raise InputError(f"{p}: no label array {key!r} (found: {', '.join(sorted(arrays)) or 'none'})")
    if key is None:
        key = next((k for k in LABEL_KEYS if k in arrays), None)
        if key is None:
            two_d = [k for k, v in arrays.items() if v.ndim == 2]
            if len(two_d) != 1:
                raise InputError(f"{p}: cannot tell which array holds the labels (found: "
                                 f"{', '.join(sorted(arrays)) or 'none'}); name it with the key option")
            key = two_d[0]
    lab = np.asarray(arrays[key])
    if lab.ndim == 2 and 1 in lab.shape and n is not None and lab.size == n and lab.shape != (n, n):
        lab = lab.reshape(-1)
    if lab.ndim == 1:
        if lab.dtype.kind == "f" and not np.all(lab == np.round(lab)):
            raise ArtifactError(f"{p}: '{key}' is a 1-D array of non-integers; expected class indices")
        cls = lab.astype(np.int64)
        if cls.size and cls.min() < 0:
            raise ArtifactError(f"{p}: '{key}' holds negative class indices")
        one_hot = np.zeros((cls.size, int(cls.max(initial=0)) + 1), dtype=np.uint8)
        one_hot[np.arange(cls.size), cls] = 1
        lab = one_hot
    if n is not None and lab.shape[0] != n:
        if lab.shape[1] == n:  # MATLAB v7.3 (HDF5) stores the transpose
            lab = lab.T
        else:
            raise MismatchError(f"{p}: '{key}' has {lab.shape[0]} rows but there are {n} videos")
    return np.ascontiguousarray(lab)


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
    if query_labels.shape[0] != nq or db_labels.shape[0] != n:
        raise MismatchError(f"labels rows ({query_labels.shape[0]}, {db_labels.shape[0]}) do not match the codes "
                            f"({nq} queries, {n} database items)")
    if query_labels.shape[1] != db_labels.shape[1]:
        raise MismatchError(f"query labels have {query_labels.shape[1]} classes but database labels have "
                            f"{db_labels.shape[1]}")
    ks = tuple(sorted(set(int(k) for k in ks)))
    if not ks or ks[0] < 1:
        raise InputError(f"K values must be positive, got {ks}")
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
        "seconds": time.perf_counter() - t0,
    }
    if acc is not None:
        out["pr_curve"] = acc.result()
    return out


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
    from .search.query import _h5_kind

    if not Path(path).is_file():
        raise InputError(f"{path}: no such file")
    kind = _h5_kind(path)
    if kind is None:
        raise InputError(f"{path}: not an HDF5 codes or features file")
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

    cache = _cache if _cache is not None else {}
    if "model" not in cache:
        dev = resolve_device(device)
        m, _ = load_model(model, device="cpu")
        if m.cfg.encoder == "mamba":
            from .ssm import resolve_backend

            backend, _why = resolve_backend(ssm_backend, dev)
            m.set_backend(backend)
        cache.update(model=m.to(dev), dev=dev, sha=artifacts.sha256_file(model))
    f = artifacts.read_features(path)
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
    ql = load_labels(labels, n=q.codes.shape[0], key=labels_key or preset["query_key"])
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
        dl = load_labels(db_labels, n=d.codes.shape[0], key=db_labels_key or preset["db_key"])
    res = evaluate(q.codes, ql, d.codes, dl, q.bits, ks=ks, full_map=full_map, pr=pr, progress=progress)
    res = {"protocol": protocol, "query": query, "database": database if not same else query,
           "self_included": bool(same), "model_sha256": q.model_sha256, **res}
    return res, q, ql
