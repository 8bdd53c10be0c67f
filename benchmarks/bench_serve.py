"""`s5vh serve` under load: p50 / p99 latency, throughput, errors and memory at 1, 4 and 16 concurrent clients,
for code queries against a large index and for uploads of a 10 s 720p clip; and the floor of a clip query
(decoding the sampled frames and the backbone on them, measured alone in this process).

The script starts the server itself (127.0.0.1, a free port), drives it with an asyncio HTTP client (httpx,
keep-alive connections, one per client) on loopback, and stops it. Client and server share the machine's
cores, as they would on one box.

    python benchmarks/bench_serve.py --lib demo-out --clip clip10s.mp4 [--codes 1000000] [--json out.json]

``--lib`` is a folder with ``codes.h5`` and ``model.pt`` from the pipeline (``s5vh demo`` makes one); its codes
are padded with random codes of the same model up to ``--codes`` entries (benchmarks/serve_data.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(xs: list[float], f: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(f * len(xs)))] if xs else float("nan")


async def load(url: str, clients: int, total: int, make) -> dict:  # noqa: ANN001 - make(client) -> response
    """``total`` requests from ``clients`` concurrent clients; each client waits for its answer before the next."""
    import httpx

    lat: list[float] = []
    errors: dict[str, int] = {}
    left = total

    async def client() -> None:
        nonlocal left
        async with httpx.AsyncClient(base_url=url, timeout=600.0) as c:
            while left > 0:
                left -= 1
                t0 = time.perf_counter()
                try:
                    r = await make(c)
                    ok = r.status_code == 200
                    why = f"HTTP {r.status_code}"
                except httpx.HTTPError as e:
                    ok, why = False, type(e).__name__
                lat.append(time.perf_counter() - t0)
                if not ok:
                    errors[why] = errors.get(why, 0) + 1

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - t0
    return {"clients": clients, "requests": len(lat), "errors": errors, "p50_ms": pct(lat, 0.5) * 1000,
            "p99_ms": pct(lat, 0.99) * 1000, "mean_ms": statistics.fmean(lat) * 1000,
            "throughput_per_s": len(lat) / wall, "seconds": wall}


_WRK_LUA = """
codes = {%s}
counter = 0
request = function()
  counter = counter + 1
  local body = '{"codes":["' .. codes[(counter %% #codes) + 1] .. '"],"topk":20}'
  return wrk.format("POST", "/api/query/codes", {["Content-Type"] = "application/json"}, body)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK %%d %%d %%d %%d %%d %%d\\n", latency:percentile(50), latency:percentile(99),
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout))
end
"""


def wrk(url: str, clients: int, seconds: float, codes: list[str], workdir: Path) -> dict:
    """Code queries driven by wrk (one client thread, ``clients`` keep-alive connections)."""
    script = workdir / "codes.lua"
    script.write_text(_WRK_LUA % ",".join(f'"{c}"' for c in codes))
    p = subprocess.run(["wrk", "-t1", f"-c{clients}", f"-d{seconds:g}s", "--timeout", "30s", "-s", str(script), url],
                       capture_output=True, text=True, check=True)
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("WRK "))
    p50, p99, n, dur, status_err, io_err = (int(x) for x in line.split()[1:])
    errors = {k: v for k, v in (("HTTP non-2xx", status_err), ("socket", io_err)) if v}
    return {"clients": clients, "requests": n, "errors": errors, "p50_ms": p50 / 1000, "p99_ms": p99 / 1000,
            "throughput_per_s": n / (dur / 1e6), "seconds": dur / 1e6, "client": "wrk"}


_LAUNCH = """
import sys
from s5vh_cli.config import ServeConfig
from s5vh_cli.serve.app import bind, create_app, run
from s5vh_cli.serve.state import ServerState
state = ServerState(sys.argv[1], ServeConfig())
run(create_app(state), bind("127.0.0.1", int(sys.argv[2])), http=sys.argv[3], loop=sys.argv[4])
"""


def compare_stacks(index: Path, codes: list[str], clients: list[int], seconds: float, workdir: Path) -> list[dict]:
    """Code queries through uvicorn's pure-Python stack (h11 + asyncio) and its compiled one (httptools +
    uvloop), the same app, side by side, alternating (wrk)."""
    import httpx

    rows = []
    for http, loop in (("h11", "asyncio"), ("httptools", "uvloop"), ("h11", "asyncio"), ("httptools", "uvloop")):
        port = free_port()
        p = subprocess.Popen([sys.executable, "-c", _LAUNCH, str(index), str(port), http, loop])
        url = f"http://127.0.0.1:{port}"
        try:
            while True:
                try:
                    if httpx.get(url + "/api/health", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.3)
            wrk(url, 1, 2, codes, workdir)  # warm
            for n in clients:
                s0 = proc_cpu(p.pid)
                r = wrk(url, n, seconds, codes, workdir)
                r.update(stack=f"{http}+{loop}", server_cpu_ms_per_request=(proc_cpu(p.pid) - s0) * 1000 / r["requests"])
                rows.append(r)
                print(f"  {r['stack']:20s} clients {n:2d}: p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  "
                      f"{r['throughput_per_s']:7.1f}/s  server cpu/request {r['server_cpu_ms_per_request']:.2f} ms",
                      flush=True)
        finally:
            p.terminate()
            p.wait()
    return rows


def floor(index: Path, clip: Path, repeat: int) -> dict:
    """Decode of the sampled frames and the backbone on them, alone, warm (best and median of ``repeat``)."""
    from s5vh_cli import api, video
    from s5vh_cli.backbones import get_spec
    from s5vh_cli.extract import _embed
    from s5vh_cli.runtimes import load_embedder

    s = api.Searcher(index)
    h = s.index
    name, frames, sampling = h.provenance["backbone"], int(h.provenance["frames"]), h.provenance["sampling"]
    spec = get_spec(name)
    s.query([str(clip)], topk=20)  # warm every part once
    # the embedder the query used (load_embedder caches it per arguments; extract_clips' defaults)
    m, choice = load_embedder(name, None, runtime="auto", precision="auto", device="auto", batch_size=32)
    dec, emb, whole = [], [], []  # (wall, cpu of every thread of this process)
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        c = video.read_frames(str(clip), frames, sampling, size=spec.input_size, resize=spec.resize)
        dec.append((time.perf_counter() - t0, time.process_time() - c0))
        t0, c0 = time.perf_counter(), time.process_time()
        _embed(m, [c])
        emb.append((time.perf_counter() - t0, time.process_time() - c0))
        t0, c0 = time.perf_counter(), time.process_time()
        s.query([str(clip)], topk=20)
        whole.append((time.perf_counter() - t0, time.process_time() - c0))

    def st(xs: list[tuple[float, float]]) -> dict:
        w = [x for x, _ in xs]
        c = [y for _, y in xs]
        return {"best_ms": min(w) * 1000, "median_ms": statistics.median(w) * 1000,
                "cpu_median_ms": statistics.median(c) * 1000}

    return {"frames": frames, "backbone": name, "runtime": f"{m.runtime} {m.precision}", "decode": st(dec), "backbone_forward": st(emb),
            "query_in_process": st(whole)}


def start_server(index: Path, log: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    fh = open(log, "w")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen([sys.executable, "-m", "s5vh_cli", "serve", str(index), "--port", str(port)],
                            stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {log.read_text()}")
        try:
            if httpx.get(url + "/api/health", timeout=5).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if time.monotonic() - t0 > 900:
            proc.kill()
            raise SystemExit("server did not start in 900 s")
        time.sleep(0.3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", type=Path, required=True, help="Folder with codes.h5 and model.pt.")
    ap.add_argument("--clip", type=Path, required=True, help="The query clip (10 s 720p for the issue's figures).")
    ap.add_argument("--codes", type=int, default=1_000_000, help="Index size for the code queries.")
    ap.add_argument("--clip-index-codes", type=int, default=100_000, help="Index size for the clip uploads.")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--code-requests", type=int, default=400, help="With httpx: code queries per concurrency level.")
    ap.add_argument("--clip-requests", type=int, default=8, help="Clip uploads per client count (at least "
                    "one per client).")
    ap.add_argument("--client", choices=("auto", "wrk", "httpx"), default="auto", help="Load generator for code "
                    "queries [auto: wrk when installed (apt-get install wrk), else httpx]; uploads use httpx.")
    ap.add_argument("--code-seconds", type=float, default=10.0, help="With wrk: seconds per concurrency level.")
    ap.add_argument("--compare-stacks", action="store_true", help="Also run code queries through h11+asyncio and "
                    "httptools+uvloop side by side (needs wrk).")
    ap.add_argument("--floor-repeat", type=int, default=5)
    ap.add_argument("--workdir", type=Path, default=Path(".bench-data/serve"))
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    import httpx
    from serve_data import padded_index

    clients = [int(x) for x in a.clients.split(",")]
    import shutil

    use_wrk = a.client == "wrk" or (a.client == "auto" and shutil.which("wrk") is not None)
    res: dict = {"load_before": os.getloadavg(), "cores": os.cpu_count()}
    big = padded_index(a.lib / "codes.h5", a.codes, a.workdir)
    mid = padded_index(a.lib / "codes.h5", a.clip_index_codes, a.workdir)
    print(f"indexes: {big} ({a.codes} codes), {mid} ({a.clip_index_codes} codes)", flush=True)
    res["floor"] = floor(mid, a.clip, a.floor_repeat)
    f = res["floor"]
    print(f"floor ({f['frames']} frames, {f['backbone']} on {f['runtime']}), medians, wall / CPU: decode "
          f"{f['decode']['median_ms']:.0f} / {f['decode']['cpu_median_ms']:.0f} ms, backbone "
          f"{f['backbone_forward']['median_ms']:.0f} / {f['backbone_forward']['cpu_median_ms']:.0f} ms, whole query in "
          f"process {f['query_in_process']['median_ms']:.0f} / {f['query_in_process']['cpu_median_ms']:.0f} ms",
          flush=True)
    rng = np.random.default_rng(0)
    bits = 64
    codes = [rng.integers(0, 256, bits // 8, dtype=np.uint8).tobytes().hex() for _ in range(4096)]
    data = a.clip.read_bytes()
    rows = []
    for what, index in (("code", big), ("clip", mid)):
        proc, url = start_server(index, a.workdir / f"server_{what}.log")
        try:
            mem0 = httpx.get(url + "/api/metrics").json()["memory"]
            i = 0

            def code_req(c):  # noqa: ANN001, ANN202
                nonlocal i
                i += 1
                return c.post("/api/query/codes", json={"codes": [codes[i % len(codes)]], "topk": 20})

            def clip_req(c):  # noqa: ANN001, ANN202
                return c.post("/api/query/clip", params={"name": a.clip.name, "topk": 20}, content=data)

            def health_req(c):  # noqa: ANN001, ANN202
                return c.get("/api/health")

            if what == "code":
                asyncio.run(load(url, 1, 50, code_req))  # warm
                c0, s0 = time.process_time(), proc_cpu(proc.pid)
                r = asyncio.run(load(url, 1, a.code_requests, health_req))
                r["server_cpu_ms_per_request"] = (proc_cpu(proc.pid) - s0) * 1000 / r["requests"]
                r["client_cpu_ms_per_request"] = (time.process_time() - c0) * 1000 / r["requests"]
                r.update(kind="GET /api/health (HTTP stack alone)", index_codes=a.codes)
                rows.append(r)
                print(f"{r['kind']:34s} clients  1: p50 {r['p50_ms']:9.1f} ms  p99 {r['p99_ms']:9.1f} ms  "
                      f"{r['throughput_per_s']:8.1f}/s  cpu/request server {r['server_cpu_ms_per_request']:.2f} ms "
                      f"client {r['client_cpu_ms_per_request']:.2f} ms", flush=True)
            for n in clients:
                total = a.code_requests if what == "code" else max(a.clip_requests, n)
                c0, s0 = time.process_time(), proc_cpu(proc.pid)
                if what == "code" and use_wrk:
                    r = wrk(url, n, a.code_seconds, codes, a.workdir)
                else:
                    r = asyncio.run(load(url, n, total, code_req if what == "code" else clip_req))
                    r["client"] = "httpx"
                # CPU per request, server and client: what a machine to itself would approach at one client
                r["server_cpu_ms_per_request"] = (proc_cpu(proc.pid) - s0) * 1000 / r["requests"]
                r["client_cpu_ms_per_request"] = (time.process_time() - c0) * 1000 / r["requests"]
                r.update(kind="code query" if what == "code" else "clip upload (10 s 720p)",
                         index_codes=a.codes if what == "code" else a.clip_index_codes)
                r["memory"] = httpx.get(url + "/api/metrics").json()["memory"]
                rows.append(r)
                print(f"{r['kind']:34s} clients {n:2d}: p50 {r['p50_ms']:9.1f} ms  p99 {r['p99_ms']:9.1f} ms  "
                      f"{r['throughput_per_s']:8.1f}/s  errors {sum(r['errors'].values())}  cpu/request server "
                      f"{r['server_cpu_ms_per_request']:.1f} ms client {r['client_cpu_ms_per_request']:.1f} ms  rss "
                      f"{r['memory']['rss_bytes'] / 2**20:.0f} MB (peak {r['memory']['peak_rss_bytes'] / 2**20:.0f})",
                      flush=True)
            res.setdefault("memory_at_start", {})[what] = mem0
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    res["rows"] = rows
    if a.compare_stacks:
        print("HTTP stacks, code queries:", flush=True)
        res["stacks"] = compare_stacks(big, codes, [1, 16], a.code_seconds, a.workdir)
    res["load_after"] = os.getloadavg()
    print(f"load average before {res['load_before'][0]:.1f}, after {res['load_after'][0]:.1f} on {res['cores']} "
          "cores (client and server share them)")
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
