"""Hash-centre generation: distance bound, initialisation, constraints, semantics, determinism, I/O and CLI."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from s5vh_cli import artifacts as A
from s5vh_cli import centers as C
from s5vh_cli.config import CentersConfig
from s5vh_cli.errors import InputError


def _hier_centroids(k: int, p: int = 24, groups: int = 4, noise: float = 0.6, seed: int = 0) -> np.ndarray:
    """Centroids with structure: ``groups`` super-clusters, so some centroid pairs are much closer than others."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((groups, p))
    return base[np.arange(k) % groups] + noise * rng.standard_normal((k, p))


def _planted(n: int = 240, k: int = 6, t: int = 4, d: int = 20, sep: float = 8.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((k, d)) * sep
    truth = np.repeat(np.arange(k), n // k)
    x = means[truth][:, None, :] + rng.standard_normal((len(truth), t, d))
    return x.astype(np.float32), truth


def _cfg(**kw) -> CentersConfig:
    base = {"n_clusters": 6, "pca_dim": 8, "bits": [16, 32], "sweeps": 6, "patience": 2, "admm_iters": 60,
            "kmeans_nredo": 2}
    base.update(kw)
    return CentersConfig(**base)


# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("k", "bits", "d_max", "d_min"), [
    (100, 16, 4, 6), (100, 32, 10, 18), (100, 64, 24, 46),
    (101, 16, 4, 6), (101, 32, 10, 18), (101, 64, 24, 46),
    (450, 16, 4, 6), (450, 32, 9, 16), (450, 64, 22, 42),
])
def test_gv_bound_matches_reference_table(k, bits, d_max, d_min):
    assert C.gv_min_distance(bits, k) == (d_max, d_min)


def test_gv_bound_is_monotone_and_sane():
    # more centres in the same space can only lower the achievable distance
    ds = [C.gv_min_distance(32, k)[0] for k in (2, 8, 64, 512, 4096)]
    assert ds == sorted(ds, reverse=True)
    assert all(1 <= d <= 32 for d in ds)


@pytest.mark.parametrize("n", [8, 16, 24, 32, 40, 48, 64, 128])
def test_hadamard_matrices_are_hadamard(n):
    h = C.hadamard(n).astype(np.int64)
    assert h.shape == (n, n) and set(np.unique(h)) == {-1, 1}
    np.testing.assert_array_equal(h @ h.T, n * np.eye(n, dtype=np.int64))


def test_hadamard_init_properties():
    b = C.hadamard_init(100, 16, seed=3, d_req=4).astype(np.int64)
    h = C.hadamard(16).astype(np.int64)
    np.testing.assert_array_equal(b[:32], np.concatenate([h, -h]))
    assert (b[32:].sum(axis=1) == 0).all()  # the fill is balanced
    ham = (16 - b @ b.T) // 2
    np.fill_diagonal(ham, 16)
    assert ham.min() >= 4  # drawn apart: no duplicates, required distance met
    np.testing.assert_array_equal(b, C.hadamard_init(100, 16, seed=3, d_req=4))
    small = C.hadamard_init(16, 32, seed=0).astype(np.int64)
    np.testing.assert_array_equal(small @ small.T, 32 * np.eye(16, dtype=np.int64))


def test_init_fill_follows_targets():
    """Given targets, the random fill picks, among draws far enough apart, those that fit the semantics."""
    from scipy.stats import spearmanr

    k, bits = 100, 16
    w = _hier_centroids(k, groups=10, noise=0.4)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    t = C._targets(w, bits)
    iu = np.triu_indices(k - 32, 1)
    fits = []
    for targets in (None, t):
        b = C.hadamard_init(k, bits, seed=0, d_req=4, targets=targets).astype(np.int64)[32:]
        ham = (bits - b @ b.T) // 2
        np.fill_diagonal(ham, bits)
        assert ham.min() >= 4
        fits.append(spearmanr((b @ b.T)[iu], (w[32:] @ w[32:].T)[iu]).statistic)
    assert fits[1] > fits[0] + 0.2, fits


