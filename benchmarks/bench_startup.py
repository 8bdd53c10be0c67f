"""Start-up cost of the command line: --help, argument errors, and a cold one-clip query, split by stage.

Every figure is measured in fresh processes, best and median of --repeat runs, as wall time and as CPU time
(user + system, from the child's rusage). On a machine shared with other jobs wall time is inflated by the
wait for a core; CPU time is much less so, and it is what an idle machine's wall time approaches for the
single-threaded parts. The load average is printed with the results.

    python benchmarks/bench_startup.py [--repeat 5] [--json out.json]
    python benchmarks/bench_startup.py --before DIR     # also another s5vh_cli source tree, interleaved:
    git archive REV s5vh_cli | tar -x -C DIR             #   DIR holds the s5vh_cli of an older revision
    python benchmarks/bench_startup.py --cold-query INDEX CLIP [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

CASES = [
    ("python -c pass", [sys.executable, "-c", "pass"]),
    ("s5vh --help", ["--help"]),
    ("s5vh train --help", ["train", "--help"]),
    ("s5vh query --help", ["query", "--help"]),
    ("s5vh serve --help", ["serve", "--help"]),
    ("train missing.h5", ["train", "missing.h5"]),
    ("train feats --bits 7", ["train", "feats.txt", "--bits", "7"]),
    ("extract missing.mp4 -o f.h5", ["extract", "missing.mp4", "-o", "f.h5"]),
    ("encode missing.pt feats -o c.h5", ["encode", "missing.pt", "feats.txt", "-o", "c.h5"]),
    ("centers missing.h5 -o c.h5", ["centers", "missing.h5", "-o", "c.h5"]),
    ("index missing.h5 -o i.bin", ["index", "missing.h5", "-o", "i.bin"]),
    ("query missing.bin clip.mp4", ["query", "missing.bin", "clip.mp4"]),
    ("query index --radius -1", ["query", "index.txt", "folder", "--radius", "-1"]),
    ("sync nofolder index", ["sync", "nofolder", "index.txt"]),
    ("dedup missing.bin", ["dedup", "missing.bin"]),
    ("eval missing.h5 --labels l", ["eval", "missing.h5", "--labels", "labels.txt"]),
    ("serve index --host 0.0.0.0", ["serve", "index.txt", "--host", "0.0.0.0"]),
]


def timed_cpu(cmd: list[str], cwd: str | None = None, env: dict | None = None) -> tuple[float, float, int, str]:
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, p.returncode, p.stdout.decode(errors="replace")


def s5vh(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "s5vh_cli", *args]


def stats(xs: list[float]) -> dict[str, float]:
    return {"best": min(xs), "median": statistics.median(xs)}


def startup(repeat: int, before: Path | None = None) -> dict:
    """Each case in fresh processes; with ``before``, the same case from that source tree right after it."""
    sources = [("", HERE.parent)] + ([(" [before]", before)] if before else [])
    rows = {}
    with tempfile.TemporaryDirectory() as d:  # run elsewhere than the repository, so PYTHONPATH decides
        Path(d, "folder").mkdir()
        for name in ("feats.txt", "index.txt", "labels.txt"):
            Path(d, name).write_text("placeholder\n")
        for _ in range(repeat):  # interleaved, so that load changes hit every case alike
            for label, args in CASES:
                for tag, src in sources:
                    if args[0] == sys.executable and tag:
                        continue
                    env = dict(os.environ, PYTHONPATH=str(src))
                    cmd = args if args[0] == sys.executable else s5vh(args)
                    wall, cpu, rc, _ = timed_cpu(cmd, cwd=d, env=env)
                    r = rows.setdefault(label + tag, {"wall": [], "cpu": [], "rc": rc})
                    r["wall"].append(wall)
                    r["cpu"].append(cpu)
    return {k: {"rc": v["rc"], "wall": stats(v["wall"]), "cpu": stats(v["cpu"])} for k, v in rows.items()}


_STAGES = r"""
import sys, time, json
marks = []
w0, c0 = time.perf_counter(), time.process_time()
def mark(name):
    global w0, c0
    w, c = time.perf_counter(), time.process_time()
    marks.append((name, w - w0, c - c0)); w0, c0 = w, c
