"""Semantic hash centres: frame means -> PCA -> one k-means -> ±1 centres that keep apart and follow semantics.

One clustering serves every bit length: its assignments are the initial pseudo-labels and its L2-normalised
centroids define which centres should be close. The centres are found by block-coordinate sweeps of a per-centre
lp-box ADMM (binary set = box ∩ sphere) that minimises

    m^T b + alpha * ||H b - t||^2    s.t.  b in {-1, +1}^L,  H b <= delta

with H the other centres, m their mean, t the centroid cosines mapped to [-L, L] and delta = L - 2 * d_max, d_max
the Gilbert-Varshamov distance for K codes of L bits. Nothing here is N x N: the largest matrices are D x D
(covariance), N x p (PCA features) and K x K (centre similarities). See docs/centers.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import time
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import numpy as np

from .artifacts import Centers, check_feature_values
from .config import CentersConfig, to_dict
from .errors import BackendError, InputError
from .progress import NULL, Progress

_CHUNK_BYTES = 256 << 20  # feature rows read per chunk: bounded memory for 18 GB FCVID-sized files


# ----------------------------------------------------------------------------------------------------------
# features -> PCA -> k-means
# ----------------------------------------------------------------------------------------------------------
def _source_name(feats: Any) -> str:
    f = getattr(feats, "file", None)
    return str(getattr(f, "filename", "features")) if f is not None else "features"


def frame_means(feats: Any, progress: Progress | None = None) -> np.ndarray:
    """Average ``feats`` [N, T, D] over frames, reading it chunk by chunk (an h5py dataset or an array).

    A [N, D] input is taken as frame means already. Returns float32 [N, D]; non-finite values raise InputError.
    """
    progress = progress or NULL
    name = _source_name(feats)
    shape = tuple(feats.shape)
    if len(shape) not in (2, 3) or 0 in shape:
        raise InputError(f"{name}: features have shape {shape}, expected [videos, frames, dim], none of them 0")
    n = shape[0]
    per_row = int(np.prod(shape[1:])) * max(np.dtype(feats.dtype).itemsize, 4)
    rows = max(1, _CHUNK_BYTES // per_row)
    out = np.empty((n, shape[-1]), dtype=np.float32)
    progress.start("frame means", total=n)
    for s in range(0, n, rows):
        block = np.asarray(feats[s:s + rows])
        if block.dtype.kind != "f":
            raise InputError(f"{name}: features have dtype {block.dtype}, expected floating point")
        check_feature_values(block, name, f" near row {s}", error=InputError)
        out[s:s + block.shape[0]] = block.mean(axis=1, dtype=np.float64) if block.ndim == 3 else block
        progress.advance(block.shape[0])
    progress.finish()
    return out


def fit_pca(x: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact PCA of ``x`` [N, D]: eigenvectors of the D x D covariance (no N x N matrix, no randomness).

    Returns (mean [D], components [p, D]) in float32 with p = min(dim, D, N - 1); each component's sign is fixed
    so that its largest-magnitude entry is positive, which makes the result reproducible across BLAS builds.
    """
    from scipy.linalg import eigh

    n, d = x.shape
    p = min(int(dim), d, n - 1)
    if p < 1:
        raise InputError(f"PCA needs at least 2 videos and pca_dim >= 1 (got {n} videos, pca_dim {dim})")
    mean = x.mean(axis=0, dtype=np.float64)
    cov = np.zeros((d, d), dtype=np.float64)
    rows = max(1, (64 << 20) // (4 * d))
    mean32 = mean.astype(np.float32)
    for s in range(0, n, rows):
        c = x[s:s + rows] - mean32  # float32 products, float64 accumulation across chunks
        cov += (c.T @ c).astype(np.float64)
    cov /= max(n - 1, 1)
    vals, vecs = eigh(cov, subset_by_index=[d - p, d - 1], overwrite_a=True, check_finite=False)
    comps = vecs[:, ::-1].T  # descending variance
    flip = np.sign(comps[np.arange(p), np.abs(comps).argmax(axis=1)])
    comps *= np.where(flip == 0, 1.0, flip)[:, None]
    return mean.astype(np.float32), np.ascontiguousarray(comps, dtype=np.float32)


def pca_transform(x: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    return ((x - mean) @ components.T).astype(np.float32)


def kmeans(z: np.ndarray, k: int, cfg: CentersConfig) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One seeded faiss k-means (CPU) on ``z`` [N, p]. Returns (raw centroids [K, p], labels [N], info)."""
    import faiss

    n, p = z.shape
    if k < 2:
        raise InputError(f"--clusters must be at least 2, got {k}")
    if k > n:
        raise InputError(f"--clusters {k} is more than the {n} videos in the features file; use at most {n}")
    # faiss trains on K * max_points_per_centroid sampled points; 0 means "all points", which is also what the
    # released 200 gives on every released dataset (N < 200 K there), so results do not depend on a subsample.
    mppc = cfg.kmeans_max_points_per_centroid or (n // k + 1)
    extra = {}
    if cfg.kmeans_init == "kmeans++":  # random data points as seeds (released) often merge two true clusters
        method = getattr(faiss, "ClusteringInitMethod_KMEANS_PLUS_PLUS", None)
        if method is None:
            raise BackendError(f"faiss {faiss.__version__} has no k-means++ initialisation; upgrade faiss-cpu "
                               "or set kmeans_init='random'")
        extra["init_method"] = method
    elif cfg.kmeans_init != "random":
        raise InputError(f"kmeans_init must be 'kmeans++' or 'random', got {cfg.kmeans_init!r}")
    km = faiss.Kmeans(p, k, niter=int(cfg.kmeans_niter), nredo=int(cfg.kmeans_nredo), seed=int(cfg.seed),
                      max_points_per_centroid=int(mppc), min_points_per_centroid=1, verbose=False, **extra)
    z = np.ascontiguousarray(z, dtype=np.float32)
    km.train(z)
    _, labels = km.assign(z)
    labels = labels.astype(np.int64)
    counts = np.bincount(labels, minlength=k)
    info = {"kmeans_objective": float(km.obj[-1]) if km.obj is not None and km.obj.size else 0.0,
            "empty_clusters": int((counts == 0).sum()), "largest_cluster": int(counts.max()),
            "smallest_cluster": int(counts.min()), "kmeans_points_used": int(min(n, k * mppc))}
    return km.centroids.astype(np.float32), labels, info


def _normalise_rows(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w, dtype=np.float64)
    norm = np.linalg.norm(w, axis=1, keepdims=True)
    return w / np.where(norm == 0, 1.0, norm)


def assign_labels(feats_mean: np.ndarray, centers: Centers) -> np.ndarray:
    """Pseudo-labels for new videos: PCA with the stored transform, then the nearest k-means centroid.

    ``feats_mean`` is [N, D] frame means. Uses the raw k-means centroids when the artifact holds them (this
    reproduces the training pseudo-labels), else the largest cosine to the normalised centroids.
    """
    x = np.asarray(feats_mean, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != centers.pca_mean.shape[0]:
        raise InputError(f"features have shape {x.shape}; the centres were built for dim {centers.pca_mean.shape[0]}")
    z = pca_transform(x, centers.pca_mean, centers.pca_components)
    if centers.kmeans_centroids is not None:
        c = np.asarray(centers.kmeans_centroids, dtype=np.float32)
        d2 = (c * c).sum(1)[None, :] - 2.0 * (z @ c.T)  # ||z||^2 is the same for every centroid
        return d2.argmin(axis=1).astype(np.int64)
    return (z @ np.asarray(centers.centroids, dtype=np.float32).T).argmax(axis=1).astype(np.int64)


# ----------------------------------------------------------------------------------------------------------
# distance bound and initialisation
# ----------------------------------------------------------------------------------------------------------
def gv_min_distance(bits: int, k: int) -> tuple[int, int]:
    """(d_max, d_min) for K codes of ``bits`` bits, with q = 2^L / K (exact rational arithmetic).

    d_max: smallest dim with sum_{j<dim} C(L, j) >= q > sum_{j<dim-1} C(L, j) (Gilbert-Varshamov); this is the
    required minimum Hamming distance between centres. d_min: largest dim with
    sum_{i<=(dim-1)//2} C(L, i) <= q < sum_{i<=dim//2} C(L, i) (sphere packing); reported only.
    """
    if bits < 1 or k < 1:
        raise InputError(f"bits and clusters must be positive, got bits={bits}, clusters={k}")
    q = Fraction(2**bits, k)

    def ball(r: int) -> int:  # sum_{j=0}^{r} C(L, j); empty for r < 0
        return sum(math.comb(bits, j) for j in range(r + 1)) if r >= 0 else 0

    d_max = next((d for d in range(1, bits + 2) if ball(d - 1) >= q > ball(d - 2)), 1)
    d_min = max((d for d in range(1, bits + 2) if ball((d - 1) // 2) <= q < ball(d // 2)), default=1)
    return d_max, d_min


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % f for f in range(2, math.isqrt(n) + 1))


def hadamard(n: int) -> np.ndarray | None:
    """A Hadamard matrix of order n (Sylvester x Paley I), or None when this construction has none."""
    from scipy.linalg import hadamard as sylvester

    two = 1
    while n % (two * 2) == 0:
        two *= 2
    m = n // two
    if m == 1:
        return sylvester(n).astype(np.int8)
    for t in (1, 2, 4, 8, 16, 32):  # order m * t = q + 1 with q prime, q = 3 (mod 4)
        q = m * t - 1
        if two % t == 0 and _is_prime(q) and q % 4 == 3:
            residues = {(i * i) % q for i in range(1, q)}
            chi = np.array([0] + [1 if i in residues else -1 for i in range(1, q)], dtype=np.int64)
            jac = chi[(np.arange(q)[None, :] - np.arange(q)[:, None]) % q]
            s = np.zeros((q + 1, q + 1), dtype=np.int64)
            s[0, 1:], s[1:, 0], s[1:, 1:] = 1, -1, jac
            h = np.eye(q + 1, dtype=np.int64) + s
            return np.kron(sylvester(two // t), h).astype(np.int8)
    return None


def _balanced_codes(rng: np.random.Generator, n: int, bits: int) -> np.ndarray:
    """n random codes with exactly bits/2 entries equal to -1."""
    ranks = rng.random((n, bits)).argsort(axis=1).argsort(axis=1)
    return np.where(ranks < bits // 2, -1, 1).astype(np.int8)


def hadamard_init(k: int, bits: int, seed: int, d_req: int = 0, targets: np.ndarray | None = None) -> np.ndarray:
    """[H_L; -H_L] for the first min(K, 2L) centres; the rest random balanced codes, drawn greedily apart.

    Each extra row is chosen from 8 x 64 random balanced draws: among those at distance >= ``d_req`` from every
    row so far, the first (or, given ``targets`` [K, K], the one whose inner products best match its targets);
    if none is far enough, the draw with the largest such distance (so duplicates are avoided whenever possible).
    """
    rng = np.random.default_rng(seed)
    h = hadamard(bits)
    rows = np.concatenate([h, -h])[: min(k, 2 * bits)] if h is not None else np.zeros((0, bits), np.int8)
    out = np.zeros((k, bits), dtype=np.int8)
    out[: len(rows)] = rows
    for i in range(len(rows), k):
        cand = _balanced_codes(rng, 512, bits)
        if i == 0:
            out[i] = cand[0]
            continue
        ip = cand.astype(np.int32) @ out[:i].T.astype(np.int32)
        dmin = ((bits - ip) // 2).min(axis=1)
        ok = dmin >= d_req
        if not ok.any():
            out[i] = cand[int(dmin.argmax())]
        elif targets is None:
            out[i] = cand[int(ok.argmax())]
        else:
            err = ((ip - targets[i, :i][None, :]) ** 2).sum(axis=1)
            out[i] = cand[int(np.where(ok, err, np.inf).argmin())]
    return out


# ----------------------------------------------------------------------------------------------------------
# centre optimisation
# ----------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _blas_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` OpenBLAS threads. The ADMM's products are small (64 x 450 x 64): handing them to
    threads costs more than it saves, and on shared, busy cores it was 10-20x slower than one thread."""
    found = []
    try:
        with open("/proc/self/maps") as f:
            libs = sorted({ln.split()[-1] for ln in f if "openblas" in ln.lower() and ".so" in ln})
    except OSError:
        libs = []
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for pre, suf in (("scipy_openblas", "64_"), ("scipy_openblas", ""), ("openblas", "64_"), ("openblas", "")):
            get, put = getattr(lib, f"{pre}_get_num_threads{suf}", None), getattr(lib, f"{pre}_set_num_threads{suf}", None)
            if get is not None and put is not None:
                found.append((put, int(get())))
                put(int(n))
                break
    try:
        yield
    finally:
        for put, old in found:
            put(old)


def _targets(w: np.ndarray, bits: int) -> np.ndarray:
    """Desired inner products: centroid cosines mapped linearly onto [-L, L] (one map for all pairs, so t is
    symmetric and every centre update lowers one global objective)."""
    s = w @ w.T
    off = ~np.eye(len(s), dtype=bool)
    lo, hi = s[off].min(), s[off].max()
    if hi - lo < 1e-12:
        return np.zeros_like(s)
    return -bits + 2.0 * bits * (s - lo) / (hi - lo)


def _evaluate(cand: np.ndarray, rows: np.ndarray, b: np.ndarray, t: np.ndarray, delta: float,
              alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(violation, objective) of candidate codes ``cand`` [n, L] for centres ``rows`` against the centres b;
    violation = sum over the other centres of max(0, <c, b_j> - delta) = twice the total Hamming shortfall."""
    k = b.shape[0]
    self_ = (np.arange(len(rows)), rows)
    ip = cand @ b.T  # [n, K]
    ip[self_] = -np.inf  # a centre is not compared with itself
    # shortfall, not a count: turning a distance-4 violation into a duplicate must not look free
    viol = np.maximum(ip - delta, 0.0).sum(axis=1)
    ip[self_] = 0.0
    mean_other = (b.sum(axis=0)[None, :] - b[rows]) / (k - 1)
    err = ip - t[rows]
    err[self_] = 0.0
    obj = (mean_other * cand).sum(axis=1) + alpha * (err * err).sum(axis=1)
    return viol, obj


def _admm_block(b: np.ndarray, rows: np.ndarray, t: np.ndarray, delta: float, cfg: CentersConfig,
                rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """lp-box ADMM for the centres ``rows`` at once, each against the snapshot ``b`` of all centres.

    Returns the best sign vector seen per centre (fewest violations, then lowest objective) and the number of
    iterations run. Every centre's system matrix 2 rho I + (rho + 2 alpha) H^T H differs from the shared
    2 rho I + (rho + 2 alpha) B^T B by a rank-1 term (its own row), so one L x L eigendecomposition per block plus
    Sherman-Morrison solves all of them exactly at O(L^2) each, for every rho, with no explicit inverse.
    """
    k, bits = b.shape
    n = len(rows)
    alpha, gamma = float(cfg.admm_alpha), float(cfg.gamma)
    self_ = (np.arange(n), rows)
    own = b[rows].copy()
    lam, q = np.linalg.eigh(b.T @ b)
    lam = np.maximum(lam, 0.0)
    own_q = own @ q  # own rows in the eigenbasis
    mean_other = (b.sum(axis=0)[None, :] - own) / (k - 1)
    t_rows = t[rows].copy()
    t_rows[self_] = 0.0
    lin = 2.0 * alpha * (t_rows @ b) - mean_other  # constant part of the right-hand side
    scale = k - 1  # diagonal of H^T H: makes the rho schedule mean the same for every K
    x = own.copy()
    z1, z2 = x.copy(), x.copy()
    hx = x @ b.T
    hx[self_] = 0.0
    z3 = delta - hx
    z3[self_] = 0.0
    y1, y2 = rng.random((n, bits)), rng.random((n, bits))
    y3 = rng.random((n, k))
    y3[self_] = 0.0
    dvec = np.full(k, delta)
    best = own.copy()
    best_v, best_f = _evaluate(own, rows, b, t, delta, alpha)
    prev = np.sign(own)
    stable = np.zeros(n, dtype=np.int64)
    sqrt_l = math.sqrt(bits)
    it = 0
    for it in range(1, int(cfg.admm_iters) + 1):
        rho = min(cfg.rho * cfg.rho_growth ** (it - 1), cfg.rho_max) * scale
        c = rho + 2.0 * alpha
        w3 = rho * (dvec - z3) - y3
        w3[self_] = 0.0
        rhs = rho * (z1 + z2) - y1 - y2 + w3 @ b + lin
        # (A0 - c u u^T)^{-1} r  with A0 = 2 rho I + c B^T B = Q diag(d) Q^T, u = own row
        inv_d = 1.0 / (2.0 * rho + c * lam)
        r_q = (rhs @ q) * inv_d
        u_q = own_q * inv_d
        coef = c * (own_q * r_q).sum(axis=1) / (1.0 - c * (own_q * u_q).sum(axis=1))
        x = (r_q + coef[:, None] * u_q) @ q.T
        hx = x @ b.T
        hx[self_] = 0.0
        z1 = np.clip(x + y1 / rho, -1.0, 1.0)
        v = x + y2 / rho
        z2 = sqrt_l * v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        z3 = np.maximum(dvec - hx - y3 / rho, 0.0)
        y1 += gamma * rho * (x - z1)
        y2 += gamma * rho * (x - z2)
        y3 += gamma * rho * (hx + z3 - dvec)
        s = np.where(x >= 0, 1.0, -1.0)
        same = (s == prev).all(axis=1)
        stable = np.where(same, stable + 1, 0)
        prev = s
        viol, obj = _evaluate(s, rows, b, t, delta, alpha)
        better = (viol < best_v) | ((viol == best_v) & (obj < best_f - 1e-9))
        best[better], best_v[better], best_f[better] = s[better], viol[better], obj[better]
        # done when the relaxed point has become binary (box and sphere copies agree with it), its sign has not
        # moved for 10 iterations and it breaks no distance constraint
        binary = np.maximum(np.abs(x - z1).max(axis=1), np.abs(x - z2).max(axis=1)) < 1e-2
        if ((stable >= 10) & binary & (viol == 0)).all():
            break
    return best, it


def _polish(c: np.ndarray, i: int, b: np.ndarray, t: np.ndarray, delta: float, alpha: float,
            max_flips: int) -> np.ndarray:
    """Greedy single-bit flips of centre i's candidate ``c`` while one lowers (violations, objective).

    The ADMM's rounded point is usually a few bits from a better binary point; all L flips are scored at once
    (O(K L)), so this costs little beside the ADMM.
    """
    k = b.shape[0]
    others = np.ones(k, dtype=bool)
    others[i] = False
    h = b[others]  # [K-1, L]
    ti = t[i, others]
    m = h.mean(axis=0)
    c = c.copy()
    ip = h @ c
    for _ in range(max_flips):
        e = ip - ti
        viol = np.maximum(ip - delta, 0.0).sum()
        # flipping bit j moves every inner product by -2 c_j h_j
        new_ip = ip[:, None] - 2.0 * h * c[None, :]  # [K-1, L]
        new_viol = np.maximum(new_ip - delta, 0.0).sum(axis=0)
        d_obj = -2.0 * c * m + alpha * (-4.0 * c * (h.T @ e) + 4.0 * (k - 1))
        ok = (new_viol < viol) | ((new_viol == viol) & (d_obj < -1e-9))
        if not ok.any():
            break
        key = np.where(ok, new_viol * 1e12 + d_obj, np.inf)
        j = int(key.argmin())
        ip = new_ip[:, j]
        c[j] = -c[j]
    return c


def _pair_stats(b: np.ndarray, w_sim_upper: np.ndarray, d_req: int) -> dict[str, Any]:
    from scipy.stats import spearmanr

    k, bits = b.shape
    bi = b.astype(np.int32)
    iu = np.triu_indices(k, 1)
    ip = (bi @ bi.T)[iu]
    ham = (bits - ip) // 2
    # constant inner products (e.g. the orthogonal Hadamard rows) carry no ranking: count that as 0
    rho = spearmanr(ip, w_sim_upper).statistic if ip.std() > 0 and w_sim_upper.std() > 0 else 0.0
    return {"min_hamming": int(ham.min()), "mean_hamming": float(ham.mean()),
            "violations": int((ham < d_req).sum()), "shortfall": int(np.maximum(d_req - ham, 0).sum()),
            "spearman": float(rho)}


def _sweep_key(st: dict[str, Any], bits: int) -> tuple[int, float]:
    """Sweep selection: smaller total Hamming shortfall below d_max first, then Spearman + min Hamming / L."""
    sp = st["spearman"] if np.isfinite(st["spearman"]) else -1.0
    return (-st["shortfall"], sp + st["min_hamming"] / bits)


def optimize_hash_centers(centroids: np.ndarray, bits: int, cfg: CentersConfig,
                          progress: Progress | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """±1 hash centres [K, bits] int8 for the centroids [K, p], and statistics (see docs/centers.md)."""
    progress = progress or NULL
    t0 = time.perf_counter()
    w = _normalise_rows(centroids)
    k = w.shape[0]
    if bits <= 0 or bits % 8:
        raise InputError(f"bits must be a positive multiple of 8, got {bits}")
    if k < 2:
        raise InputError(f"need at least 2 centroids, got {k}")
    d_req, d_sp = gv_min_distance(bits, k)
    delta = float(bits - 2 * d_req)
    t = _targets(w, bits)
    w_upper = (w @ w.T)[np.triu_indices(k, 1)]
    rng = np.random.default_rng(cfg.seed)
    b = hadamard_init(k, bits, cfg.seed, d_req, t).astype(np.float64)
    init = _pair_stats(b, w_upper, d_req)
    best_b, best_st, best_key = b.copy(), init, _sweep_key(init, bits)
    block = max(1, int(cfg.admm_block))
    sweeps = since_best = accepted_total = admm_iters = 0
    progress.start(f"centres {bits} bits", total=int(cfg.sweeps))
    with _blas_threads(1):
        for sweep in range(1, int(cfg.sweeps) + 1):
            sweeps, accepted = sweep, 0
            for s in range(0, k, block):
                rows = np.arange(s, min(s + block, k))
                cand, its = _admm_block(b, rows, t, delta, cfg, rng)
                admm_iters += its
                # accept one centre at a time against the current centres (Gauss-Seidel), only if it improves
                for r, i in enumerate(rows):
                    if cfg.polish_flips:
                        cand[r] = _polish(cand[r], i, b, t, delta, cfg.admm_alpha, cfg.polish_flips)
                    if np.array_equal(cand[r], b[i]):
                        continue
                    v, f = _evaluate(np.stack([cand[r], b[i]]), np.array([i, i]), b, t, delta, cfg.admm_alpha)
                    if v[0] < v[1] or (v[0] == v[1] and f[0] < f[1] - 1e-9):
                        b[i] = cand[r]
                        accepted += 1
            accepted_total += accepted
            st = _pair_stats(b, w_upper, d_req)
            key = _sweep_key(st, bits)
            if key > best_key:
                best_key, best_b, best_st, since_best = key, b.copy(), st, 0
            else:
                since_best += 1
            progress.advance(1, violations=st["violations"], min_ham=st["min_hamming"], spearman=st["spearman"],
                             moved=accepted)
            if accepted == 0 or since_best >= cfg.patience:
                break
    progress.finish()
    stats = {"bits": int(bits), "clusters": int(k), "d_max": int(d_req), "d_min_bound": int(d_sp),
             "delta": int(delta), **best_st,
             "init_min_hamming": init["min_hamming"], "init_mean_hamming": init["mean_hamming"],
             "init_violations": init["violations"], "init_shortfall": init["shortfall"],
             "init_spearman": init["spearman"],
             "sweeps": int(sweeps), "moves_accepted": int(accepted_total), "admm_iterations": int(admm_iters),
             "seconds": round(time.perf_counter() - t0, 3)}
    return best_b.astype(np.int8), stats


# ----------------------------------------------------------------------------------------------------------
# the whole pipeline
# ----------------------------------------------------------------------------------------------------------
def default_clusters(n_videos: int, preset_clusters: int) -> int:
    """K when none is given (`s5vh centers` without --clusters, `s5vh train` without --centers): the preset's K,
    but at most a quarter of the videos so that clusters hold a few videos each, and at least 2."""
    return max(2, min(int(preset_clusters), int(n_videos) // 4))


def validate_config(cfg: CentersConfig) -> None:
    for bits in cfg.bits:
        if int(bits) <= 0 or int(bits) % 8:
            raise InputError(f"--bits: each bit length must be a positive multiple of 8, got {bits}")
    if not cfg.bits:
        raise InputError("--bits: give at least one bit length")
    if cfg.n_clusters < 2:
        raise InputError(f"--clusters must be at least 2, got {cfg.n_clusters}")
    if cfg.pca_dim < 1:
        raise InputError(f"--pca-dim must be at least 1, got {cfg.pca_dim}")
    if cfg.sweeps < 1 or cfg.admm_iters < 1 or cfg.kmeans_niter < 1 or cfg.kmeans_nredo < 1:
        raise InputError("sweeps, admm_iters, kmeans_niter and kmeans_nredo must be at least 1")
    if not (cfg.rho > 0 and cfg.rho_growth >= 1 and cfg.rho_max >= cfg.rho and cfg.gamma > 0):
        raise InputError("ADMM needs rho > 0, rho_growth >= 1, rho_max >= rho and gamma > 0")


def compute_centers(feats: Any, cfg: CentersConfig, progress: Progress | None = None,
                    features_sha256: str = "") -> Centers:
    """Frame means -> PCA -> one k-means -> hash centres for each of ``cfg.bits``.

    ``feats`` is [N, T, D] (h5py dataset or array, read in chunks) or [N, D] frame means.
    """
    progress = progress or NULL
    validate_config(cfg)
    name = _source_name(feats)
    n = int(feats.shape[0]) if len(feats.shape) else 0
    if cfg.n_clusters > n:
        raise InputError(f"{name}: --clusters {cfg.n_clusters} is more than its {n} videos; use at most {n}")
    t0 = time.perf_counter()
    x = frame_means(feats, progress)
    t1 = time.perf_counter()
    progress.log(f"PCA of {x.shape[0]} x {x.shape[1]} frame means to {min(cfg.pca_dim, x.shape[1], n - 1)} dims")
    mean, comps = fit_pca(x, cfg.pca_dim)
    z = pca_transform(x, mean, comps)
    del x
    t2 = time.perf_counter()
    progress.log(f"k-means: {cfg.n_clusters} clusters, niter {cfg.kmeans_niter}, nredo {cfg.kmeans_nredo}, "
                 f"seed {cfg.seed}")
    raw, labels, info = kmeans(z, cfg.n_clusters, cfg)
    t3 = time.perf_counter()
    if info["empty_clusters"]:
        progress.log(f"warning: {info['empty_clusters']} cluster(s) received no video (duplicate features?); "
                     "their centres are still optimised but no pseudo-label uses them")
    timing = {"frame_means_seconds": round(t1 - t0, 3), "pca_seconds": round(t2 - t1, 3),
              "kmeans_seconds": round(t3 - t2, 3)}
    hcs, stats = {}, {}
    for bits in sorted({int(b) for b in cfg.bits}):
        hcs[bits], st = optimize_hash_centers(raw, bits, cfg, progress)
        stats[bits] = {**st, **info, **timing, "pca_dim": int(comps.shape[0]), "videos": int(n)}
    return Centers(path=None, pseudo_labels=labels, centroids=_normalise_rows(raw).astype(np.float32),
                   pca_mean=mean, pca_components=comps, hash_centers=hcs, stats=stats, config=to_dict(cfg),
                   features_sha256=features_sha256, kmeans_centroids=raw)
