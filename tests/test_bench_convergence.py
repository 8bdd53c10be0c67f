"""benchmarks.bench_convergence on tiny synthetic features: both curves, the files, and a zero alignment weight."""

import json
import math
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not an installed package

from benchmarks import bench_convergence  # noqa: E402
from s5vh_cli import artifacts  # noqa: E402

T, F, CLASSES = 8, 16, 3


def _features(path, n, seed):
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, CLASSES, n)
    # class-dependent means so that the retrieval numbers mean something
    feats = (rng.standard_normal((CLASSES, 1, F)) * 2.0)[cls] + rng.standard_normal((n, T, F))
    artifacts.write_features(path, feats.astype(np.float32), [f"v{i}" for i in range(n)],
                             [f"/videos/{path.stem}/v{i}.mp4" for i in range(n)], backbone="test",
                             backbone_sha256="", sampling="uniform", prov=artifacts.provenance("extract"))
    return cls


def _labels(path, cls, n_classes=CLASSES):
    with h5py.File(path, "w") as f:
        f["labels"] = np.eye(n_classes, dtype=np.uint8)[cls]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("conv")
    _features(d / "train.h5", 40, 0)
    qc = _features(d / "query.h5", 10, 1)
    dc = _features(d / "database.h5", 24, 2)
    for split, cls in (("query", qc), ("database", dc)):
        _labels(d / f"{split}_labels.h5", cls)
        _labels(d / f"{split}_parity.h5", cls % 2, 2)
    out = d / "out"
    argv = ["--train", d / "train.h5", "--query", d / "query.h5", "--database", d / "database.h5",
            "--query-labels", d / "query_labels.h5", d / "query_parity.h5",
            "--db-labels", d / "database_labels.h5", d / "database_parity.h5",
            "--bits", "16", "--epochs", "2", "--preset", "demo", "--batch-size", "16", "--ks", "5,10",
            "--ssm-backend", "torch", "--device", "cpu", "--out", out]
    rc = bench_convergence.main([str(a) for a in argv])
    assert rc == 0
    return out


def test_both_curves_one_finite_value_per_epoch(tiny_run):
    res = json.loads((tiny_run / "results.json").read_text())
    assert res["config"]["levels"] == ["labels", "parity"] and res["config"]["ks"] == [5, 10]
    assert set(res["runs"]) == {"with_ca", "no_ca"}
    for run in res["runs"].values():
        assert run["done"] and [e["epoch"] for e in run["epochs"]] == [1, 2]
        for e in run["epochs"]:
            for lvl in ("labels", "parity"):
                vals = [e["map_at_k"][lvl][k] for k in ("5", "10")]
                assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in vals)
    # same seed, same batches: the two runs differ only by the alignment term
    assert res["runs"]["with_ca"]["a_cluster"] == pytest.approx(0.1)


def test_no_ca_run_has_zero_alignment_weight(tiny_run):
    res = json.loads((tiny_run / "results.json").read_text())
    for e in res["runs"]["no_ca"]["epochs"]:
        assert e["a_cluster"] == 0.0 and e["ca_term"] == 0.0
        assert e["ca"] > 0  # the term is still measured, just not weighted in
        assert e["loss"] == pytest.approx(e["rec"] + 1.0 * e["dcl"], rel=1e-6, abs=1e-7)
    for e in res["runs"]["with_ca"]["epochs"]:
        assert e["loss"] == pytest.approx(e["rec"] + e["dcl"] + 0.1 * e["ca"], rel=1e-6, abs=1e-7)
        assert e["ca_term"] > 0


def test_files_written(tiny_run):
    md = (tiny_run / "results.md").read_text()
    assert "**labels** relevance" in md and "**parity** relevance" in md and "no CA mAP@10" in md
    png = tiny_run / "convergence.png"
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # the plot is optional: the run says why it is missing instead
        assert not png.exists()
        assert "matplotlib is not installed" in json.loads((tiny_run / "results.json").read_text())["plot"]
    else:
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tiny_run / "centers.h5").is_file()
    assert (tiny_run / "models" / "with_ca.pt").is_file() and (tiny_run / "models" / "no_ca.pt").is_file()
    res = json.loads((tiny_run / "results.json").read_text())
    cmds = res["commands"]
    assert cmds[0].startswith("s5vh centers") and sum(c.startswith("s5vh train") for c in cmds) == 2
    assert any("--a-cluster 0.0" in c for c in cmds) and any("--a-cluster 0.1" in c for c in cmds)


def test_last_epoch_matches_saved_model(tiny_run):
    """The per-epoch hook sees the weights that training saves: the last epoch's mAP comes back from the file."""
    from s5vh_cli.checkpoint import load_model
    from s5vh_cli.encode import encode_array
    from s5vh_cli.evaluate import evaluate, load_labels

    res = json.loads((tiny_run / "results.json").read_text())
    cfg = res["config"]
    model, _ = load_model(tiny_run / "models" / "no_ca.pt", ssm_backend="torch")
    q = artifacts.read_features(cfg["query"])
    d = artifacts.read_features(cfg["database"])
    got = evaluate(encode_array(model, q.feats), load_labels(cfg["query_labels"][0]), encode_array(model, d.feats),
                   load_labels(cfg["db_labels"][0]), 16, ks=(5, 10), full_map=False, pr=False)["map_at_k"]
    assert got == res["runs"]["no_ca"]["epochs"][-1]["map_at_k"]["labels"]


def test_combine_runs_trained_apart(tiny_run, tmp_path):
    """Runs trained in separate processes (--runs) merge into the same result as one process."""
    res = json.loads((tiny_run / "results.json").read_text())
    parts = []
    for name in ("with_ca", "no_ca"):
        part = json.loads(json.dumps(res))
        other = "no_ca" if name == "with_ca" else "with_ca"
        part["runs"][other]["epochs"], part["runs"][other]["done"] = [], False
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(part))
        parts.append(path)
    assert bench_convergence.main(["--combine", *map(str, parts), "--out", str(tmp_path / "merged")]) == 0
    merged = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert merged["runs"] == res["runs"] and (tmp_path / "merged" / "results.md").is_file()
    bad = json.loads(parts[1].read_text())
    bad["config"]["bits"] = 32
    parts[1].write_text(json.dumps(bad))
    assert bench_convergence.main(["--combine", *map(str, parts), "--out", str(tmp_path / "m2")]) == 2
