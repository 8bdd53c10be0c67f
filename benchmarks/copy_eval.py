"""Scoring of the copy-detection benchmark (benchmarks/datasets/copy_detection.py), with standard errors.

Segment copies (query vs database):
  top1          exact-segment top-1: share of copy queries whose source segment is ranked first
  map           mAP@K at each relevance level (``exact``, ``same_shot``), SSVH convention (AP normalised by K,
                so with one relevant segment ``exact`` mAP@K is at most 1/K), as ``s5vh eval`` computes it
  per_transform top-1 and mAP@K per copy kind (singles, pairs, ``natural``, ``shake``, ``refilm``) and per family

Partial copies (partial vs long): for each query the rank of its long source video and, when the method
reports a time range, whether the range of its first answer is right: same video, and both ends within
``tol`` seconds (1 s) of the truth in ``partial_truth.csv``. Methods that return no range get "n/a".

A method enters either as files or as predictions:
  - codes files (``s5vh encode`` or benchmarks.baselines): ranking by Hamming distance, then database row;
  - features files (``s5vh extract``): cosine of the mean frame features (the float baseline), then row;
  - partial-copy predictions, JSON lines, one per query, best answer first (what segment search returns):
        {"query": "long_03_p02_crop.mp4",
         "results": [{"video": "long_03.mp4", "start_s": 12.4, "end_s": 18.0}, {"video": "long_05.mp4"}]}
    ``video`` and ``query`` are matched by file name; ``start_s``/``end_s`` (seconds in the long video) are
    optional. A query absent from the file, or whose source is absent from its results, counts as a miss.

Usage: python -m benchmarks.copy_eval --data DIR --query Q.h5 --database DB.h5 [--partial P.h5 --long L.h5 |
       --partial-predictions P.jsonl] [--ks 1,5,10] [-o scores.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

import numpy as np

from s5vh_cli.errors import InputError, MismatchError, S5VHError

TOLERANCE_S = 1.0
FAMILIES = {"natural": "natural", "shake": "natural", "refilm": "natural"}  # else: "pair" if "+" in kind, "single"


def _name(p: str) -> str:
    return PurePosixPath(str(p).replace("\\", "/")).name


# ----------------------------------------------------------------------------------------------------------
# loading and ranking
# ----------------------------------------------------------------------------------------------------------
def load_vectors(path: str | Path) -> tuple[str, np.ndarray, list[str]]:
    """("hamming", packed codes, ids) for a codes file, ("cosine", unit mean features, ids) for a features file."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    with h5py.File(path, "r") as f:
        is_codes = "codes" in f
    if is_codes:
        from s5vh_cli.artifacts import read_codes

        c = read_codes(path)
        return "hamming", c.codes, list(c.ids)
    from s5vh_cli.artifacts import read_features

    f = read_features(path, with_hash=False)
    m = f.feats.astype(np.float64).mean(axis=1)
    m /= np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
    return "cosine", m, list(f.ids)


def full_order(kind: str, query: np.ndarray, db: np.ndarray) -> np.ndarray:
    """Whole ranking [Q, N]: Hamming distance ascending or cosine descending, ties by database row."""
    if kind == "hamming":
        from s5vh_cli.codes import full_ranking, hamming

        return full_ranking(hamming(query, db))
    if kind == "cosine":
        return np.argsort(-(query @ db.T), axis=1, kind="stable")
    raise InputError(f"unknown ranking kind {kind!r}")


def ranking(query_path: str | Path, db_path: str | Path) -> tuple[np.ndarray, list[str], list[str]]:
    """Full ranking of the database for every query of two files of one kind; (order, query ids, db ids)."""
    qk, q, qids = load_vectors(query_path)
    dk, d, dids = load_vectors(db_path)
    if qk != dk:
        raise MismatchError(f"{query_path} holds {qk} vectors, {db_path} {dk} ones: give two codes or two features files")
    if q.shape[1] != d.shape[1]:
        raise MismatchError(f"{query_path} and {db_path} have different widths ({q.shape[1]} vs {d.shape[1]})")
    return full_order(qk, q, d), qids, dids


