"""The Milvus backend beside faiss on the same codes: insert, index build, query throughput, recall, memory.

Default workload: 1,000,000 random 64-bit codes (with ids and paths, as `s5vh index` stores them), 1,000 random
queries, top-20, everything measured in one run. Milvus is a private 2.3.5 standalone server started by this
script (tests/milvus_server.py: its own network namespace, one relayed loopback port), unless --uri names one.

    .venv/bin/python benchmarks/bench_milvus.py                        # 1M codes (about 15 min on 2 cores)
    .venv/bin/python benchmarks/bench_milvus.py --n 100000             # quicker
    .venv/bin/python benchmarks/bench_milvus.py --json out.json
    .venv/bin/python benchmarks/bench_milvus.py --workflow            # metadata, open, add one, imports

Recall@k is measured against exact search with the (distance, key) rule (faiss BFlat through s5vh's ranking
rule, which the tests check against a brute force): ``recall`` counts a returned item as correct when it is no
farther than the exact k-th neighbour, ``id_recall`` is the key-set overlap. "s5vh search" rows go through
`s5vh_cli.search.index.search` (what `s5vh query` does: the key filter, tie completion on exact types, the
re-sort); "raw" rows call the engine directly. Memory: resident set of this process (faiss) and of the Milvus
server process. On a shared machine absolute numbers are noisy; the ratios within one run are the point.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as s5vh_cli's faiss backend does
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from benchmarks.bench_search import best_of  # noqa: E402
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


@contextlib.contextmanager
def milvus_server(args: argparse.Namespace, report: dict[str, Any]) -> Iterator[str]:
    """The server's uri: --uri, else a private server started here (and stopped at the end)."""
    if args.uri:
        try:
            yield args.uri
        finally:
            report["load_average_end"] = os.getloadavg()[0]
        return
    from milvus_server import PrivateMilvus, why_unavailable

    why = why_unavailable()
    if why:
        raise SystemExit(f"cannot start a private Milvus server: {why}")
    with tempfile.TemporaryDirectory(prefix="s5vh-bench-milvus-", dir=args.data) as tmp:
        server = PrivateMilvus(tmp)
        server.start()
        try:
            report["milvus_start_s"] = server.start_seconds
            report["milvus_idle_rss_mb"] = server.rss_bytes() / 1e6
            report["_server"] = server
            print(f"# private Milvus 2.3.5 at {server.uri}: started in {server.start_seconds:.1f} s, "
                  f"{report['milvus_idle_rss_mb']:.0f} MB resident when idle", flush=True)
            yield server.uri
        finally:
            report.pop("_server", None)
            report["load_average_end"] = os.getloadavg()[0]
            server.stop()


def workflow(args: argparse.Namespace, uri: str, report: dict[str, Any]) -> None:
    """What a user's commands pay on a library of ``args.n`` entries, per backend: the metadata file (the client
    still reads the whole entry table), opening the index, adding one video, and the import of each client."""
    import subprocess

    from s5vh_cli import api, artifacts
    from s5vh_cli.artifacts import Codes

    rng = np.random.default_rng(1)
    n, nb = args.n, args.bits // 8
    with tempfile.TemporaryDirectory(prefix="s5vh-bench-wf-", dir=args.data) as d:
        d = Path(d)

        def codes_file(name: str, count: int, prefix: str) -> Path:
            c = Codes(path=None, codes=rng.integers(0, 256, size=(count, nb), dtype=np.uint8),
                      ids=[f"{prefix}{i:07d}" for i in range(count)],
                      paths=[f"/videos/library/{prefix}{i:07d}.mp4" for i in range(count)], bits=args.bits,
                      model_sha256="m" * 64)
            artifacts.write_codes(d / name, c, artifacts.provenance("encode"), extra_attrs={"backbone": "mobilenet_v2"})
            return d / name

        lib, one = codes_file("lib.h5", n, "v"), codes_file("one.h5", 1, "new")
        for backend, opts in (("faiss", None), ("milvus", {"uri": uri, "collection": "bench_workflow",
                                                          "replace_collection": True})):
            t0 = time.perf_counter()
            api.build(lib, d / f"{backend}.bin", backend=backend, backend_options=opts)
            t_build = time.perf_counter() - t0
            t_open = best_of(lambda b=backend: api.open_index(d / f"{b}.bin").backend.close(), 3)
            t0 = time.perf_counter()
            api.add(d / f"{backend}.bin", one)
            t_add = time.perf_counter() - t0
            sizes = {p.name: p.stat().st_size for p in d.glob(f"{backend}.bin*")}
            r = {"backend": backend, "build_s": t_build, "open_s": t_open, "add_one_s": t_add,
                 "index_file_bytes": sizes.get(f"{backend}.bin"), "meta_bytes": sizes.get(f"{backend}.bin.meta.h5")}
            report.setdefault("workflow", []).append(r)
            print(f"{backend:7s} library of {n}: build {t_build:.1f} s, open {t_open:.2f} s, add one video "
                  f"{t_add:.2f} s, index file {r['index_file_bytes']:,} B, metadata {r['meta_bytes']:,} B",
                  flush=True)
    for mod in ("faiss", "pymilvus"):
        t = best_of(lambda m=mod: subprocess.run([sys.executable, "-c", f"import {m}"], check=True), 3)
        report.setdefault("imports", {})[mod] = t
        print(f"import {mod} in a fresh interpreter: {t:.2f} s (best of 3)", flush=True)


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
    ap.add_argument("--workflow", action="store_true", help="only the per-command costs: metadata size, open, "
                    "adding one video, client imports (see workflow())")
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

    if args.workflow:
        with milvus_server(args, report) as uri:
            workflow(args, uri, report)
        if args.json:
            args.json.write_text(json.dumps(report, indent=1))
        return

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
    with milvus_server(args, report) as uri:
        server = report.pop("_server", None)
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
    print(f"# load average at the end {report['load_average_end']:.1f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
