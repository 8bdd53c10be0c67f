"""Partial copies: find the long video a short excerpt was cut from, and where, with window codes and voting.

Database videos and query excerpts are features sampled at a fixed rate (``s5vh extract --fps R --frames MAX``).
Each side is cut into windows (``s5vh_cli.encode.encode_segments``: what ``s5vh encode --segment`` stores), every
query window is searched by Hamming distance (top ``--topk`` database windows), and ``s5vh_cli.voting.vote``
turns the hits into (video, offset, time ranges). A query counts as found when its source video is ranked first;
its range is right when both ends of the matched video range are within ``--tolerance`` seconds of the truth.

Models: ``--model FILE`` (any `s5vh train` output, e.g. an S5VH model trained on short segments) and/or
``--methods lsh,itq`` fitted here on the database windows' frames. ``--rerank`` re-scores each query window's
hits with the frame descriptors in time order before voting (weights = alignment score instead of Hamming).

The truth file is JSON: a list of {"query": file name, "video": file name, "start": s, "end": s}.

Usage: python -m benchmarks.bench_partial --db DB.h5 --query Q.h5 --truth truth.json [--model M.pt ...]
       [--methods lsh,itq] [--bits 64] [--segment 4] [--hop 1] [--query-hop 1] [--topk 20] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from s5vh_cli.artifacts import read_features
from s5vh_cli.codes import hamming, topk_from_distances
from s5vh_cli.descriptors import sequence_similarity
from s5vh_cli.encode import encode_segments
from s5vh_cli.voting import vote


def _linear_model(method: str, db, bits: int, seed: int):
    from s5vh_cli.config import ModelConfig
    from s5vh_cli.linear import LinearHash, fit_itq, fit_lsh

    valid = [db.feats[i, : int(db.meta["valid_frames"][i])] for i in range(db.n)]
    x = np.concatenate(valid).astype(np.float64)
    cfg = ModelConfig(method=method, bits=bits, feature_dim=db.dim, frames=25)
    if method == "lsh":
        mean, proj = fit_lsh(x, bits, seed)
    else:
        mean, proj, _ = fit_itq(x, bits, 50, seed)
    return LinearHash(cfg).set_fit(mean, proj)


def evaluate(model, name: str, db, q, truth: dict, a) -> dict:
    t0 = time.perf_counter()
    dseg = encode_segments(model, db.feats, db.meta["frame_times"], db.meta["valid_frames"], a.segment, a.hop,
                           "frames" if a.rerank else "none", 8)
    t_db = time.perf_counter() - t0
    names = [Path(i).name for i in db.ids]
    db_video = [names[v] for v in dseg["video"]]
    results, found, right, errs = [], 0, 0, []
    t0 = time.perf_counter()
    for qi, qid in enumerate(q.ids):
        qs = encode_segments(model, q.feats[qi:qi + 1], q.meta["frame_times"][qi:qi + 1],
                             q.meta["valid_frames"][qi:qi + 1], a.segment, a.query_hop,
                             "frames" if a.rerank else "none", 8)
        d = hamming(qs["codes"], dseg["codes"])
        dist, rows = topk_from_distances(d, a.topk)
        weights = None
        if a.rerank:
            weights = [np.maximum(sequence_similarity(qs["descriptors"][i].astype(np.float32),
                                                      dseg["descriptors"][rows[i]].astype(np.float32)), 0.0) ** 4
                       for i in range(len(rows))]
        matches = vote(qs["start"], qs["end"], list(rows), list(dist), db_video, dseg["start"], dseg["end"],
                       model.cfg.bits, resolution=a.resolution, weights=weights)
        t = truth[Path(qid).name]
        top = matches[0] if matches else None
        ok = top is not None and top.video == t["video"]
        err = max(abs(top.video_start - t["start"]), abs(top.video_end - t["end"])) if ok else None
        found += ok
        right += bool(ok and err <= a.tolerance)
        if err is not None:
            errs.append(err)
        results.append({"query": Path(qid).name, "truth": t, "top": top.as_dict() if top else None,
                        "found": bool(ok), "range_error_s": err, "transform": t.get("transform")})
    t_q = time.perf_counter() - t0
    n = len(q.ids)
    row = {"model": name, "bits": model.cfg.bits, "n_query": n, "found_at_1": found / n,
           "range_within_tolerance": right / n, "median_range_error_s": float(np.median(errs)) if errs else None,
           "db_windows": int(len(dseg["codes"])), "encode_db_s": round(t_db, 2), "query_s": round(t_q / n, 3),
           "rerank": a.rerank}
    print(json.dumps(row), flush=True)
    return {"summary": row, "queries": results}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_partial", description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", required=True)
    ap.add_argument("--query", required=True)
    ap.add_argument("--truth", required=True)
    ap.add_argument("--model", action="append", default=[])
    ap.add_argument("--methods", default="")
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--segment", type=float, default=4.0)
    ap.add_argument("--hop", type=float, default=1.0)
    ap.add_argument("--query-hop", type=float, default=1.0)
    ap.add_argument("--topk", type=int, default=20)
    ap.add_argument("--resolution", type=float, default=1.0)
    ap.add_argument("--tolerance", type=float, default=1.0)
    ap.add_argument("--rerank", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    from s5vh_cli.checkpoint import load_model

    db, q = read_features(a.db), read_features(a.query)
    truth = {r["query"]: r for r in json.loads(Path(a.truth).read_text())}
    out = []
    for m in [x for x in a.methods.split(",") if x]:
        out.append(evaluate(_linear_model(m, db, a.bits, a.seed), m, db, q, truth, a))
    for path in a.model:
        model, _ = load_model(path)
        out.append(evaluate(model, Path(path).name, db, q, truth, a))
    if a.out:
        Path(a.out).write_text(json.dumps({"config": vars(a), "results": out}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