def test_constraints_hold_after_optimisation():
    k, bits = 16, 32
    b, st = C.optimize_hash_centers(_hier_centroids(k), bits, _cfg(n_clusters=k))
    d_max = C.gv_min_distance(bits, k)[0]
    assert b.shape == (k, bits) and b.dtype == np.int8 and set(np.unique(b)) <= {-1, 1}
    ham = (bits - b.astype(np.int64) @ b.T.astype(np.int64)) // 2
    np.fill_diagonal(ham, bits)
    assert ham.min() >= d_max and st["violations"] == 0 and st["min_hamming"] == ham.min() == st["min_hamming"]
    assert st["d_max"] == d_max and st["delta"] == bits - 2 * d_max


def test_optimisation_repairs_an_infeasible_start(monkeypatch):
    """Start from codes with duplicates: the constraint handling must separate them."""
    k, bits = 16, 32
    rng = np.random.default_rng(0)
    bad = np.where(rng.random((k, bits)) < 0.5, -1, 1).astype(np.int8)
    bad[1] = bad[0]
    bad[2] = bad[0]
    monkeypatch.setattr(C, "hadamard_init", lambda *a, **kw: bad.copy())
    b, st = C.optimize_hash_centers(_hier_centroids(k), bits, _cfg(n_clusters=k, sweeps=10, patience=4))
    assert st["init_violations"] > 0
    assert st["violations"] == 0 and st["min_hamming"] >= st["d_max"]


def test_semantic_consistency_improves_over_init():
    k, bits = 32, 32
    w = _hier_centroids(k, groups=4, noise=0.5)
    b, st = C.optimize_hash_centers(w, bits, _cfg(n_clusters=k))
    assert st["violations"] == 0
    assert st["spearman"] > st["init_spearman"] + 0.3
    # the reported figure is what it says: Spearman of centre inner products with centroid cosines
    from scipy.stats import spearmanr

    wn = w / np.linalg.norm(w, axis=1, keepdims=True)
    iu = np.triu_indices(k, 1)
    ip = (b.astype(np.int64) @ b.T.astype(np.int64))[iu]
    assert st["spearman"] == pytest.approx(spearmanr(ip, (wn @ wn.T)[iu]).statistic)


def test_pseudo_labels_recover_planted_clusters_and_shared_by_bit_lengths():
    x, truth = _planted()
    c = C.compute_centers(x, _cfg())
    assert set(c.hash_centers) == {16, 32}
    table = np.zeros((6, 6), dtype=int)
    np.add.at(table, (truth, c.pseudo_labels), 1)
    # each planted cluster maps to exactly one label and vice versa
    assert ((table > 0).sum(axis=0) == 1).all() and ((table > 0).sum(axis=1) == 1).all()
    assert c.centroids.shape == (6, 8)
    np.testing.assert_allclose(np.linalg.norm(c.centroids, axis=1), 1.0, rtol=1e-5)
    # new videos from the same clusters get the same labels
    np.testing.assert_array_equal(C.assign_labels(x.mean(axis=1), c), c.pseudo_labels)


def test_determinism_same_seed_same_output():
    x, _ = _planted(seed=1)
    a = C.compute_centers(x, _cfg(seed=5))
    b = C.compute_centers(x, _cfg(seed=5))
    np.testing.assert_array_equal(a.pseudo_labels, b.pseudo_labels)
    np.testing.assert_array_equal(a.pca_components, b.pca_components)
    for bits in (16, 32):
        np.testing.assert_array_equal(a.hash_centers[bits], b.hash_centers[bits])


def test_pca_matches_svd():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((300, 12)) * np.arange(1, 13)).astype(np.float32)
    mean, comps = C.fit_pca(x, 5)
    _, _, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    np.testing.assert_allclose(np.abs(comps @ vt[:5].T), np.eye(5), atol=1e-4)
    assert C.fit_pca(x[:4], 50)[1].shape == (3, 12)  # p = min(pca_dim, D, N - 1)


