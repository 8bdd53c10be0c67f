"""Precision and recall of `s5vh dedup`'s groups on the copy-detection benchmark.

The library is the benchmark's database segments plus every copy query (each copy is a duplicate of its source
segment); the truth pairs are the videos that share a source segment. For the automatic threshold and for a
sweep of given radii it reports pairwise precision and recall (a predicted pair = two videos in one group),
the share of false pairs that are at least neighbours in the same shot, and how many true groups came out whole.

    python -m benchmarks.bench_dedup --data .bench-data/built/copybench \\
        --features DB_FEATS.h5 Q_FEATS.h5 --method itq --bits 64 [--model model.pt]

``--method lsh|itq`` hashes the mean features with the baselines of benchmarks/baselines.py (fitted on the
database features); ``--model model.pt`` encodes with a trained s5vh model instead. Everything is measured in one
run; the radius sweep reuses one all-against-all search.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from s5vh_cli import api, artifacts
from s5vh_cli.search.dedup import auto_radius, groups_at, pairs_within


def truth(data: Path) -> dict[tuple[str, str], tuple[str, str]]:
    """(split, file name) -> (source segment, source shot) for database segments and copy queries."""
    out = {}
    with open(data / "manifest.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["split"] in ("database", "query"):
                out[(row["split"], os.path.basename(row["path"]))] = (row["segment"], row["source"])
    return out


def encode(feats: list[artifacts.Features], method: str, bits: int, model: str | None) -> np.ndarray:
    if model:
        from s5vh_cli.checkpoint import load_model
        from s5vh_cli.encode import encode_array

        m, _ = load_model(model)
        return np.concatenate([encode_array(m, f.feats) for f in feats])
    from benchmarks import baselines

    means = [f.feats.astype(np.float32).mean(axis=1) for f in feats]
    enc = {"lsh": baselines.lsh, "itq": baselines.itq}[method](means[0], bits)
    return np.concatenate([enc(x) for x in means])


def pair_scores(groups: list[list[int]], seg: list[str], shot: list[str]) -> dict[str, float]:
    """Pairwise scores. Strict: a true pair shares its source segment. By shot: two videos cut from one
    continuous shot also count (adjacent 1-1.5 s segments of one shot look alike to any frame-level method)."""
    pred = tp = same_shot = 0
    for g in groups:
        for i, a in enumerate(g):
            for b in g[i + 1:]:
                pred += 1
                if seg[a] == seg[b]:
                    tp += 1
                elif shot[a] == shot[b]:
                    same_shot += 1
    counts = Counter(seg)
    true_pairs = sum(c * (c - 1) // 2 for c in counts.values())
    shots = Counter(shot)
    shot_pairs = sum(c * (c - 1) // 2 for c in shots.values())
    tp_shot = tp + same_shot
    by_group = {s: set() for s in counts}
    for gi, g in enumerate(groups):
        for r in g:
            by_group[seg[r]].add(gi)
    whole = 0
    for s, gids in by_group.items():
        if counts[s] > 1 and len(gids) == 1:
            g = groups[next(iter(gids))]
            whole += int(len(g) == counts[s])
    p = tp / pred if pred else 1.0
    r = tp / true_pairs if true_pairs else 1.0
    ps = tp_shot / pred if pred else 1.0
    rs = tp_shot / shot_pairs if shot_pairs else 1.0
    return {"pairs_predicted": pred, "precision": p, "recall": r,
            "f1": 2 * p * r / (p + r) if p + r else 0.0,
            "precision_by_shot": ps, "recall_by_shot": rs, "f1_by_shot": 2 * ps * rs / (ps + rs) if ps + rs else 0.0,
            "false_pairs_same_shot": same_shot / max(1, pred - tp),
            "groups_recovered_whole": whole / max(1, sum(1 for c in counts.values() if c > 1))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="the built copy-detection benchmark folder")
    ap.add_argument("--features", nargs=2, metavar=("DATABASE", "QUERY"), required=True)
    ap.add_argument("--method", choices=("lsh", "itq"), default="itq")
    ap.add_argument("--model", default=None, help="encode with this s5vh model instead of --method")
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--radii", default="0,2,4,6,8,10,12,14,16")
    ap.add_argument("-o", "--out", type=Path, help="write the results as JSON here too")
    a = ap.parse_args(argv)
    gt = truth(a.data)
    feats = [artifacts.read_features(p) for p in a.features]
    rows_seg, rows_shot, ids, paths = [], [], [], []
    for split, f in zip(("database", "query"), feats, strict=True):
        for vid, p in zip(f.ids, f.paths, strict=True):
            s = gt[(split, os.path.basename(vid))]
            rows_seg.append(s[0])
            rows_shot.append(s[1])
            ids.append(f"{split}/{vid}")
            paths.append(p)
    t0 = time.perf_counter()
    codes = encode(feats, a.method, a.bits, a.model)
    t_enc = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        c = artifacts.Codes(path=None, codes=codes, ids=ids, paths=paths, bits=a.bits, model_sha256="bench")
        artifacts.write_codes(Path(tmp) / "codes.h5", c, artifacts.provenance("bench_dedup"))
        h = api.build(Path(tmp) / "codes.h5", Path(tmp) / "index.bin")
        row = h.row_of()
        t0 = time.perf_counter()
        auto, rule = auto_radius(h)
        t_auto = time.perf_counter() - t0
        radii = sorted({int(x) for x in a.radii.split(",")} | {auto})
        t0 = time.perf_counter()
        edges = pairs_within(h, max(radii))
        t_pairs = time.perf_counter() - t0
        result = {"library": len(ids), "database": feats[0].n, "copies": feats[1].n, "bits": a.bits,
                  "method": a.model or a.method, "auto_radius": auto, "encode_s": t_enc, "auto_radius_s": t_auto,
                  "all_pairs_s": t_pairs, "rows": []}
        for r in radii:
            groups = [[row[m.key] for m in g.members] for g in groups_at(h, edges, r)]
            s = pair_scores(groups, rows_seg, rows_shot)
            result["rows"].append({"radius": r, "auto": r == auto, "groups": len(groups), **s})
    print(f"library {result['library']} videos ({result['database']} segments + {result['copies']} copies), "
          f"{a.bits} bits, {result['method']}; automatic radius {auto}")
    print(f"{'radius':>6} {'groups':>6} {'pairs':>7} | {'strict: P':>9} {'R':>6} {'F1':>6} {'whole':>6} | "
          f"{'by shot: P':>10} {'R':>6} {'F1':>6}")
    for r in result["rows"]:
        mark = " (auto)" if r["auto"] else ""
        print(f"{r['radius']:>6} {r['groups']:>6} {r['pairs_predicted']:>7} | {r['precision']:>9.3f} {r['recall']:>6.3f} "
              f"{r['f1']:>6.3f} {r['groups_recovered_whole']:>6.3f} | {r['precision_by_shot']:>10.3f} "
              f"{r['recall_by_shot']:>6.3f} {r['f1_by_shot']:>6.3f}{mark}")
    if a.out:
        a.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
