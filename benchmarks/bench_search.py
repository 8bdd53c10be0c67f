"""Hamming search speed and recall: faiss flat / HNSW / IVF / multi-index hashing vs numpy brute force.

Default workload: 1,000,000 random 64-bit codes, 1,000 random queries, top-20, 2 threads. Everything is
measured in one run, side by side, including the machine's memory bandwidth (numpy sum/copy over a large
array, and over an 8 MB array that stays in cache), which gives the bound for exact search: each query (or each
block of queries that faiss scans together) must stream the 8 MB of codes once.

    .venv/bin/python benchmarks/bench_search.py                 # full run (a few minutes on 2 cores)
    .venv/bin/python benchmarks/bench_search.py --n 100000      # quicker
    .venv/bin/python benchmarks/bench_search.py --json out.json
    .venv/bin/python benchmarks/bench_search.py --clip-latency index.bin clip.mp4   # end-to-end query latency

Recall@k is measured against exact search with the (distance, key) tie rule: ``recall`` counts a returned item
as correct when it is no farther than the exact k-th neighbour, ``id_recall`` is the plain key-set overlap.
On a shared machine the absolute numbers are noisy; the ratios within one run are the meaningful part.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as s5vh_cli.index does; see docs/search.md
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from s5vh_cli import codes as C  # noqa: E402
from s5vh_cli.progress import NULL  # noqa: E402
from s5vh_cli.search.backends.base import Entries  # noqa: E402
from s5vh_cli.search.backends.faiss import FaissBackend  # noqa: E402
from s5vh_cli.search.index import HammingIndex, IndexParams, search  # noqa: E402


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bandwidth(big_mb: int = 1024) -> dict[str, float]:
    """GB/s of a numpy sum (read) and copy (read + write) over a DRAM-sized array and an 8 MB cached one."""
    a = np.ones(big_mb * (1 << 20) // 8, dtype=np.float64)
    b = np.empty_like(a)
    read = a.nbytes / best_of(lambda: a.sum(), 3) / 1e9
    copy = 2 * a.nbytes / best_of(lambda: np.copyto(b, a), 3) / 1e9
    a = b = None  # free the 2 GB before the search runs
    s = np.ones((8 << 20) // 8, dtype=np.float64)
    s.sum()
    cached = s.nbytes * 20 / best_of(lambda: [s.sum() for _ in range(20)], 3) / 1e9
    return {"dram_read_GBps": read, "dram_copy_GBps": copy, "cache_read_8MB_GBps": cached}


def exact_topk(db: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    return C.rank(q, db, k, batch=64)


def recall(results: list[tuple[np.ndarray, np.ndarray]], ex_d: np.ndarray, ex_i: np.ndarray, k: int) -> tuple[float, float]:
    hits = ids = 0
    for qi, (d, lab) in enumerate(results):
        hits += int(min(k, (d <= ex_d[qi, -1]).sum()))
        ids += len(set(lab.tolist()) & set(ex_i[qi].tolist()))
    n = k * len(results)
    return hits / n, ids / n


def wrap(backend: FaissBackend, bits: int, n: int) -> HammingIndex:
    return HammingIndex(path=None, backend=backend, bits=bits, keys=np.arange(n, dtype=np.int64),
                        ids=[], paths=[], codes=np.empty((0, bits // 8), np.uint8), next_key=n)


def _flat(faiss, db: np.ndarray):
    idx = faiss.IndexBinaryFlat(db.shape[1] * 8)
    idx.add(db)
    return idx


def clip_latency(index: str, clips: list[str], repeat: int) -> None:
    """Wall time of `s5vh query INDEX CLIP --json` as a user runs it, split into the stages it reports."""
    import subprocess

    cmd = [sys.executable, "-m", "s5vh_cli", "query", index, *clips, "--json", "--topk", "20"]
    print(f"# {' '.join(cmd[2:])}  (x{repeat}, each a fresh process)")
    rows = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if p.returncode not in (0, 1):
            raise SystemExit(p.stderr)
        t = json.loads(p.stdout)["timings"]
        rows.append({"wall_s": wall, **t})
    keys = list(rows[0])
    for k in keys:
        vals = sorted(r[k] for r in rows)
        print(f"{k:14s} median {vals[len(vals) // 2]:8.3f} s   min {vals[0]:8.3f} s")
    staged = {k: rows[0][k] for k in keys if k != "wall_s"}
    print(f"rest of the wall time (interpreter start, imports, output): "
          f"{sorted(r['wall_s'] - sum(r[k] for k in staged) for r in rows)[len(rows) // 2]:.3f} s (median)")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--clip-latency":
        if len(sys.argv) < 4:
            raise SystemExit("usage: bench_search.py --clip-latency INDEX CLIP [CLIP...]")
        clip_latency(sys.argv[2], sys.argv[3:], repeat=5)
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--numpy-queries", type=int, default=100, help="queries timed for the numpy baseline")
    ap.add_argument("--skip", default="", help="comma-separated families to skip: hnsw,ivf,mih")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import faiss

    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    nb = args.bits // 8
    db = rng.integers(0, 256, size=(args.n, nb), dtype=np.uint8)
    q = rng.integers(0, 256, size=(args.queries, nb), dtype=np.uint8)
    k = args.k
    skip = set(filter(None, args.skip.split(",")))
    report: dict = {"n": args.n, "queries": args.queries, "bits": args.bits, "k": k, "threads": args.threads,
                    "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
                    "load_average": os.getloadavg()[0], "rows": []}
    print(f"# {args.n} x {args.bits}-bit codes ({db.nbytes / 1e6:.1f} MB), {args.queries} queries, top-{k}, "
          f"{args.threads} threads; load average {os.getloadavg()[0]:.1f}", flush=True)

    bw = bandwidth()
    report["bandwidth"] = bw
    per_query_dram = db.nbytes / (bw["dram_read_GBps"] * 1e9)
    per_query_cache = db.nbytes / (bw["cache_read_8MB_GBps"] * 1e9)
    print(f"memory: DRAM read {bw['dram_read_GBps']:.1f} GB/s, copy {bw['dram_copy_GBps']:.1f} GB/s, "
          f"8 MB in-cache read {bw['cache_read_8MB_GBps']:.1f} GB/s", flush=True)

    # exact reference (numpy, tie rule) on all queries; numpy baseline speed measured on a subset
    t0 = time.perf_counter()
    ex_d, ex_i = exact_topk(db, q, k)
    t_np_all = time.perf_counter() - t0
    sub = q[:args.numpy_queries]
    t_np = best_of(lambda: C.rank(sub, db, k, batch=64), 1)
    np_qps = len(sub) / t_np
    report["rows"].append({"method": "numpy brute force (1 thread)", "queries_per_s": np_qps, "recall": 1.0,
                           "id_recall": 1.0})

    def row(method: str, qps: float, rec: tuple[float, float], build_s: float | None = None, **extra) -> None:
        r = {"method": method, "queries_per_s": qps, "recall": rec[0], "id_recall": rec[1], "build_s": build_s,
             **extra}
        report["rows"].append(r)
        b = f"  build {build_s:6.1f} s" if build_s is not None else ""
        print(f"{method:38s} {qps:10.0f} q/s   recall@{k} {rec[0]:.3f} (ids {rec[1]:.3f}){b}", flush=True)

    print(f"{'numpy brute force (1 thread)':38s} {np_qps:10.0f} q/s   exact  "
          f"(reference over all queries took {t_np_all:.1f} s)", flush=True)

    def bench(name: str, params_list: list[IndexParams]) -> None:
        t0 = time.perf_counter()
        be = FaissBackend.build(name, args.bits, Entries(np.arange(args.n, dtype=np.int64), db, [], []),
                                IndexParams(), {}, {}, None, NULL)
        idmap = be.idmap
        build = time.perf_counter() - t0
        h = wrap(be, args.bits, args.n)
        for p in params_list:
            be.check_params(p)
            be.apply_params(p)
            label = name + "".join(f" {k2}={v}" for k2, v in vars(p).items() if v is not None)
            t_raw = best_of(lambda: idmap.search(q, k), 2)
            res = search(h, q, k)
            t_wrap = best_of(lambda: search(h, q, k), 2)
            row(label + " (faiss)", args.queries / t_raw, recall(res, ex_d, ex_i, k), build)
            row(label + " (+tie re-sort)", args.queries / t_wrap, recall(res, ex_d, ex_i, k))
            build = None

    bench("BFlat", [IndexParams()])
    faiss.omp_set_num_threads(1)
    t1 = best_of(lambda: faiss_flat_1.search(q, k), 2) if (faiss_flat_1 := _flat(faiss, db)) else None
    faiss.omp_set_num_threads(args.threads)
    row("BFlat (faiss, 1 thread)", args.queries / t1, (1.0, 1.0))
    flat = next(r for r in report["rows"] if r["method"] == "BFlat (faiss)")
    if "ivf" not in skip:
        nlist = 1024 if args.n >= 100_000 else 64
        bench(f"BIVF{nlist}", [IndexParams(nprobe=p) for p in (1, 8, 32)])
    if "hnsw" not in skip:
        bench("BHNSW32", [IndexParams(ef_search=e) for e in (32, 128, 512)])
    if "mih" not in skip:
        bench(f"BHash{args.bits // 16}x16", [IndexParams(nflip=f) for f in (0, 1, 2)])
        bench(f"BHash{args.bits // 8}x8", [IndexParams(nflip=f) for f in (0, 1)])

    bound_dram = 1.0 / per_query_dram
    bound_cache = 1.0 / per_query_cache
    report["bounds"] = {"per_query_scan_dram_qps": bound_dram, "per_query_scan_cache_qps": bound_cache,
                        "faiss_flat_qps": flat["queries_per_s"],
                        "flat_vs_dram_bound": flat["queries_per_s"] / bound_dram,
                        "flat_vs_cache_bound": flat["queries_per_s"] / bound_cache,
                        "flat_vs_numpy": flat["queries_per_s"] / np_qps}
    print(f"bound if every query streams the {db.nbytes / 1e6:.0f} MB of codes from DRAM: {bound_dram:.0f} q/s "
          f"(faiss flat reaches {flat['queries_per_s'] / bound_dram:.2f}x of it); from cache at the measured "
          f"in-cache rate: {bound_cache:.0f} q/s ({flat['queries_per_s'] / bound_cache:.2f}x); "
          f"faiss flat / numpy = {flat['queries_per_s'] / np_qps:.1f}x", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
