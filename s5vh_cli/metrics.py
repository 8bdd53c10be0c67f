"""Retrieval metrics on ranked relevance, with the conventions of the self-supervised video hashing papers.

Relevance: a database item is relevant to a query when they share at least one label (multi-hot dot product
> 0). Rankings come from ``codes.full_ranking`` / ``codes.topk_from_distances``: Hamming distance ascending,
then database row ascending.

``map_at_k`` is the SSVH-lineage "mAP@K" (SSVH, BTH, ConMH, S5VH all compute it the same way):

    AP@K(q) = (1/K) * sum_{r=1..K} rel_r * P@r,    P@r = (sum_{s<=r} rel_s) / r

normalised by K, not by the number of relevant items retrieved, so it equals 1 only when all of the top K are
relevant and it falls as K grows. Queries with no relevant item count as 0. ``mean_ap`` is the usual mAP over
the full ranking (normalised by the number of relevant items in the database; queries with none count as 0).
"""

from __future__ import annotations

import numpy as np

DEFAULT_KS = (5, 20, 40, 60, 80, 100)


def relevance(query_labels: np.ndarray, db_labels: np.ndarray) -> np.ndarray:
    """bool [Q, N]: query and database item share at least one label.

    Labels are either class indices [N] (one class per video) or 0/1 matrices [N, C] (multi-hot). No dense
    float copy is made: single labels compare class ids, multi-hot ones go through a sparse product.
    """
    ql = np.asarray(query_labels)
    dl = np.asarray(db_labels)
    single_q = ql if ql.ndim == 1 else _single_label(ql)
    single_d = dl if dl.ndim == 1 else _single_label(dl)
    if single_q is not None and single_d is not None:  # one class each: compare class ids (much cheaper)
        return single_q[:, None] == single_d[None, :]
    c = max(_n_classes(ql), _n_classes(dl))
    return np.asarray((sparse_labels(ql, c) @ sparse_labels(dl, c).T).toarray() > 0)


def _n_classes(labels: np.ndarray) -> int:
    if labels.ndim == 2:
        return int(labels.shape[1])
    return int(labels.max(initial=-1)) + 1


def sparse_labels(labels: np.ndarray, n_classes: int | None = None):  # noqa: ANN201 - scipy.sparse.csr_matrix
    """CSR 0/1 matrix [N, C] of class indices [N] or of a multi-hot matrix [N, C] (nonzero = has the label)."""
    from scipy import sparse

    labels = np.asarray(labels)
    if labels.ndim == 1:
        n = labels.shape[0]
        c = n_classes if n_classes is not None else _n_classes(labels)
        return sparse.csr_matrix((np.ones(n, np.int32), (np.arange(n), labels.astype(np.int64))), shape=(n, c))
    rows, cols = np.nonzero(labels)
    c = max(labels.shape[1], n_classes or 0)
    return sparse.csr_matrix((np.ones(rows.size, np.int32), (rows, cols)), shape=(labels.shape[0], c))


def _single_label(labels: np.ndarray) -> np.ndarray | None:
    if labels.ndim != 2 or labels.shape[0] == 0:
        return None
    nz = labels != 0
    if not (nz.sum(axis=1) == 1).all():
        return None
    return nz.argmax(axis=1)


