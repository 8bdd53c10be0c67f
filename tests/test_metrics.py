"""Metrics: a hand-computed example pins the formulas and the tie rule; the chunked evaluator matches naive loops."""

import json
import math
from fractions import Fraction as Fr

import h5py
import numpy as np
import pytest
import scipy.io

from s5vh_cli import artifacts, metrics
from s5vh_cli.artifacts import Codes
from s5vh_cli.cli import main
from s5vh_cli.codes import hamming
from s5vh_cli.errors import InputError, MismatchError
from s5vh_cli.evaluate import evaluate, load_labels

# ---------------------------------------------------------------------------------------------------------
# Worked example: 5 database codes (8 bits), 3 queries, labels over classes A, B, C, D (multi-hot).
#
#   row  code        labels        d(q1=0x00)  d(q2=0xFF)
#   r0   0b00000001  {B, C}        1           7
#   r1   0b00000000  {A}           0           8
#   r2   0b00000011  {A}           2           6
#   r3   0b00000010  {A}           1           7
#   r4   0b11111111  {B}           8           0
#
# q1 = 0x00, labels {A}.   Ranking by (distance, row): r1(0) r0(1) r3(1) r2(2) r4(8).
#   The tie at distance 1 puts r0 before r3 (row order).  rel = [1, 0, 1, 1, 0], 3 relevant in all.
#   AP@3 (SSVH, /K)  = (1/3) * (1/1 + 2/3)                 = 5/9
#   (had the tie gone r3 first: rel = [1,1,0,..], AP@3 = (1/3)(1 + 1) = 2/3 -- so this pins the tie rule)
#   P@3 = 2/3, R@3 = 2/3
#   AP (full)        = (1/3) * (1/1 + 2/3 + 3/4)           = 29/36
# q2 = 0xFF, labels {A, C}. Ranking: r4(0) r2(6) r0(7) r3(7) r1(8).  rel = [0, 1, 1, 1, 1], 4 relevant.
#   AP@3             = (1/3) * (1/2 + 2/3)                 = 7/18
#   P@3 = 2/3, R@3 = 2/4 = 1/2
#   AP (full)        = (1/4) * (1/2 + 2/3 + 3/4 + 4/5)     = 163/240
# q3 = 0x00, labels {D}: nothing relevant.  AP@3 = 0, P@3 = 0, R@3 undefined (left out of the mean), AP = 0.
#
#   mAP@3 = (5/9 + 7/18 + 0) / 3 = 17/54
#   P@3   = (2/3 + 2/3 + 0) / 3  = 4/9
#   R@3   = (2/3 + 1/2) / 2      = 7/12
#   mAP   = (29/36 + 163/240 + 0) / 3
# PR at radius 0 and 1 for q1 alone: r=0 retrieves {r1}: P = 1, R = 1/3; r=1 retrieves {r1, r0, r3}: P = 2/3, R = 2/3.
# ---------------------------------------------------------------------------------------------------------
DB = np.array([[0b00000001], [0b00000000], [0b00000011], [0b00000010], [0b11111111]], dtype=np.uint8)
DB_LABELS = np.array([[0, 1, 1, 0], [1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0]])
Q = np.array([[0x00], [0xFF], [0x00]], dtype=np.uint8)
Q_LABELS = np.array([[1, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]])


def test_worked_example_by_hand():
    res = evaluate(Q, Q_LABELS, DB, DB_LABELS, bits=8, ks=(3,))
    assert res["map_at_k"]["3"] == pytest.approx(float(Fr(17, 54)), abs=1e-12)
    assert res["precision_at_k"]["3"] == pytest.approx(float(Fr(4, 9)), abs=1e-12)
    assert res["recall_at_k"]["3"] == pytest.approx(float(Fr(7, 12)), abs=1e-12)
    assert res["map"] == pytest.approx(float((Fr(29, 36) + Fr(163, 240)) / 3), abs=1e-12)
    assert res["queries_without_relevant"] == 1
    one = evaluate(Q[:1], Q_LABELS[:1], DB, DB_LABELS, bits=8, ks=(3,))
    assert one["map_at_k"]["3"] == pytest.approx(5 / 9)
    pr = one["pr_curve"]
    assert pr["precision"][:2] == pytest.approx([1.0, 2 / 3]) and pr["recall"][:2] == pytest.approx([1 / 3, 2 / 3])
    assert pr["recall"][-1] == pytest.approx(1.0)
    direct = metrics.pr_curve(hamming(Q[:1], DB), metrics.relevance(Q_LABELS[:1], DB_LABELS), bits=8)
    assert direct["precision"] == pr["precision"] and direct["recall"] == pr["recall"]


