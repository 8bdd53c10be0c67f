"""Binary codes: pack and unpack bits, Hamming distances, and the one deterministic ranking rule.

Bit order follows ``np.packbits`` (big-endian within a byte): bit 0 of a code is the most significant bit
of byte 0. This is also the layout faiss binary indexes expect, so packed codes go to faiss unchanged.

Ranking rule (shared by ``s5vh query`` and ``s5vh eval``): sort by Hamming distance ascending, then by
database row (or index key) ascending. The released S5VH evaluation ranks with ``np.argsort`` using the
default, non-stable quicksort, so its order among equal distances is undefined (it may even change with the
CPU's SIMD sort); at 16 bits a large share of the top-K sits in such ties, so mAP@K can differ in the third
decimal between runs of the released code. Here ties never depend on the sort implementation.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
_HAS_BITWISE_COUNT = hasattr(np, "bitwise_count")


def pack(bits: np.ndarray) -> np.ndarray:
    """Pack codes given as ±1 (0 counts as +1), {0, 1} or bool, shape [N, L] with L % 8 == 0, to uint8 [N, L/8].

    Positive (or true) entries become 1 bits. The sign convention of the released code maps a video code of
    exactly 0 (a tie of frame votes) to neither side; we put it on the +1 side, like ``code_tie="plus_one"``.
    """
    b = np.asarray(bits)
    if b.ndim == 1:
        b = b[None, :]
    if b.ndim != 2:
        raise InputError(f"codes to pack must be [N, bits], got shape {b.shape}")
    if b.shape[1] == 0 or b.shape[1] % 8:
        raise InputError(f"code length must be a positive multiple of 8 bits, got {b.shape[1]}")
    if b.dtype == bool:
        on = b
    elif np.issubdtype(b.dtype, np.unsignedinteger):
        on = b > 0
    else:
        # ±1 codes (and {0,1} codes) both map correctly with ">= 0.5" except the ±1 tie value 0;
        # decide by the value set so that 0 means "+1 side" for signed codes and "0 bit" for {0,1} codes.
        signed = bool((b < 0).any())
        on = b >= 0 if signed else b > 0
    return np.packbits(on, axis=1)


def unpack(codes: np.ndarray, signed: bool = True) -> np.ndarray:
    """uint8 [N, B] -> int8 [N, 8B] in {-1, +1} (``signed``) or uint8 {0, 1}."""
    c = _as_codes(codes, "codes")
    bits = np.unpackbits(c, axis=1)
    if signed:
        return bits.astype(np.int8) * 2 - 1
    return bits


def popcount(x: np.ndarray) -> np.ndarray:
    """Number of set bits of each element of an unsigned integer array (same shape, uint8)."""
    if _HAS_BITWISE_COUNT:
        return np.bitwise_count(x)
    x = np.ascontiguousarray(x)
    per_byte = _POPCOUNT8[x.view(np.uint8)].reshape(*x.shape, x.dtype.itemsize)
    return per_byte.sum(axis=-1, dtype=np.uint8)


def _as_codes(codes: np.ndarray, what: str) -> np.ndarray:
    c = np.asarray(codes)
    if c.ndim == 1:
        c = c[None, :]
    if c.dtype != np.uint8 or c.ndim != 2:
        raise InputError(f"{what} must be packed uint8 [N, bits/8], got {c.dtype} {c.shape}")
    return c


def _as_words(c: np.ndarray) -> np.ndarray:
    """View packed codes as uint64 words (zero-padded): XOR + popcount on 8 bytes at a time."""
    n, nb = c.shape
    w = -(-nb // 8)
    if nb != w * 8:
        padded = np.zeros((n, w * 8), dtype=np.uint8)
        padded[:, :nb] = c
        c = padded
    return np.ascontiguousarray(c).view(np.uint64)


def hamming(query: np.ndarray, db: np.ndarray, chunk: int = 1 << 24) -> np.ndarray:
    """Hamming distance matrix int32 [Q, N] between packed codes ``query`` [Q, B] and ``db`` [N, B].

    Vectorised XOR + popcount on uint64 words; the work is split so that temporaries stay near ``chunk`` words.
    """
    q = _as_codes(query, "query codes")
    d = _as_codes(db, "database codes")
    if q.shape[1] != d.shape[1]:
        raise InputError(f"query codes have {q.shape[1] * 8} bits but database codes have {d.shape[1] * 8}")
    qw, dw = _as_words(q), _as_words(d)
    nq, n, w = qw.shape[0], dw.shape[0], qw.shape[1]
    out = np.empty((nq, n), dtype=np.int32)
    step = max(1, chunk // max(1, n * w))
    dcols = [np.ascontiguousarray(dw[:, j]) for j in range(w)]
    for s in range(0, nq, step):
        block = out[s:s + step]
        # one 2-D XOR + popcount per 64-bit word: a trailing word axis would make numpy loop slowly
        for j in range(w):
            pc = popcount(qw[s:s + step, j, None] ^ dcols[j][None, :])
            if j == 0:
                block[...] = pc
            else:
                block += pc
    return out


def topk_from_distances(dist: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` columns of each row of an integer distance matrix by (distance, column) ascending.

    Returns (dist [Q, k'], idx [Q, k']) with k' = min(k, N). Exact under ties: the sort key
    ``distance * N + column`` is unique per row, so argpartition cannot cut a tie arbitrarily.
    """
    dist = np.asarray(dist)
    nq, n = dist.shape
    k = min(int(k), n)
    if k <= 0:
        return np.empty((nq, 0), dtype=np.int32), np.empty((nq, 0), dtype=np.int64)
    key = dist.astype(np.int64) * n + np.arange(n, dtype=np.int64)[None, :]
    if k < n:
        part = np.argpartition(key, k - 1, axis=1)[:, :k]
        part_keys = np.take_along_axis(key, part, axis=1)
    else:
        part_keys = key
    part_keys.sort(axis=1)
    idx = part_keys % n
    return (part_keys // n).astype(np.int32), idx


def full_ranking(dist: np.ndarray) -> np.ndarray:
    """Whole-row ranking by (distance, column) ascending: a stable sort of integer distances (radix for small ints)."""
    d = np.asarray(dist)
    if d.size and d.max(initial=0) < 256 and d.min(initial=0) >= 0:
        d = d.astype(np.uint8)
    elif d.size and d.max(initial=0) < 65536 and d.min(initial=0) >= 0:
        d = d.astype(np.uint16)
    return np.argsort(d, axis=1, kind="stable")


def rank(query_codes: np.ndarray, db_codes: np.ndarray, k: int,
         batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-``k`` by Hamming distance: (dist int32 [Q, k], idx int64 [Q, k]).

    Ties are broken by database row ascending, so the result is a pure function of the inputs.
    k larger than the database gives all rows.
    """
    q = _as_codes(query_codes, "query codes")
    d = _as_codes(db_codes, "database codes")
    if int(k) < 1:
        raise InputError(f"k must be at least 1, got {k}")
    kk = min(int(k), d.shape[0])
    dists = np.empty((q.shape[0], kk), dtype=np.int32)
    idx = np.empty((q.shape[0], kk), dtype=np.int64)
    for s in range(0, q.shape[0], batch):
        dist = hamming(q[s:s + batch], d)
        dists[s:s + batch], idx[s:s + batch] = topk_from_distances(dist, kk)
    return dists, idx


def to_hex(code: np.ndarray) -> str:
    """A packed code as a hex string (bit 0 first), for JSON output and logs."""
    return bytes(np.asarray(code, dtype=np.uint8)).hex()