def test_frame_means_chunked_h5_matches_numpy(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((37, 5, 7)).astype(np.float32)
    with h5py.File(tmp_path / "f.h5", "w") as h5:
        h5["feats"] = x
    monkeypatch.setattr(C, "_CHUNK_BYTES", 5 * 7 * 4 * 4)  # 4 videos per chunk
    with h5py.File(tmp_path / "f.h5", "r") as h5:
        np.testing.assert_allclose(C.frame_means(h5["feats"]), x.mean(axis=1, dtype=np.float64), atol=1e-6)
    x[3, 2, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        C.frame_means(x)


def test_bad_cluster_counts_and_bits():
    x, _ = _planted(n=30, k=3)
    with pytest.raises(InputError, match="more than"):
        C.compute_centers(x, _cfg(n_clusters=31))
    with pytest.raises(InputError, match="at least 2"):
        C.compute_centers(x, _cfg(n_clusters=1))
    with pytest.raises(InputError, match="multiple of 8"):
        C.compute_centers(x, _cfg(n_clusters=3, bits=[12]))


def test_round_trip_through_artifacts(tmp_path):
    x, _ = _planted(seed=2)
    c = C.compute_centers(x, _cfg(), features_sha256="ab" * 32)
    path = tmp_path / "c.h5"
    A.write_centers(path, c, A.provenance("centers", c.config, {"features": c.features_sha256}))
    r = A.read_centers(path)
    np.testing.assert_array_equal(r.pseudo_labels, c.pseudo_labels)
    np.testing.assert_allclose(r.centroids, c.centroids)
    np.testing.assert_allclose(r.kmeans_centroids, c.kmeans_centroids)
    for bits in (16, 32):
        np.testing.assert_array_equal(r.hash_centers[bits], c.hash_centers[bits])
        assert r.stats[bits]["violations"] == c.stats[bits]["violations"]
        assert r.stats[bits]["spearman"] == pytest.approx(c.stats[bits]["spearman"])
    assert r.config["n_clusters"] == 6 and r.features_sha256 == "ab" * 32
    np.testing.assert_array_equal(C.assign_labels(x.mean(axis=1), r), c.pseudo_labels)


# ------------------------------------------------------------------------------------------------------------
def _run_cli(args, capsys):
    from s5vh_cli.cli import main

    with pytest.raises(SystemExit) as e:
        main([*args])
        raise SystemExit(0)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_cli_writes_centres_and_reports(tmp_path, capsys):
    x, _ = _planted(n=120, k=4)
    feats = tmp_path / "f.h5"
    A.write_features(feats, x, [str(i) for i in range(len(x))], [f"/v/{i}.mp4" for i in range(len(x))],
                     backbone="b", backbone_sha256="", sampling="uniform", prov=A.provenance("extract", {}))
    out = tmp_path / "c.h5"
    code, stdout, _ = _run_cli(["centers", str(feats), "-o", str(out), "--clusters", "4", "--bits", "16,32",
                                "--pca-dim", "8", "--preset", "demo", "--json", "--quiet"], capsys)
    assert code == 0
    report = json.loads(stdout)
    assert [s["bits"] for s in report["stats"]] == [16, 32] and report["clusters"] == 4
    r = A.read_centers(out)
    assert r.features_sha256 == A.sha256_file(feats) and r.config["n_clusters"] == 4
    assert set(r.hash_centers) == {16, 32} and r.pseudo_labels.shape == (120,)
    with h5py.File(out) as h5:
        assert json.loads(h5.attrs["inputs_sha256"]) == {"features": r.features_sha256}

    code, _, err = _run_cli(["centers", str(out), "-o", str(tmp_path / "x.h5")], capsys)  # wrong stage
    assert code == 2 and "expected a features file" in err and "Traceback" not in err
    code, _, err = _run_cli(["centers", str(feats), "-o", str(tmp_path / "x.h5"), "--clusters", "121"], capsys)
    assert code == 2 and "more than" in err
    code, _, err = _run_cli(["centers", str(feats), "-o", str(tmp_path / "x.h5"), "--bits", "16,20"], capsys)
    assert code == 2 and "multiple of 8" in err
    code, _, err = _run_cli(["centers", str(feats), "-o", str(tmp_path / "x.h5"), "--clusters", "1"], capsys)
    assert code == 2 and "at least 2" in err
    assert not (tmp_path / "x.h5").exists()
