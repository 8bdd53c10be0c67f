import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s5vh_cli import codes as C
from s5vh_cli.errors import InputError


def _brute(q_bits: np.ndarray, d_bits: np.ndarray) -> np.ndarray:
    """Hamming from ±1 codes the way the released code does it: (L - <b_q, b_db>) / 2."""
    q = q_bits.astype(np.int64)
    d = d_bits.astype(np.int64)
    return (q.shape[1] - q @ d.T) // 2


def test_pack_is_big_endian_and_accepts_sign_bool_and_binary():
    signs = np.array([[1, -1, -1, -1, -1, -1, -1, 1, -1, -1, -1, -1, -1, -1, -1, -1]])
    packed = C.pack(signs)
    assert packed.dtype == np.uint8 and packed.tolist() == [[0b10000001, 0]]
    assert (C.pack(signs > 0) == packed).all()
    assert (C.pack((signs > 0).astype(np.uint8)) == packed).all()
    assert (C.pack(signs.astype(np.float32)) == packed).all()
    assert (C.unpack(packed) == signs).all()
    assert (C.unpack(packed, signed=False) == (signs > 0)).all()


def test_pack_rejects_bad_lengths():
    with pytest.raises(InputError):
        C.pack(np.ones((2, 12)))
    with pytest.raises(InputError):
        C.hamming(np.zeros((1, 2), np.uint8), np.zeros((1, 3), np.uint8))


@pytest.mark.parametrize("bits", [8, 16, 24, 64, 72, 128])
def test_hamming_matches_sign_dot_product(rng, bits):
    q = rng.choice([-1, 1], size=(13, bits))
    d = rng.choice([-1, 1], size=(57, bits))
    got = C.hamming(C.pack(q), C.pack(d))
    assert got.dtype == np.int32
    assert (got == _brute(q, d)).all()
    # tiny chunks exercise the query split
    assert (C.hamming(C.pack(q), C.pack(d), chunk=7) == got).all()


def test_popcount_table_matches_bitwise_count(rng):
    x = rng.integers(0, 2**63, size=1000, dtype=np.uint64)
    table = C._POPCOUNT8[x.view(np.uint8)].reshape(1000, 8).sum(1)
    assert (C.popcount(x).astype(np.int64) == table).all()


def test_rank_breaks_ties_by_database_row(rng):
    # 8-bit codes over 300 rows: many exact ties at every distance
    db = rng.integers(0, 256, size=(300, 1), dtype=np.uint8)
    q = rng.integers(0, 256, size=(20, 1), dtype=np.uint8)
    dist, idx = C.rank(q, db, 40)
    full = C.hamming(q, db)
    for i in range(len(q)):
        expected = sorted(range(len(db)), key=lambda j: (full[i, j], j))[:40]
        assert idx[i].tolist() == expected
        assert dist[i].tolist() == [full[i, j] for j in expected]


def test_rank_k_larger_than_database_and_full_ranking(rng):
    db = rng.integers(0, 4, size=(10, 1), dtype=np.uint8)
    dist, idx = C.rank(db[:2], db, 50)
    assert idx.shape == (2, 10)
    order = C.full_ranking(C.hamming(db[:2], db))
    assert (order == idx).all()
    with pytest.raises(InputError):
        C.rank(db, db, 0)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 40), k=st.integers(1, 50), seed=st.integers(0, 2**16))
def test_topk_equals_sorted_prefix(n, k, seed):
    r = np.random.default_rng(seed)
    dist = r.integers(0, 3, size=(3, n))
    d, i = C.topk_from_distances(dist, k)
    for row in range(3):
        expected = sorted(range(n), key=lambda j: (dist[row, j], j))[:k]
        assert i[row].tolist() == expected


def test_to_hex():
    assert C.to_hex(np.array([0xAB, 0x01], np.uint8)) == "ab01"