def ranked_relevance(rel: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Relevance reordered by a ranking: rel[q, order[q, r]]."""
    return np.take_along_axis(np.asarray(rel, dtype=bool), order, axis=1)


def ap_at_k(rel_ranked: np.ndarray, k: int) -> np.ndarray:
    """Per-query SSVH AP@K (normalised by K) from ranked relevance [Q, >=K]."""
    r = np.asarray(rel_ranked, dtype=bool)[:, :k].astype(np.float64)
    hits = np.cumsum(r, axis=1)
    ranks = np.arange(1, r.shape[1] + 1, dtype=np.float64)
    return (r * hits / ranks).sum(axis=1) / k


def map_at_k(rel_ranked: np.ndarray, k: int) -> float:
    """SSVH mAP@K: mean over queries of ``ap_at_k``."""
    return float(ap_at_k(rel_ranked, k).mean())


def precision_at_k(rel_ranked: np.ndarray, k: int) -> np.ndarray:
    """Per-query share of relevant items among the top K (K larger than the database counts as the database)."""
    r = np.asarray(rel_ranked, dtype=bool)[:, :k]
    return r.sum(axis=1) / max(1, min(k, r.shape[1]))


def recall_at_k(rel_ranked: np.ndarray, k: int, n_relevant: np.ndarray) -> np.ndarray:
    """Per-query share of all relevant database items found in the top K; NaN for queries with none."""
    found = np.asarray(rel_ranked, dtype=bool)[:, :k].sum(axis=1).astype(np.float64)
    n_rel = np.asarray(n_relevant, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_rel > 0, found / np.maximum(n_rel, 1), np.nan)


def average_precision(rel_ranked_full: np.ndarray) -> np.ndarray:
    """Per-query AP over a full ranking: mean of P@r at each relevant rank r (0 when nothing is relevant).

    The m-th relevant item at rank r contributes m / r, so only the relevant positions are visited.
    """
    r = np.asarray(rel_ranked_full, dtype=bool)
    q = r.shape[0]
    rows, cols = np.nonzero(r)  # row-major: grouped by query, ranks ascending
    counts = np.bincount(rows, minlength=q)
    starts = np.cumsum(counts) - counts
    m = np.arange(rows.size, dtype=np.float64) - starts[rows] + 1
    s = np.bincount(rows, weights=m / (cols + 1.0), minlength=q)
    return np.where(counts > 0, s / np.maximum(counts, 1), 0.0)


def mean_ap(rel_ranked_full: np.ndarray) -> float:
    return float(average_precision(rel_ranked_full).mean())


def radius_counts(dist: np.ndarray, rel: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-query counts of (retrieved, relevant retrieved) within each Hamming radius 0..bits: two [Q, bits+1]."""
    d = np.asarray(dist)
    q = d.shape[0]
    got = np.stack([np.bincount(row, minlength=bits + 1) for row in d]) if q else np.zeros((0, bits + 1), np.int64)
    rows, cols = np.nonzero(np.asarray(rel, dtype=bool))  # relevant pairs are few: count only those
    hit = np.bincount(rows * (bits + 1) + d[rows, cols], minlength=q * (bits + 1)).reshape(q, bits + 1)
    return np.cumsum(got, axis=1), np.cumsum(hit, axis=1)


class PRAccumulator:
    """Precision and recall at each Hamming radius, averaged over queries (macro), built chunk by chunk.

    Precision at radius r averages over the queries that retrieve at least one item within r; recall averages
    over the queries that have at least one relevant database item.
    """

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.p_sum = np.zeros(bits + 1)
        self.p_n = np.zeros(bits + 1, dtype=np.int64)
        self.r_sum = np.zeros(bits + 1)
        self.r_n = 0

    def update(self, dist: np.ndarray, rel: np.ndarray) -> None:
        got, hit = radius_counts(dist, rel, self.bits)
        has = got > 0
        self.p_sum += np.where(has, hit / np.maximum(got, 1), 0.0).sum(axis=0)
        self.p_n += has.sum(axis=0)
        n_rel = hit[:, -1]
        ok = n_rel > 0
        self.r_sum += (hit[ok] / n_rel[ok, None]).sum(axis=0)
        self.r_n += int(ok.sum())

    def result(self) -> dict[str, list[float]]:
        with np.errstate(invalid="ignore", divide="ignore"):
            p = np.where(self.p_n > 0, self.p_sum / np.maximum(self.p_n, 1), np.nan)
        r = self.r_sum / self.r_n if self.r_n else np.full(self.bits + 1, np.nan)
        return {"radius": list(range(self.bits + 1)), "precision": [_f(x) for x in p],
                "recall": [_f(x) for x in r], "queries_with_results": self.p_n.tolist()}


def _f(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


def pr_curve(dist: np.ndarray, rel: np.ndarray, bits: int) -> dict[str, list[float]]:
    """Precision and recall at each Hamming radius 0..bits for one block of queries (see PRAccumulator)."""
    acc = PRAccumulator(bits)
    acc.update(dist, rel)
    return acc.result()