import s5vh_cli.cli; mark("import the CLI (typer, rich)")
from s5vh_cli import api; mark("import the API (numpy, h5py)")
import torch; mark("import torch")
import cv2, faiss; mark("import cv2, faiss")
s = api.Searcher(sys.argv[1]); mark("open the index (read, sha256, faiss load)")
from s5vh_cli.ssm import cpu_kernel; cpu_kernel.smoke_test(); mark("load the selective-scan kernel (numba cache)")
s.load_model(); mark("load the model checkpoint")
h = s.index
from s5vh_cli.extract import _embed
from s5vh_cli.runtimes import load_embedder
from s5vh_cli.backbones import get_spec
from s5vh_cli import video
name, frames, sampling = h.provenance["backbone"], int(h.provenance["frames"]), h.provenance["sampling"]
m, choice = load_embedder(name, None, batch_size=32); mark(f"load the backbone ({m.runtime}, {m.precision})")
spec = get_spec(name)
clip = video.read_frames(sys.argv[2], frames, sampling, size=spec.input_size, resize=spec.resize)
mark(f"decode the {frames} sampled frames")
_embed(m, [clip]); mark(f"backbone on {frames} frames (first call)")
_embed(m, [clip]); mark(f"backbone on {frames} frames (again)")
out = s.query([sys.argv[2]], topk=20); mark("whole query, warm (decode + backbone + encode + search)")
print(json.dumps({"stages": marks, "timings": out.timings}))
"""


def cold_query(index: str, clip: str, repeat: int) -> dict:
    walls, cpus, timings = [], [], []
    stages: dict[str, list[tuple[float, float]]] = {}
    for _ in range(repeat):
        wall, cpu, rc, out = timed_cpu(s5vh(["query", index, clip, "--json"]))
        if rc != 0:
            raise SystemExit(f"s5vh query failed with {rc}")
        walls.append(wall)
        cpus.append(cpu)
        timings.append(json.loads(out)["timings"])
        _, _, rc, out = timed_cpu([sys.executable, "-c", _STAGES, index, clip])
        for name, w, c in json.loads(out.strip().splitlines()[-1])["stages"]:
            stages.setdefault(name, []).append((w, c))
    return {"process": {"wall": stats(walls), "cpu": stats(cpus)},
            "timings_median": {k: statistics.median(t[k] for t in timings) for k in timings[0]},
            "stages": {k: {"wall_median": statistics.median(w for w, _ in v),
                           "cpu_median": statistics.median(c for _, c in v)} for k, v in stages.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--cold-query", nargs=2, metavar=("INDEX", "CLIP"))
    ap.add_argument("--before", type=Path, help="A folder holding another revision's s5vh_cli, measured too.")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    res: dict = {"load_before": os.getloadavg()}
    if a.cold_query:
        res["cold_query"] = cold_query(a.cold_query[0], a.cold_query[1], a.repeat)
        cq = res["cold_query"]
        print(f"cold `s5vh query INDEX CLIP --json`: wall best {cq['process']['wall']['best']:.2f} s, median "
              f"{cq['process']['wall']['median']:.2f} s; CPU best {cq['process']['cpu']['best']:.2f} s")
        print("timings (median):", json.dumps({k: round(v, 3) for k, v in cq["timings_median"].items()}))
        print(f"{'stage (one fresh process)':60s} {'wall':>8s} {'cpu':>8s}")
        for k, v in cq["stages"].items():
            print(f"{k:60s} {v['wall_median']:8.3f} {v['cpu_median']:8.3f}")
    else:
        res["startup"] = startup(a.repeat, a.before)
        print(f"{'command':45s} {'rc':>3s} {'wall best':>10s} {'wall med':>9s} {'cpu best':>9s} {'cpu med':>8s}")
        for k, v in res["startup"].items():
            print(f"{k:45s} {v['rc']:3d} {v['wall']['best']:10.3f} {v['wall']['median']:9.3f} "
                  f"{v['cpu']['best']:9.3f} {v['cpu']['median']:8.3f}")
    res["load_after"] = os.getloadavg()
    print(f"load average before {res['load_before'][0]:.1f}, after {res['load_after'][0]:.1f} "
          f"(on {os.cpu_count()} cores)")
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