def test_ap_at_k_rows_directly():
    rel = np.array([[1, 0, 1], [0, 1, 1], [0, 0, 0]], dtype=bool)
    assert metrics.ap_at_k(rel, 3).tolist() == pytest.approx([5 / 9, 7 / 18, 0.0])
    assert metrics.map_at_k(rel, 3) == pytest.approx(17 / 54)


def test_relevance_multi_hot_and_single_label_paths_agree(rng):
    single = np.eye(5, dtype=np.uint8)[rng.integers(0, 5, 40)]
    multi = single.copy()
    multi[0, (multi[0].argmax() + 1) % 5] = 1  # one multi-label row forces the dot-product path
    a = metrics.relevance(single, single)
    b = (single.astype(float) @ single.T.astype(float)) > 0
    assert (a == b).all()
    assert (metrics.relevance(multi, single) == ((multi.astype(float) @ single.T) > 0)).all()


def _naive(q, ql, db, dl, ks):
    """Loops over queries the way the released code does, with an explicit (distance, row) order."""
    d = hamming(q, db)
    out = {k: [] for k in ks}
    for i in range(len(q)):
        order = sorted(range(len(db)), key=lambda j: (d[i, j], j))
        rel = [float(ql[i] @ dl[j] > 0) for j in order]
        for k in ks:
            x = p = 0.0
            for r in range(k):
                if rel[r]:
                    x += 1
                    p += x / (r + 1)
            out[k].append(p / k)
    return {k: float(np.mean(v)) for k, v in out.items()}


@pytest.mark.parametrize("chunk", [1, 7, None])
def test_chunked_evaluator_matches_naive_loops(rng, chunk):
    db = rng.integers(0, 256, size=(120, 2), dtype=np.uint8)  # 16 bits: many ties
    q = db[:30]
    dl = (rng.random((120, 6)) < 0.25).astype(np.uint8)
    ql = dl[:30]
    res = evaluate(q, ql, db, dl, bits=16, ks=(5, 20, 100), chunk=chunk)
    ref = _naive(q, ql, db, dl, (5, 20, 100))
    for k in (5, 20, 100):
        assert res["map_at_k"][str(k)] == pytest.approx(ref[k], abs=1e-12)
    no_full = evaluate(q, ql, db, dl, bits=16, ks=(5, 20, 100), chunk=chunk, full_map=False, pr=False)
    assert no_full["map_at_k"] == res["map_at_k"] and no_full["map"] is None and "pr_curve" not in no_full


def test_evaluate_checks_shapes():
    with pytest.raises(MismatchError):
        evaluate(Q, Q_LABELS[:2], DB, DB_LABELS, bits=8)
    with pytest.raises(MismatchError):
        evaluate(Q, Q_LABELS[:, :3], DB, DB_LABELS, bits=8)


def test_mat_and_hdf5_label_loading(tmp_path):
    lab = np.eye(4, dtype=np.uint8)[[0, 1, 2, 3, 1, 0]]
    scipy.io.savemat(tmp_path / "v5.mat", {"labels": lab, "other": np.ones((2, 2))})
    scipy.io.savemat(tmp_path / "act.mat", {"q_label": lab})
    scipy.io.savemat(tmp_path / "ids.mat", {"y": np.array([0, 1, 2, 3, 1, 0])})
    with h5py.File(tmp_path / "v73.mat", "w") as f:  # MATLAB v7.3 is HDF5 with the transpose stored
        f["labels"] = lab.T
    with h5py.File(tmp_path / "ours.h5", "w") as f:
        f["labels"] = lab
    for name in ("v5.mat", "act.mat", "v73.mat", "ours.h5", "ids.mat"):
        assert (load_labels(tmp_path / name, n=6) == lab).all(), name
    assert (load_labels(tmp_path / "act.mat", n=6, key="q_label") == lab).all()
    with pytest.raises(InputError, match="re_label"):
        load_labels(tmp_path / "act.mat", n=6, key="re_label")
    with pytest.raises(MismatchError):
        load_labels(tmp_path / "v5.mat", n=5)
    (tmp_path / "bad.mat").write_bytes(b"garbage")
    with pytest.raises(Exception) as e:
        load_labels(tmp_path / "bad.mat")
    assert "bad.mat" in str(e.value)