# ----------------------------------------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------------------------------------
def mean_se(x: Iterable[float]) -> dict:
    """Mean, its standard error (sample std / sqrt(n); for 0/1 values this is the binomial one) and n."""
    a = np.asarray(list(x), dtype=np.float64)
    n = int(a.size)
    if n == 0:
        return {"mean": None, "se": None, "n": 0}
    se = float(a.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return {"mean": float(a.mean()), "se": se, "n": n}


# ----------------------------------------------------------------------------------------------------------
# segment copies
# ----------------------------------------------------------------------------------------------------------
def segment_per_query(order: np.ndarray, q_labels: dict[str, np.ndarray], db_labels: dict[str, np.ndarray],
                      ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Per-query values: ``top1`` (exact source ranked first) and ``ap@K/<level>`` for every level and K."""
    from s5vh_cli.metrics import ap_at_k, ranked_relevance, relevance

    out: dict[str, np.ndarray] = {}
    for level in q_labels:
        rr = ranked_relevance(relevance(q_labels[level], db_labels[level]), order)
        if level == "exact":
            out["top1"] = rr[:, 0].astype(np.float64)
        for k in ks:
            out[f"ap@{k}/{level}"] = ap_at_k(rr, k)  # normalised by K even past the database, as s5vh eval
    if "top1" not in out:
        raise InputError("segment scoring needs the 'exact' relevance level")
    return out


def family(kind: str) -> str:
    return FAMILIES.get(kind, "pair" if "+" in kind else "single")


def summarize_segments(per_query: dict[str, np.ndarray], kinds: Sequence[str]) -> dict:
    """Means +- standard errors overall, per copy kind and per family (single, pair, natural)."""
    doc = {"top1": mean_se(per_query["top1"]),
           "map": {key.split("/", 1)[1]: {} for key in per_query if key.startswith("ap@")}}
    for key, v in per_query.items():
        if key.startswith("ap@"):
            k, level = key[3:].split("/", 1)
            doc["map"][level][k] = mean_se(v)
    kinds = np.asarray(list(kinds))
    if len(kinds) != len(per_query["top1"]):
        raise MismatchError(f"{len(kinds)} copy kinds for {len(per_query['top1'])} queries")
    groups: dict[str, np.ndarray] = {k: kinds == k for k in dict.fromkeys(kinds)}
    fams = np.asarray([family(k) for k in kinds])
    doc["per_transform"] = {}
    doc["per_family"] = {}
    for target, masks in (("per_transform", groups), ("per_family", {f: fams == f for f in dict.fromkeys(fams)})):
        for g, mask in masks.items():
            doc[target][g] = {key if key == "top1" else key.replace("ap@", "map@"): mean_se(v[mask])
                              for key, v in per_query.items()}
    return doc


# ----------------------------------------------------------------------------------------------------------
# partial copies
# ----------------------------------------------------------------------------------------------------------
def time_range_ok(pred: tuple[float, float] | None, truth: tuple[float, float], tol: float = TOLERANCE_S) -> bool:
    """Both ends of the reported range within ``tol`` seconds of the true range in the long video."""
    if pred is None:
        return False
    return abs(float(pred[0]) - truth[0]) <= tol and abs(float(pred[1]) - truth[1]) <= tol


def score_partial(truth: list[dict], predictions: dict[str, list[dict]], tol: float = TOLERANCE_S) -> dict:
    """Rank of the long source per query, and (when ranges are reported) time-range accuracy of the first answer.

    ``truth`` rows: query, long_video, start_s, end_s, transform (partial_truth.csv). ``predictions``: query
    file name -> ranked results ``{"video", optional "start_s", "end_s"}``.
    """
    ranks, top1, ok, kinds = [], [], [], []
    has_ranges = any("start_s" in r for res in predictions.values() for r in res)
    for t in truth:
        res = predictions.get(_name(t["query"]), [])
        videos = [_name(r["video"]) for r in res]
        src = _name(t["long_video"])
        rank = videos.index(src) + 1 if src in videos else math.inf
        ranks.append(rank)
        top1.append(1.0 if rank == 1 else 0.0)
        kinds.append(t["transform"])
        if has_ranges:
            first = res[0] if res else {}
            pred = (first["start_s"], first["end_s"]) if "start_s" in first and "end_s" in first else None
            ok.append(1.0 if rank == 1 and time_range_ok(pred, (t["start_s"], t["end_s"]), tol) else 0.0)
    finite = [r for r in ranks if math.isfinite(r)]
    doc = {"n": len(truth), "top1": mean_se(top1),
           "mrr": mean_se([1.0 / r for r in ranks]),
           "median_rank": float(np.median(ranks)) if ranks else None,
           "missing": len(ranks) - len(finite),
           "time_range": mean_se(ok) if has_ranges else "n/a", "tolerance_s": tol, "per_transform": {}}
    kinds_a = np.asarray(kinds)
    for k in dict.fromkeys(kinds):
        m = kinds_a == k
        doc["per_transform"][k] = {"top1": mean_se(np.asarray(top1)[m]),
                                   "time_range": mean_se(np.asarray(ok)[m]) if has_ranges else "n/a"}
    return doc


def predictions_from_order(order: np.ndarray, qids: list[str], dids: list[str]) -> dict[str, list[dict]]:
    """Whole-video rankings as predictions without time ranges."""
    return {_name(q): [{"video": dids[j]} for j in order[i]] for i, q in enumerate(qids)}


def read_predictions(path: str | Path) -> dict[str, list[dict]]:
    """Partial-copy predictions (JSON lines, see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such predictions file")
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            results = [dict(r) for r in rec["results"]]
            for r in results:
                r["video"] = str(r["video"])
                if ("start_s" in r) != ("end_s" in r):
                    raise ValueError("start_s and end_s go together")
            out[_name(rec["query"])] = results
        except (ValueError, KeyError, TypeError) as e:
            raise InputError(f"{path}:{n}: not a prediction line ({e})") from None
    return out


# ----------------------------------------------------------------------------------------------------------
# one call for a whole method
# ----------------------------------------------------------------------------------------------------------
def evaluate(data: str | Path, query: str | Path | None = None, database: str | Path | None = None, *,
             partial: str | Path | None = None, long: str | Path | None = None,
             partial_predictions: str | Path | dict | None = None, ks: Sequence[int] = (1, 5, 10),
             levels: Sequence[str] = ("exact", "same_shot"), tol: float = TOLERANCE_S,
             only: Iterable[str] | None = None) -> dict:
    """Score one method on a built copy-detection dataset. Every part is optional; give what the method has.
    ``only``: score just these copy queries (file names), so that methods run on different samples compare."""
    from benchmarks.datasets import align_labels, read_manifest
    from benchmarks.datasets.copy_detection import read_truth

    data = Path(data)
    doc: dict = {}
    if query is not None and database is not None:
        order, qids, dids = ranking(query, database)
        if only is not None:
            keep_names = {_name(x) for x in only}
            rows = [i for i, q in enumerate(qids) if _name(q) in keep_names]
            if len(rows) < len(keep_names):
                raise MismatchError(f"{query}: holds {len(rows)} of the {len(keep_names)} queries to score")
            order, qids = order[rows], [qids[i] for i in rows]
        lab = data / "labels"
        ql = {lv: align_labels(lab / f"query_{lv}.h5", qids) for lv in levels}
        dl = {lv: align_labels(lab / f"database_{lv}.h5", dids) for lv in levels}
        kind_of = {_name(r["path"]): r["transform"] for r in read_manifest(data) if r["split"] == "query"}
        missing = [q for q in qids if _name(q) not in kind_of]
        if missing:
            raise MismatchError(f"{query}: {len(missing)} ids are not queries of {data} (first: {missing[0]})")
        doc["segments"] = summarize_segments(segment_per_query(order, ql, dl, ks), [kind_of[_name(q)] for q in qids])
    if partial_predictions is not None or (partial is not None and long is not None):
        truth = read_truth(data)
        if isinstance(partial_predictions, dict):
            preds = partial_predictions
        elif partial_predictions is not None:
            preds = read_predictions(partial_predictions)
        else:
            order, qids, dids = ranking(partial, long)
            preds = predictions_from_order(order, qids, dids)
        doc["partial"] = score_partial(truth, preds, tol)
    if not doc:
        raise InputError("nothing to score: give --query and --database, and/or --partial and --long "
                         "(or --partial-predictions)")
    return doc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.copy_eval", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="built copy-detection dataset (holds manifest.csv)")
    ap.add_argument("--query", help="codes or features of the query split")
    ap.add_argument("--database", help="codes or features of the database split")
    ap.add_argument("--partial", help="codes or features of the partial split")
    ap.add_argument("--long", help="codes or features of the long split")
    ap.add_argument("--partial-predictions", help="JSON lines of ranked long videos with time ranges")
    ap.add_argument("--ks", default="1,5,10", help="mAP@K cut-offs")
    ap.add_argument("--queries", help="score only the copy queries named in this file (one file name a line)")
    ap.add_argument("--tolerance", type=float, default=TOLERANCE_S, help="seconds allowed at each end of a range")
    ap.add_argument("-o", "--out", help="write the scores here as JSON (default: stdout)")
    args = ap.parse_args(argv)
    try:
        ks = [int(k) for k in args.ks.split(",") if k.strip()]
        doc = evaluate(args.data, args.query, args.database, partial=args.partial, long=args.long,
                       partial_predictions=args.partial_predictions, ks=ks, tol=args.tolerance,
                       only=Path(args.queries).read_text().split() if args.queries else None)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except S5VHError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(doc, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
