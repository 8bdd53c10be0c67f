"""benchmarks.paired_ap: per-query AP@K of two code sets, their means and the paired difference."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not an installed package

from benchmarks import paired_ap  # noqa: E402
from benchmarks.datasets import write_labels  # noqa: E402
from s5vh_cli import artifacts  # noqa: E402


def _codes(path: Path, bits01: np.ndarray) -> str:
    c = artifacts.Codes(None, np.packbits(bits01.astype(np.uint8), axis=1), [f"v{i}" for i in range(len(bits01))],
                        [f"v{i}.mp4" for i in range(len(bits01))], bits01.shape[1])
    artifacts.write_codes(path, c, artifacts.provenance("test"))
    return str(path)


def test_paired_difference_matches_hand_computation(tmp_path, capsys):
    # 2 queries, 3 database videos, 8 bits; classes: q0 -> 0, q1 -> 1; db: 0, 1, 0
    db = np.array([[0] * 8, [1] * 8, [0] * 7 + [1]])
    q = np.array([[0] * 8, [1] * 8])
    # method B: query 0 is closest to the wrong video (db 1), query 1 unchanged
    qb = np.array([[1] * 8, [1] * 8])
    labels_q, labels_db = np.array([[1, 0], [0, 1]]), np.array([[1, 0], [0, 1], [1, 0]])
    write_labels(tmp_path, "query_c", dataset="t", split="query", level="c", paths=["query/a", "query/b"],
                 labels=labels_q, class_names=["x", "y"])
    write_labels(tmp_path, "database_c", dataset="t", split="database", level="c",
                 paths=["database/a", "database/b", "database/c"], labels=labels_db, class_names=["x", "y"])
    a = (_codes(tmp_path / "qa.h5", q), _codes(tmp_path / "db.h5", db))
    b = (_codes(tmp_path / "qb.h5", qb), a[1])
    rows = paired_ap.compare(a, b, str(tmp_path / "labels"), ["c"], [1, 3])
    r1, r3 = rows
    # A: both queries find a relevant video first -> AP@1 = 1, 1; B: q0 ranks db1 (wrong) first -> 0, 1
    assert (r1["a"], r1["b"], r1["diff"]) == (1.0, 0.5, 0.5)
    assert np.isclose(r1["diff_sem"], np.std([1.0, 0.0], ddof=1) / np.sqrt(2))
    # AP@3 (normalised by K): A q0 ranks db0, db2, db1 -> (1 + 1) / 3; q1 ranks db1 first -> 1/3
    # B: q0 (all ones) is at distance 0 from db1, 7 from db2, 8 from db0; computed the long way here
    d_b0 = np.abs(qb[0][None] - db).sum(1)
    order = np.lexsort((np.arange(3), d_b0))
    rel = labels_db[order, 0]
    ap_b0 = sum(rel[r] * rel[:r + 1].mean() for r in range(3)) / 3
    assert np.isclose(r3["a"], ((2 / 3) + (1 / 3)) / 2)
    assert np.isclose(r3["b"], (ap_b0 + 1 / 3) / 2)
    assert paired_ap.main(["--a", *a, "--b", *b, "--labels-dir", str(tmp_path / "labels"), "--levels", "c",
                           "--ks", "1", "--names", "A,B"]) == 0
    assert "| c | 1 | 1.0000 ± 0.0000 | 0.5000 ± 0.5000 | +0.5000 ± 0.5000 |" in capsys.readouterr().out


def test_row_count_mismatch_is_one_line_error(tmp_path, capsys):
    write_labels(tmp_path, "query_c", dataset="t", split="query", level="c", paths=["query/a"],
                 labels=np.array([[1]]), class_names=["x"])
    write_labels(tmp_path, "database_c", dataset="t", split="database", level="c", paths=["database/a"],
                 labels=np.array([[1]]), class_names=["x"])
    q = _codes(tmp_path / "q.h5", np.zeros((2, 8)))
    rc = paired_ap.main(["--a", q, q, "--b", q, q, "--labels-dir", str(tmp_path / "labels"), "--levels", "c"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "label rows" in err
