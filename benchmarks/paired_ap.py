"""Per-query AP@K of two code sets on the same queries: mean +- standard error, and their paired difference.

A mAP difference between two methods is only worth reading next to its noise. With the same queries and
database, the paired difference of per-query AP@K has a much smaller standard error than either mean.

Usage: python -m benchmarks.paired_ap --a QUERY.h5 DB.h5 --b QUERY.h5 DB.h5 \
           --labels-dir DIR [--levels labels,motion,garment] [--ks 5,20,100] [--names A,B]

Label files are DIR/query_<level>.h5 and DIR/database_<level>.h5 (benchmarks.datasets layout); ranking is
`s5vh eval`'s (Hamming distance, then database row).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from s5vh_cli import artifacts
from s5vh_cli.codes import hamming, topk_from_distances
from s5vh_cli.errors import S5VHError
from s5vh_cli.evaluate import load_labels
from s5vh_cli.metrics import ap_at_k, ranked_relevance, relevance


def per_query_ap(query: str, database: str, q_labels: np.ndarray, db_labels: np.ndarray,
                 ks: list[int]) -> dict[int, np.ndarray]:
    q = artifacts.read_codes(query).codes
    d = artifacts.read_codes(database).codes
    if len(q) != len(q_labels) or len(d) != len(db_labels):
        raise S5VHError(f"{query} / {database}: {len(q)} x {len(d)} codes but {len(q_labels)} x {len(db_labels)} "
                        "label rows")
    _, top = topk_from_distances(hamming(q, d), min(max(ks), len(d)))
    rr = ranked_relevance(relevance(q_labels, db_labels), top)
    return {k: ap_at_k(rr, k) for k in ks}


def _sem(x: np.ndarray) -> float:
    return float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")


def compare(a: tuple[str, str], b: tuple[str, str], labels_dir: str, levels: list[str],
            ks: list[int]) -> list[dict]:
    rows = []
    for level in levels:
        ql = load_labels(f"{labels_dir}/query_{level}.h5")
        dl = load_labels(f"{labels_dir}/database_{level}.h5")
        ap_a = per_query_ap(*a, ql, dl, ks)
        ap_b = per_query_ap(*b, ql, dl, ks)
        for k in ks:
            diff = ap_a[k] - ap_b[k]
            rows.append({"level": level, "k": k, "a": float(ap_a[k].mean()), "a_sem": _sem(ap_a[k]),
                         "b": float(ap_b[k].mean()), "b_sem": _sem(ap_b[k]),
                         "diff": float(diff.mean()), "diff_sem": _sem(diff), "n_query": int(len(diff))})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.paired_ap", description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", nargs=2, required=True, metavar=("QUERY", "DB"), help="first method's codes")
    ap.add_argument("--b", nargs=2, required=True, metavar=("QUERY", "DB"), help="second method's codes")
    ap.add_argument("--labels-dir", required=True, help="folder with query_<level>.h5 and database_<level>.h5")
    ap.add_argument("--levels", default="labels", help="comma-separated label levels (default labels)")
    ap.add_argument("--ks", default="5,20,100", help="comma-separated K (default 5,20,100)")
    ap.add_argument("--names", default="A,B", help="column names for the two methods")
    args = ap.parse_args(argv)
    na, nb = (args.names.split(",") + ["B"])[:2]
    try:
        rows = compare(tuple(args.a), tuple(args.b), args.labels_dir,
                       [v for v in args.levels.split(",") if v], [int(k) for k in args.ks.split(",") if k])
    except (S5VHError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"| level | K | {na} | {nb} | {na} - {nb} (paired) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['level']} | {r['k']} | {r['a']:.4f} ± {r['a_sem']:.4f} | {r['b']:.4f} ± {r['b_sem']:.4f} | "
              f"{r['diff']:+.4f} ± {r['diff_sem']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
