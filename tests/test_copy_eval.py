"""benchmarks.copy_eval: time-range scoring of partial copies, the per-transform breakdown, end to end on a
tiny copy-detection build made from generated clips."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not an installed package

from clip_sources import fake_clip  # noqa: E402

from benchmarks import copy_eval as ce  # noqa: E402
from benchmarks.datasets import copy_detection as cd  # noqa: E402
from benchmarks.datasets import read_labels  # noqa: E402
from s5vh_cli.artifacts import Codes, provenance, write_codes  # noqa: E402
from s5vh_cli.errors import InputError, MismatchError  # noqa: E402


# ----------------------------------------------------------------------------------------------------------
# partial copies: rank of the long source and the time range
# ----------------------------------------------------------------------------------------------------------
def test_time_range_needs_both_ends_within_the_tolerance():
    truth = (10.0, 16.0)
    assert ce.time_range_ok((10.0, 16.0), truth)
    assert ce.time_range_ok((9.0, 17.0), truth)  # exactly 1 s off at each end
    assert not ce.time_range_ok((8.9, 16.0), truth)
    assert not ce.time_range_ok((10.0, 17.2), truth)
    assert not ce.time_range_ok((4.0, 22.0), truth)  # covering the range is not finding it
    assert not ce.time_range_ok(None, truth)
    assert ce.time_range_ok((8.5, 16.0), truth, tol=1.5)


TRUTH = [
    {"query": "long_00_p00_none.mp4", "long_video": "long_00.mp4", "start_s": 2.0, "end_s": 7.0, "transform": "none"},
    {"query": "long_00_p01_crop.mp4", "long_video": "long_00.mp4", "start_s": 20.0, "end_s": 24.0,
     "transform": "crop"},
    {"query": "long_01_p00_crop.mp4", "long_video": "long_01.mp4", "start_s": 0.0, "end_s": 3.0, "transform": "crop"},
    {"query": "long_01_p01_text.mp4", "long_video": "long_01.mp4", "start_s": 5.0, "end_s": 9.0, "transform": "text"},
]


def test_score_partial_ranks_and_ranges():
    preds = {
        # right video, right range
        "long_00_p00_none.mp4": [{"video": "long_00.mp4", "start_s": 2.4, "end_s": 6.5}, {"video": "long_01.mp4"}],
        # right video, range 3 s late
        "long_00_p01_crop.mp4": [{"video": "long/long_00.mp4", "start_s": 23.0, "end_s": 27.0}],
        # source second: rank 2, and a range that would be right does not count at rank 2
        "long_01_p00_crop.mp4": [{"video": "long_00.mp4", "start_s": 0.0, "end_s": 3.0},
                                 {"video": "long_01.mp4", "start_s": 0.0, "end_s": 3.0}],
        # long_01_p01_text.mp4 missing: a miss
    }
    doc = ce.score_partial(TRUTH, preds)
    assert doc["n"] == 4 and doc["missing"] == 1
    assert doc["top1"]["mean"] == pytest.approx(0.5)
    assert doc["top1"]["se"] == pytest.approx(np.std([1, 1, 0, 0], ddof=1) / 2)
    assert doc["mrr"]["mean"] == pytest.approx((1 + 1 + 0.5 + 0) / 4)
    assert doc["time_range"]["mean"] == pytest.approx(0.25)
    assert doc["per_transform"]["crop"]["top1"]["mean"] == pytest.approx(0.5)
    assert doc["per_transform"]["crop"]["time_range"]["mean"] == 0.0
    assert doc["per_transform"]["none"]["time_range"]["mean"] == 1.0


def test_score_partial_without_ranges_says_na():
    order = np.array([[0, 1], [1, 0], [1, 0], [0, 1]])
    preds = ce.predictions_from_order(order, [t["query"] for t in TRUTH], ["long_00.mp4", "long_01.mp4"])
    doc = ce.score_partial(TRUTH, preds)
    assert doc["time_range"] == "n/a" and doc["per_transform"]["crop"]["time_range"] == "n/a"
    assert doc["top1"]["mean"] == pytest.approx(0.5) and doc["median_rank"] == 1.5


def test_read_predictions(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"query": "partial/long_00_p00_none.mp4",
                             "results": [{"video": "long_00.mp4", "start_s": 1, "end_s": 2}]}) + "\n\n")
    assert ce.read_predictions(p) == {"long_00_p00_none.mp4": [{"video": "long_00.mp4", "start_s": 1, "end_s": 2}]}
    p.write_text('{"query": "a.mp4", "results": [{"video": "b.mp4", "start_s": 1}]}\n')
    with pytest.raises(InputError, match=r"p.jsonl:1: .*start_s and end_s go together"):
        ce.read_predictions(p)
    p.write_text('{"query": "a.mp4"}\n')
    with pytest.raises(InputError, match="p.jsonl:1: not a prediction line"):
        ce.read_predictions(p)


# ----------------------------------------------------------------------------------------------------------
# segment copies: top-1, mAP@K and the per-transform breakdown
# ----------------------------------------------------------------------------------------------------------
def test_per_transform_breakdown_and_families():
    # 3 database segments; 6 queries whose sources are 0,1,2,0,1,2
    exact_q = np.eye(3, dtype=np.uint8)[[0, 1, 2, 0, 1, 2]]
    order = np.array([[0, 1, 2], [0, 1, 2], [2, 0, 1], [1, 0, 2], [1, 2, 0], [0, 1, 2]])
    per = ce.segment_per_query(order, {"exact": exact_q}, {"exact": np.eye(3, dtype=np.uint8)}, ks=(1, 2))
    assert per["top1"].tolist() == [1, 0, 1, 0, 1, 0]
    assert per["ap@2/exact"].tolist() == pytest.approx([0.5, 0.25, 0.5, 0.25, 0.5, 0.0])
    kinds = ["crop", "crop", "mirror+text", "natural", "shake", "mirror+text"]
    doc = ce.summarize_segments(per, kinds)
    assert doc["top1"]["mean"] == pytest.approx(0.5) and doc["top1"]["n"] == 6
    assert doc["map"]["exact"]["2"]["mean"] == pytest.approx(2.0 / 6)
    assert doc["per_transform"]["crop"]["top1"] == {"mean": 0.5, "se": pytest.approx(0.5), "n": 2}
    assert doc["per_transform"]["mirror+text"]["top1"]["mean"] == 0.5
    assert doc["per_transform"]["shake"]["top1"]["n"] == 1 and math.isnan(doc["per_transform"]["shake"]["top1"]["se"])
    assert doc["per_family"]["natural"]["top1"]["mean"] == pytest.approx(0.5)  # natural + shake
    assert doc["per_family"]["pair"]["top1"]["n"] == 2 and doc["per_family"]["single"]["top1"]["n"] == 2
    assert doc["per_transform"]["crop"]["map@2/exact"]["mean"] == pytest.approx(0.375)
    with pytest.raises(MismatchError):
        ce.summarize_segments(per, kinds[:-1])


def test_ranking_breaks_ties_by_database_row():
    q = np.array([[0b11110000]], np.uint8)
    d = np.array([[0b11110001], [0b11110000], [0b11110010]], np.uint8)
    assert ce.full_order("hamming", q, d).tolist() == [[1, 0, 2]]
    f = np.array([[1.0, 0.0]])
    g = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    assert ce.full_order("cosine", f, g).tolist() == [[1, 2, 0]]


# ----------------------------------------------------------------------------------------------------------
# end to end on a tiny build
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    assets = tmp_path_factory.mktemp("assets")
    (assets / "clips").mkdir()
    fake_clip(assets / "clips" / "tree.avi", 6, 10, 1)
    fake_clip(assets / "clips" / "bikes.mp4", 5, 10, 3)
    out = tmp_path_factory.mktemp("cd")
    cd.build(assets, out, encoder="opencv", tiny=True, workers=1)
    return out


def _write(path, ids, codes):
    write_codes(path, Codes(path=None, codes=np.asarray(codes, np.uint8), ids=ids, paths=ids, bits=8 * len(codes[0]),
                            model_sha256="test"), provenance("test", {}, {}), {})


def test_evaluate_oracle_codes_score_one_and_a_wrong_order_is_refused(tiny, tmp_path):
    _, dids, _ = read_labels(tiny / "labels" / "database_exact.h5")
    ql, qids, _ = read_labels(tiny / "labels" / "query_exact.h5")
    _, lids, _ = read_labels(tiny / "labels" / "long_video.h5")
    pl, pids, _ = read_labels(tiny / "labels" / "partial_video.h5")
    # oracle codes: every copy carries its source's code, all codes far apart
    _write(tmp_path / "db.h5", dids, [[i, 255 - i] for i in range(len(dids))])
    _write(tmp_path / "q.h5", qids, [[int(r.argmax()), 255 - int(r.argmax())] for r in ql])
    _write(tmp_path / "long.h5", lids, [[i * 17, 0] for i in range(len(lids))])
    _write(tmp_path / "partial.h5", pids, [[int(r.argmax()) * 17, 0] for r in pl])
    doc = ce.evaluate(tiny, tmp_path / "q.h5", tmp_path / "db.h5", partial=tmp_path / "partial.h5",
                      long=tmp_path / "long.h5", ks=(1, 5))
    seg = doc["segments"]
    assert seg["top1"] == {"mean": 1.0, "se": 0.0, "n": len(qids)}
    assert set(seg["per_transform"]) == {*cd.TRANSFORMS, *cd.PAIRS, "shake", "refilm"}
    assert all(v["top1"]["mean"] == 1.0 for v in seg["per_transform"].values())
    assert seg["map"]["exact"]["5"]["mean"] == pytest.approx(0.2)  # one relevant segment, AP normalised by K
    assert doc["partial"]["top1"]["mean"] == 1.0 and doc["partial"]["time_range"] == "n/a"
    # ids in another order than the labels are matched by name, so the scores do not move
    _write(tmp_path / "q_rev.h5", qids[::-1], [[int(r.argmax()), 255 - int(r.argmax())] for r in ql[::-1]])
    assert ce.evaluate(tiny, tmp_path / "q_rev.h5", tmp_path / "db.h5")["segments"]["top1"]["mean"] == 1.0
    # only some queries scored: the others are left out, and a query the codes lack is an error
    few = ce.evaluate(tiny, tmp_path / "q.h5", tmp_path / "db.h5", only=[f"query/{q}" for q in qids[:5]])
    assert few["segments"]["top1"]["n"] == 5
    with pytest.raises(MismatchError, match="holds 0 of the 1 queries"):
        ce.evaluate(tiny, tmp_path / "q.h5", tmp_path / "db.h5", only=["nope.mp4"])
    # a codes file against a features-like mismatch of widths is one clear error
    _write(tmp_path / "db3.h5", dids, [[i, 0, 0] for i in range(len(dids))])
    with pytest.raises(MismatchError, match="different widths"):
        ce.evaluate(tiny, tmp_path / "q.h5", tmp_path / "db3.h5")


def test_cli_scores_predictions_with_time_ranges(tiny, tmp_path, capsys):
    truth = cd.read_truth(tiny)
    lines = [json.dumps({"query": t["query"], "results": [{"video": t["long_video"], "start_s": t["start_s"] + 0.5,
                                                            "end_s": t["end_s"] - 0.5}]}) for t in truth[1:]]
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n")
    rc = ce.main(["--data", str(tiny), "--partial-predictions", str(tmp_path / "p.jsonl"), "-o",
                  str(tmp_path / "s.json")])
    assert rc == 0
    doc = json.loads((tmp_path / "s.json").read_text())
    n = len(truth)
    assert doc["partial"]["n"] == n and doc["partial"]["missing"] == 1
    assert doc["partial"]["top1"]["mean"] == pytest.approx((n - 1) / n)
    assert doc["partial"]["time_range"]["mean"] == pytest.approx((n - 1) / n)
    assert ce.main(["--data", str(tiny)]) == 2
    assert "nothing to score" in capsys.readouterr().err