def _codes_file(path, codes, model="m" * 64):
    c = Codes(path=None, codes=codes, ids=[str(i) for i in range(len(codes))], paths=[""] * len(codes),
              bits=codes.shape[1] * 8, model_sha256=model)
    artifacts.write_codes(path, c, artifacts.provenance("encode"))


def cli(args, capsys):
    try:
        main([str(a) for a in args])
        rc = 0
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_eval_cli_protocols(tmp_path, capsys):
    _codes_file(tmp_path / "q.h5", Q)
    _codes_file(tmp_path / "db.h5", DB)
    scipy.io.savemat(tmp_path / "q_label.mat", {"q_label": Q_LABELS})
    scipy.io.savemat(tmp_path / "re_label.mat", {"re_label": DB_LABELS})
    rc, out, err = cli(["eval", tmp_path / "q.h5", "--labels", tmp_path / "q_label.mat", "--database",
                        tmp_path / "db.h5", "--db-labels", tmp_path / "re_label.mat", "--protocol", "act",
                        "--k", "3", "--json"], capsys)
    assert rc == 0, err
    res = json.loads(out)
    assert res["map_at_k"]["3"] == pytest.approx(17 / 54) and res["self_included"] is False
    assert len(res["pr_curve"]["precision"]) == 9
    # fcv: the whole set is query and database, self included (each query finds itself at distance 0)
    scipy.io.savemat(tmp_path / "db_labels.mat", {"labels": DB_LABELS})
    rc, out, _ = cli(["eval", tmp_path / "db.h5", "--labels", tmp_path / "db_labels.mat", "--protocol", "fcv",
                      "--k", "1", "--json"], capsys)
    res = json.loads(out)
    assert rc == 0 and res["self_included"] and res["map_at_k"]["1"] == 1.0
    rc, out, _ = cli(["eval", tmp_path / "db.h5", "--labels", tmp_path / "db_labels.mat"], capsys)
    assert rc == 0 and "mAP@K" in out
    rc, _, err = cli(["eval", tmp_path / "q.h5", "--labels", tmp_path / "q_label.mat", "--protocol", "ucf"], capsys)
    assert rc == 2 and "--database" in err
    _codes_file(tmp_path / "other.h5", DB, model="o" * 64)
    rc, _, err = cli(["eval", tmp_path / "q.h5", "--labels", tmp_path / "q_label.mat", "-d", tmp_path / "other.h5",
                      "--db-labels", tmp_path / "re_label.mat", "--protocol", "act"], capsys)
    assert rc == 2 and "model" in err
    rc, _, err = cli(["eval", tmp_path / "q.h5", "--labels", tmp_path / "q_label.mat", "--k", "0"], capsys)
    assert rc == 2


def test_plots_written(tmp_path, rng):
    pytest.importorskip("matplotlib")
    from s5vh_cli.plots import write_plots

    db = rng.integers(0, 256, size=(60, 2), dtype=np.uint8)
    lab = np.eye(3, dtype=np.uint8)[rng.integers(0, 3, 60)]
    res = evaluate(db, lab, db, lab, bits=16, ks=(5, 10))
    files = write_plots(res, db, lab, tmp_path / "plots")
    assert sorted(p.name for p in files) == ["map_at_k.png", "pr_curve.png", "tsne.png"]
    assert all(p.stat().st_size > 1000 for p in files)


def test_plots_without_matplotlib_is_one_line(monkeypatch):
    import builtins

    from s5vh_cli import plots

    real = builtins.__import__

    def fake(name, *a, **kw):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(InputError, match=r"s5vh\[plots\]"):
        plots._pyplot()


def test_tsne_separates_clusters(rng):
    from s5vh_cli.plots import tsne

    a = rng.normal(size=(20, 2))
    b = rng.normal(size=(20, 2)) + 20
    x = np.vstack([a, b])
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    y = tsne(d, perplexity=5, iters=1000)
    e = np.sqrt(((y[:, None] - y[None]) ** 2).sum(-1))
    np.fill_diagonal(e, np.inf)
    nearest = e.argmin(1)
    assert ((nearest < 20) == (np.arange(40) < 20)).all()  # every point's neighbour is from its own cluster
    assert math.isfinite(float(y.sum()))
