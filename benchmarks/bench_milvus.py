"""The Milvus backend beside faiss on the same codes: insert, index build, query throughput, recall, memory.

Default workload: 1,000,000 random 64-bit codes (with ids and paths, as `s5vh index` stores them), 1,000 random
queries, top-20, everything measured in one run. Milvus is a private 2.3.5 standalone server started by this
script (tests/milvus_server.py: its own network namespace, one relayed loopback port), unless --uri names one.

    .venv/bin/python benchmarks/bench_milvus.py                        # 1M codes (about 15 min on 2 cores)
    .venv/bin/python benchmarks/bench_milvus.py --n 100000             # quicker
    .venv/bin/python benchmarks/bench_milvus.py --json out.json

Recall@k is measured against exact search with the (distance, key) rule (faiss BFlat through s5vh's ranking
rule, which the tests check against a brute force): ``recall`` counts a returned item as correct when it is no
farther than the exact k-th neighbour, ``id_recall`` is the key-set overlap. "s5vh search" rows go through
`s5vh_cli.search.index.search` (what `s5vh query` does: the key filter, tie completion on exact types, the
re-sort); "raw" rows call the engine directly. Memory: resident set of this process (faiss) and of the Milvus
server process. On a shared machine absolute numbers are noisy; the ratios within one run are the point.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as s5vh_cli's faiss backend does
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from s5vh_cli.progress import Progress  # noqa: E402
from s5vh_cli.search.backends.base import Entries, IndexParams  # noqa: E402
from s5vh_cli.search.backends.faiss import FaissBackend  # noqa: E402
from s5vh_cli.search.index import HammingIndex, search  # noqa: E402


class Phases(Progress):
    """Wall time of each progress phase (``start`` to ``finish``) and of the steps between log lines."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.marks: list[tuple[str, float]] = [("begin", self.t0)]

    def start(self, task: str, total: int | None = None) -> None:
        self.marks.append((f"start {task}", time.perf_counter()))

    def finish(self) -> None:
        self.marks.append(("finish", time.perf_counter()))

    def log(self, message: str) -> None:
        self.marks.append((message, time.perf_counter()))

    def span(self, first: str, last: str | None = None) -> float:
        """Seconds from the first mark starting with ``first`` to the next mark (or to the one starting with
        ``last``)."""
        names = [m[0] for m in self.marks]
        i = next(j for j, n in enumerate(names) if n.startswith(first))
        j = next(j for j in range(i + 1, len(names)) if last is None or names[j].startswith(last))
        return self.marks[j][1] - self.marks[i][1]


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def wrap(backend: Any, bits: int, n: int) -> HammingIndex:
    return HammingIndex(path=None, backend=backend, bits=bits, keys=np.arange(n, dtype=np.int64), ids=[], paths=[],
                        codes=np.empty((0, bits // 8), np.uint8), next_key=n)


def measure(h: HammingIndex, q: np.ndarray, k: int, repeat: int = 2) -> tuple[float, float, list]:
    """Best-of wall time of one batch search of ``q``, median-free single-query latency (20 queries one by
    one, best of ``repeat``), and the results."""
    search(h, q[:10], k)  # warm: connections, caches
    t = best_of(lambda: search(h, q, k), repeat)
    lat = best_of(lambda: [search(h, q[i:i + 1], k) for i in range(20)], repeat) / 20
    return t, lat, search(h, q, k)


def recall(results: list[tuple[np.ndarray, np.ndarray]], exact: list[tuple[np.ndarray, np.ndarray]],
           k: int) -> tuple[float, float]:
    hits = ids = 0
    for (d, lab), (ed, el) in zip(results, exact, strict=True):
        hits += int(min(k, (d <= ed[-1]).sum()))
        ids += len(set(lab.tolist()) & set(el.tolist()))
    n = k * len(results)
    return hits / n, ids / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2, help="faiss threads")
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--nprobe", default="1,8,32,128,1024", help="comma-separated nprobe values (IVF)")
    ap.add_argument("--uri", default=None, help="an existing Milvus server (default: start a private one)")
    ap.add_argument("--data", type=Path, default=None, help="data folder of the private server (default: a "
                    "temporary folder, removed afterwards)")
    ap.add_argument("--settle", type=float, default=20.0, help="seconds to wait after each Milvus build")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import faiss

    from s5vh_cli.search.backends.milvus import MilvusBackend

    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    nb, k, n = args.bits // 8, args.k, args.n
    db = rng.integers(0, 256, size=(n, nb), dtype=np.uint8)
    q = rng.integers(0, 256, size=(args.queries, nb), dtype=np.uint8)
    keys = np.arange(n, dtype=np.int64)
    entries = Entries(keys, db, [f"v{i:07d}" for i in range(n)], [f"/videos/library/v{i:07d}.mp4" for i in range(n)])
    nprobes = [int(x) for x in args.nprobe.split(",") if x and int(x) <= args.nlist]
    report: dict[str, Any] = {"n": n, "queries": args.queries, "bits": args.bits, "k": k, "threads": args.threads,
                              "nlist": args.nlist, "machine": f"{platform.processor() or platform.machine()}, "
                              f"{os.cpu_count()} cpus", "load_average_start": os.getloadavg()[0], "rows": []}
    print(f"# {n} x {args.bits}-bit codes ({db.nbytes / 1e6:.1f} MB), {args.queries} queries, top-{k}, faiss "
          f"{args.threads} threads; load average {os.getloadavg()[0]:.1f}", flush=True)

    def row(method: str, **r: Any) -> None:
        report["rows"].append({"method": method, **r})
        parts = []
        for key, fmt in (("insert_rows_per_s", "insert {:,.0f} rows/s"), ("create_s", "create {:.1f} s"),
                         ("build_s", "build {:.1f} s"),
                         ("queries_per_s", "{:,.0f} q/s"), ("latency_ms", "1-query {:.1f} ms"),
                         ("recall", f"recall@{k} " + "{:.3f}"), ("id_recall", "(ids {:.3f})"),
                         ("memory_mb", "mem {:,.0f} MB")):
            if r.get(key) is not None:
                parts.append(fmt.format(r[key]))
        print(f"{method:40s} " + "  ".join(parts), flush=True)

    # ---- faiss ----------------------------------------------------------------------------------------
    base_rss = rss_bytes()
    t0 = time.perf_counter()
    flat = FaissBackend.build("BFlat", args.bits, entries, IndexParams(), {}, {}, None, Phases())
    t_flat = time.perf_counter() - t0
    t_s5, lat, exact = measure(wrap(flat, args.bits, n), q, k, repeat=3)
    idmap = flat.idmap
    t_raw = best_of(lambda: idmap.search(q, k), 3)
    row("faiss BFlat (raw)", insert_rows_per_s=n / t_flat, build_s=t_flat, queries_per_s=args.queries / t_raw,
        memory_mb=(rss_bytes() - base_rss) / 1e6, recall=1.0, id_recall=1.0)
    row("faiss BFlat (s5vh search)", queries_per_s=args.queries / t_s5, latency_ms=lat * 1e3, recall=1.0,
        id_recall=1.0)
    flat = idmap = None
    base_rss = rss_bytes()
    t0 = time.perf_counter()
    ivf = FaissBackend.build(f"BIVF{args.nlist}", args.bits, entries, IndexParams(), {}, {}, None, Phases())
    t_ivf = time.perf_counter() - t0
    mem = (rss_bytes() - base_rss) / 1e6
    for p in nprobes:
        ivf.apply_params(IndexParams(nprobe=p))
        t, lat, res = measure(wrap(ivf, args.bits, n), q, k)
        rec = recall(res, exact, k)
        first = p == nprobes[0]
        row(f"faiss BIVF{args.nlist} nprobe={p} (s5vh search)", build_s=t_ivf if first else None,
            queries_per_s=args.queries / t, latency_ms=lat * 1e3, recall=rec[0], id_recall=rec[1],
            memory_mb=mem if first else None)
    ivf = None

    # ---- Milvus ---------------------------------------------------------------------------------------
    server = None
    tmp = None
    uri = args.uri
    if uri is None:
        from milvus_server import PrivateMilvus, why_unavailable

        why = why_unavailable()
        if why:
            raise SystemExit(f"cannot start a private Milvus server: {why}")
        tmp = tempfile.TemporaryDirectory(prefix="s5vh-bench-milvus-", dir=args.data)
        server = PrivateMilvus(tmp.name)
        server.start()
        uri = server.uri
        report["milvus_start_s"] = server.start_seconds
        report["milvus_idle_rss_mb"] = server.rss_bytes() / 1e6
        print(f"# private Milvus 2.3.5 at {uri}: started in {server.start_seconds:.1f} s, "
              f"{report['milvus_idle_rss_mb']:.0f} MB resident when idle", flush=True)
    try:
        for index_type in ("BIN_FLAT", "BIN_IVF_FLAT"):
            opts: dict[str, Any] = {"uri": uri, "collection": f"bench_{index_type.lower()}", "replace_collection": True}
            if index_type == "BIN_IVF_FLAT":
                opts["nlist"] = args.nlist
            ph = Phases()
            client_rss = rss_bytes()
            t0 = time.perf_counter()
            be = MilvusBackend.build(index_type, args.bits, entries, IndexParams(), opts, {"bits": args.bits}, None, ph)
            t_build = time.perf_counter() - t0
            t_create = ph.span("begin", "start milvus insert")  # collection, its index definition, load
            t_insert = ph.span("start milvus insert", "finish")
            t_index = t_build - t_create - t_insert  # flush, index build, serving the indexed segments
            server_mb = server.rss_bytes() / 1e6 if server else None
            time.sleep(args.settle)  # Milvus finishes its own work after a load (handoff, compaction checks)
            values = nprobes if index_type == "BIN_IVF_FLAT" else [None]
            for p in values:
                if p is not None:
                    be.apply_params(IndexParams(nprobe=p))
                t, lat, res = measure(wrap(be, args.bits, n), q, k)
                rec = recall(res, exact, k)
                first = p == values[0]
                label = f"milvus {index_type}" + (f" nprobe={p}" if p is not None else "")
                row(label + " (s5vh search)", insert_rows_per_s=n / t_insert if first else None,
                    build_s=t_index if first else None, queries_per_s=args.queries / t, latency_ms=lat * 1e3,
                    recall=rec[0], id_recall=rec[1], memory_mb=server_mb if first else None,
                    insert_s=t_insert if first else None, create_s=t_create if first else None,
                    client_rss_mb=(rss_bytes() - client_rss) / 1e6)
                if p is None or p == values[-1]:
                    raw = be.search
                    t = best_of(lambda: raw(q, k), 3)  # noqa: B023 - called at once, inside this iteration
                    row(label + " (raw, no key filter)", queries_per_s=args.queries / t)
                    t, _, _ = measure(wrap(be, args.bits, n), q, k, repeat=3)
                    row(label + " (s5vh search, again)", queries_per_s=args.queries / t)
            be.client.drop_collection(opts["collection"])
            be.close()
    finally:
        report["load_average_end"] = os.getloadavg()[0]
        if server is not None:
            server.stop()
        if tmp is not None:
            tmp.cleanup()
    print(f"# load average at the end {report['load_average_end']:.1f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
