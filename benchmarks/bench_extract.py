"""Extraction speed, measured side by side in one run: backbone runtimes, decoders, and `extract` end to end
against the code of another checkout (today's main), each on the machine as it is and with a known extra load.

    .venv/bin/python benchmarks/bench_extract.py [--part backbone,decode,e2e,precision] [--rounds 3] [--threads 2]
        [--backbones mobilenet_v2,resnet50] [--seconds 6] [--load spin2|none] [--baseline DIR]
        [--sources DIR] [--videos 8] [--frames 25] [--batch-size 32]

Parts:
- ``backbone``: frames/s of each runtime configuration (random uint8 frames, batch --batch-size, --threads),
  each in a fresh process, on the machine as it is ("as is") and again with the known load running beside
  it. Backbones whose weights are not found offline run with random weights (speed does not depend on them).
- ``decode``: the frames of --frames-per-video uniform samples from each long source with OpenCV and with
  PyAV (as the decode workers run them: one thread each), CPU seconds and wall seconds per video, and a check
  that both return the same pixels.
- ``e2e``: `extract` end to end (decode workers + batched inference + the written artifact, model loading
  excluded, as ExtractResult.frames_per_s reports it) with the code in --baseline (e.g. a copy of main made
  by ``git archive main | tar -x -C .bench-data/main-src``) and with this checkout, same Python environment,
  each in a fresh process, as is and under the known load.
- ``precision``: retrieval on the built datasets of --map-data with query and database features extracted at
  float32 and at bfloat16 by --map-runtime; the encoders (--map-methods at --map-bits, S5VH trained
  --map-epochs) are fitted once, on float32 training features (``benchmarks.run_benchmarks``), and encode
  both; mAP@K from ``s5vh eval`` at every label level.

The known load (``spin2``) is two processes that each keep one core busy (a pure-Python loop), i.e. a second
2-thread job on a 2-core machine; a fair share under it is half the machine. Every figure is the best of
--rounds rounds; conditions and configurations are interleaved within each round so that a change in the
machine's other load hits all of them alike. Long 720p/1080p H.264 sources are made with ffmpeg from the real
clips of benchmarks/fetch_assets.sh when --sources is not given (x264 defaults: keyframe interval up to 250,
B-frames), under .bench-data/long/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if "--child" not in sys.argv:  # a child imports s5vh_cli from its PYTHONPATH (this checkout or the baseline)
    sys.path.insert(0, str(ROOT))

BACKBONE_CONFIGS = {  # name -> (runtime, precision, env, tweaks)
    "torch f32 (today)": ("torch", "float32", {}, {}),
    "torch f32, OMP passive": ("torch", "float32", {"OMP_WAIT_POLICY": "PASSIVE"}, {}),
    "onnxruntime f32, spinning": ("onnxruntime", "float32", {}, {"ort_spinning": True}),
    "onnxruntime f32 (s5vh)": ("onnxruntime", "float32", {}, {}),
    "openvino f32 (s5vh)": ("openvino", "float32", {}, {}),
    "openvino f32, 2 streams x 1 thread": ("openvino", "float32", {}, {"ov_streams": 2}),
    "openvino bf16 (s5vh)": ("openvino", "bfloat16", {}, {}),
}
SOURCES = (  # (output name, ffmpeg input options, source clip, filter, duration cap s)
    ("cockatoo720.mp4", ["-stream_loop", "3"], "cockatoo.mp4", "scale=1280:720", None),
    ("bikes720.mp4", ["-stream_loop", "5"], "bikes.mp4", "scale=1280:720", None),
    ("vtest1080.mp4", [], "vtest.avi", "scale=1920:1080", 40),
)


# ----------------------------------------------------------------------------------------------------------
# known load
# ----------------------------------------------------------------------------------------------------------
@contextmanager
def known_load(kind: str):
    procs = []
    if kind == "spin2":
        # each spins until its parent is gone, so a benchmark killed mid-run leaves no load behind
        spin = "import os\np = os.getppid()\nwhile os.getppid() == p:\n    pass"
        procs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(2)]
        time.sleep(0.5)
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def child(spec: dict, env: dict | None = None, cwd: Path | None = None, pythonpath: Path | None = None) -> dict:
    e = dict(os.environ)
    e.update(env or {})
    e["PYTHONPATH"] = str(pythonpath or ROOT)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    out = subprocess.run(cmd, env=e, cwd=cwd or ROOT, capture_output=True, text=True)
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"child failed: {spec}\n{out.stderr[-2000:]}")


# ----------------------------------------------------------------------------------------------------------
# children
# ----------------------------------------------------------------------------------------------------------
def _model(name: str):
    """The registry backbone with its real weights, or random weights when they are not found offline."""
    import torch

    from s5vh_cli import backbones
    from s5vh_cli.errors import S5VHError

    try:
        return backbones.create_backbone(name, device="cpu"), "real"
    except S5VHError:
        torch.manual_seed(0)
        m = backbones.Backbone(backbones.get_spec(name), backbones.build_model(name)).eval()
        m.weights_sha256 = f"random{name}".ljust(64, "0")
        m.weights_path = "(random weights)"
        for p in m.parameters():
            p.requires_grad_(False)
        return m.to(memory_format=torch.channels_last), "random"


def child_backbone(spec: dict) -> dict:
    import torch

    from s5vh_cli import runtimes

    threads = spec["threads"]
    torch.set_num_threads(threads)
    model, weights = _model(spec["backbone"])
    if spec.get("ort_spinning"):
        orig = runtimes._ort_options

        def spinning(t):
            so = orig(t)
            so.add_session_config_entry("session.intra_op.allow_spinning", "1")
            return so

        runtimes._ort_options = spinning
    rt, prec = spec["runtime"], spec["precision"]
    if rt == "torch":
        emb = runtimes.TorchEmbedder(model, torch.device("cpu"), prec, threads)
    elif rt == "onnxruntime":
        emb = runtimes.OrtEmbedder(model, prec, threads)
    else:
        emb = runtimes.OpenVinoEmbedder(model, prec, threads, streams=spec.get("ov_streams", 1))
    if spec.get("prepare"):
        return {"ok": True}
    s = emb.input_size
    x = np.random.default_rng(1).integers(0, 256, (spec["batch"], s, s, 3), dtype=np.uint8)
    emb.embed(x)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < spec["seconds"]:
        emb.embed(x)
        n += len(x)
    return {"fps": n / (time.perf_counter() - t0), "weights": weights}


def child_e2e(spec: dict) -> dict:
    from s5vh_cli.config import ExtractConfig
    from s5vh_cli.extract import extract

    kw = {k: spec[k] for k in ("runtime", "precision") if spec.get(k)}
    cfg = ExtractConfig(frames=spec["frames"], batch_size=spec["batch"], **kw)
    out = Path(spec["tmp"]) / f"feats-{os.getpid()}.h5"
    import multiprocessing
    import resource

    def cpu() -> float:
        r = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        return sum(x.ru_utime + x.ru_stime for x in r)

    c0 = cpu()
    try:
        res = extract([spec["videos"]], out, config=cfg, device="cpu", workers=spec.get("workers"),
                      threads=spec.get("threads"))
    finally:
        out.unlink(missing_ok=True)
    deadline = time.time() + 30
    while multiprocessing.active_children() and time.time() < deadline:  # reap the decode workers: their CPU
        time.sleep(0.1)                                                   # time counts once they are waited for
    import s5vh_cli

    got = {"src": str(Path(s5vh_cli.__file__).parent), "fps": res.frames_per_s, "seconds": res.seconds,
           "videos": res.videos, "failed": len(res.failed), "cpu_s": cpu() - c0,
           "frames": res.extracted * spec["frames"], "workers": spec.get("workers"),
           "runtime": getattr(res, "runtime", "torch (no runtime layer)")}
    with open(ROOT / ".bench-data" / "bench-e2e-runs.jsonl", "a") as f:  # every run, for the record
        f.write(json.dumps(got | {"load_average": os.getloadavg()[0]}) + "\n")
    return got


# ----------------------------------------------------------------------------------------------------------
# parts
# ----------------------------------------------------------------------------------------------------------
def part_backbone(args) -> None:
    from s5vh_cli import runtimes

    names = [n for n in BACKBONE_CONFIGS if BACKBONE_CONFIGS[n][0] in runtimes.available_runtimes()]
    rows = {}
    for bb in args.backbones.split(","):
        for n in names:  # export/convert the graphs once, untimed
            rt, prec, env, tw = BACKBONE_CONFIGS[n]
            child({"kind": "backbone", "backbone": bb, "runtime": rt, "precision": prec, "threads": args.threads,
                   "batch": args.batch_size, "seconds": 0, "prepare": True, **tw}, env)
        for r in range(args.rounds):
            for n in names:
                rt, prec, env, tw = BACKBONE_CONFIGS[n]
                spec = {"kind": "backbone", "backbone": bb, "runtime": rt, "precision": prec, "threads": args.threads,
                        "batch": args.batch_size, "seconds": args.seconds, **tw}
                for cond in ("as is", "load"):
                    with known_load(args.load if cond == "load" else "none"):
                        got = child(spec, env)
                    key = (bb, n, cond)
                    rows[key] = max(rows.get(key, 0.0), got["fps"])
                    rows[(bb, n, "weights")] = got["weights"]
                print(f"  round {r + 1}: {bb} {n}: {rows[(bb, n, 'as is')]:.1f} / {rows[(bb, n, 'load')]:.1f}",
                      flush=True)
    print(f"\nbackbone alone, frames/s, batch {args.batch_size}, {args.threads} threads, best of {args.rounds} "
          f"(load: {args.load})")
    print("| backbone | runtime | as is | under load | load / as is | vs torch as is |")
    print("|---|---|---:|---:|---:|---:|")
    for bb in args.backbones.split(","):
        base = rows[(bb, names[0], "as is")]
        for n in names:
            a, b = rows[(bb, n, "as is")], rows[(bb, n, "load")]
            w = "" if rows[(bb, n, "weights")] == "real" else " (random weights)"
            print(f"| {bb}{w} | {n} | {a:.1f} | {b:.1f} | {b / a:.2f} | {a / base:.2f} |")


def make_sources(args) -> Path:
    if args.sources:
        return Path(args.sources)
    out = ROOT / ".bench-data" / "long"
    out.mkdir(parents=True, exist_ok=True)
    clips = ROOT / ".bench-data" / "clips"
    for name, pre, src, vf, cap in SOURCES:
        if (out / name).is_file() or not (clips / src).is_file():
            continue
        if not shutil.which("ffmpeg"):
            sys.exit("ffmpeg not found (apt-get install ffmpeg) and no --sources given")
        cmd = ["ffmpeg", "-v", "error", "-y", *pre, "-i", str(clips / src), "-an", *(["-t", str(cap)] if cap else []),
               "-vf", vf, "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", str(out / name)]
        subprocess.run(cmd, check=True)
    if not any(out.glob("*.mp4")):
        sys.exit(f"no long sources in {out}: run benchmarks/fetch_assets.sh --only clips first")
    return out


def part_decode(args, sources: Path) -> None:
    import cv2

    from s5vh_cli import video

    cv2.setNumThreads(1)
    video.DECODE_THREADS = 1  # as in the decode workers
    print(f"\ndecode of {args.frames} uniformly sampled frames per video, one thread, best of {args.rounds}")
    print("| source | size | frames | OpenCV CPU s | PyAV CPU s | CPU ratio | OpenCV wall s | PyAV wall s | same pixels |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for f in sorted(sources.glob("*.mp4")):
        best: dict[str, list[float]] = {}
        clips = {}
        for _ in range(args.rounds):
            for dec in ("opencv", "pyav"):
                t0, c0 = time.perf_counter(), time.process_time()
                clips[dec] = video.read_frames(str(f), args.frames, decoder=dec)
                w, c = time.perf_counter() - t0, time.process_time() - c0
                b = best.setdefault(dec, [1e9, 1e9])
                best[dec] = [min(b[0], c), min(b[1], w)]
        info = video.probe(str(f))
        same = np.array_equal(clips["opencv"].frames, clips["pyav"].frames)
        o, p = best["opencv"], best["pyav"]
        print(f"| {f.name} | {info.width}x{info.height} | {info.frame_count} | {o[0]:.2f} | {p[0]:.2f} | "
              f"{o[0] / p[0]:.2f} | {o[1]:.2f} | {p[1]:.2f} | {'yes' if same else 'NO'} |")


def part_e2e(args, sources: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-e2e-", dir=ROOT / ".bench-data"))
    try:
        vids = tmp / "videos"
        vids.mkdir()
        files = sorted(sources.glob("*.mp4"))
        files = [f for f in files if "720" in f.name] or files
        for i in range(args.videos):
            f = files[i % len(files)]
            os.link(f, vids / f"{i:02d}_{f.name}") if f.stat().st_dev == vids.stat().st_dev else shutil.copy(
                f, vids / f"{i:02d}_{f.name}")
        base = {"kind": "e2e", "videos": str(vids), "tmp": str(tmp), "frames": args.frames, "batch": args.batch_size}
        configs = {"today (baseline checkout)": ({}, Path(args.baseline).resolve()),
                   "s5vh (this checkout, defaults)": ({}, ROOT),
                   "s5vh, --runtime torch": ({"runtime": "torch"}, ROOT),
                   "s5vh, --workers 1": ({"workers": 1}, ROOT)}
        child(base, pythonpath=ROOT)  # warm-up: graphs exported, auto measured, files in the page cache
        rows: dict[tuple[str, str], float] = {}
        cpu: dict[str, float] = {}  # frames per CPU second (whole process tree), best over all runs
        info = {}
        for r in range(args.rounds):
            for n, (extra, src) in configs.items():
                for cond in ("as is", "load"):
                    with known_load(args.load if cond == "load" else "none"):
                        got = child(base | extra, pythonpath=src)
                    rows[(n, cond)] = max(rows.get((n, cond), 0.0), got["fps"])
                    if got.get("cpu_s"):
                        cpu[n] = max(cpu.get(n, 0.0), got["frames"] / got["cpu_s"])
                    info[n] = got
                print(f"  round {r + 1}: {n}: {rows[(n, 'as is')]:.1f} / {rows[(n, 'load')]:.1f} frames/s "
                      f"({info[n]['runtime']})", flush=True)
        names = ", ".join(sorted({f.name for f in files}))
        print(f"\nextract end to end: {args.videos} videos ({names}), T={args.frames}, best of {args.rounds} "
              f"(load: {args.load})")
        print("| code | as is, frames/s | under load | load / as is | vs today as is | vs today under load | "
              "frames per CPU s | vs today |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        base = "today (baseline checkout)"
        t_a, t_b, t_c = rows[(base, "as is")], rows[(base, "load")], cpu.get(base, 0.0)
        for n in configs:
            a, b, c = rows[(n, "as is")], rows[(n, "load")], cpu.get(n, 0.0)
            print(f"| {n} | {a:.1f} | {b:.1f} | {b / a:.2f} | {a / t_a:.2f} | {b / t_b:.2f} | {c:.2f} | "
                  f"{c / t_c if t_c else float('nan'):.2f} |")
        for n in configs:
            print(f"  {n}: {info[n]['runtime']}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def part_precision(args) -> None:
    """Retrieval with query and database features extracted at float32 and at bfloat16 (--map-runtime), the
    encoders (LSH, ITQ, S5VH) fitted once on the float32 training features: the effect of extracting at bf16."""
    import h5py

    work = ROOT / ".bench-data" / "runs" / "precision"
    py = [sys.executable, "-m"]
    rows = []
    speeds: dict[tuple[str, str], float] = {}

    def run(cmd: list[str]) -> str:
        print("$ " + " ".join(cmd), flush=True)
        return subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout

    for data in [Path(d) for d in args.map_data.split(",")]:
        if not (data / "labels").is_dir():
            sys.exit(f"{data}: not a built dataset (see docs/BENCHMARKS.md, Setup)")
        cfg = json.loads((data / "dataset.json").read_text()) if (data / "dataset.json").is_file() else {}
        frames = (cfg.get("config") or {}).get("frames") or 25
        fit_split = "train" if (data / "train").is_dir() else "database"
        feats = {}
        for prec, splits in (("float32", sorted({fit_split, "query", "database"})), ("bfloat16", ["query", "database"])):
            fdir = work / data.name / f"features-{prec}"
            fdir.mkdir(parents=True, exist_ok=True)
            for split in splits:
                out = fdir / f"{split}.h5"
                if not out.is_file():
                    r = json.loads(run([*py, "s5vh_cli", "extract", str(data / split), "-o", str(out), "--frames",
                                        str(frames), "--runtime", args.map_runtime, "--precision", prec,
                                        "--threads", str(args.threads), "--json"]))
                    n, t = speeds.get((data.name, prec), (0.0, 0.0))
                    speeds[(data.name, prec)] = (n + r["extracted"] * frames, t + r["seconds"])
                with h5py.File(out) as h5:
                    assert h5.attrs["precision"] == prec
            feats[prec] = fdir
        # the encoders, fitted on float32 features (run_benchmarks: centres, LSH, ITQ, S5VH as published)
        wd = work / data.name / "float32"
        run([*py, "benchmarks.run_benchmarks", "--data", str(data), "--features", str(feats["float32"]),
             "--workdir", str(wd), "--bits", args.map_bits, "--methods", args.map_methods, "--epochs",
             str(args.map_epochs), "--threads", str(args.threads), "--in-process"])
        res = json.loads((wd / "results.json").read_text())
        codes = work / data.name / "codes-bfloat16"
        codes.mkdir(exist_ok=True)
        for key in sorted(res["evals"]):
            method_bits, level = key.rsplit("/", 1)
            method, bits = method_bits.split("/")
            q, db = codes / f"{method}{bits}_query.h5", codes / f"{method}{bits}_database.h5"
            if not q.is_file():
                if method in ("lsh", "itq"):
                    run([*py, "benchmarks.baselines", "--method", method, "--bits", bits, "--seed", "1", "--train",
                         str(feats["float32"] / f"{fit_split}.h5"), "--encode", str(feats["bfloat16"] / "query.h5"),
                         "-o", str(q), "--encode", str(feats["bfloat16"] / "database.h5"), "-o", str(db)])
                else:
                    model = wd / "models" / f"{method}{bits}.pt"
                    for split, out in (("query", q), ("database", db)):
                        run([*py, "s5vh_cli", "encode", str(model), str(feats["bfloat16"] / f"{split}.h5"), "-o",
                             str(out), "--threads", str(args.threads), "--quiet"])
            lab = data / "labels"
            ev = json.loads(run([*py, "s5vh_cli", "eval", str(q), "--labels", str(lab / f"query_{level}.h5"),
                                 "--database", str(db), "--db-labels", str(lab / f"database_{level}.h5"), "--k",
                                 "5,20,100", "--no-full-map", "--json"]).strip().splitlines()[-1])
            a = res["evals"][key]["map_at_k"]
            for k in a:
                rows.append((data.name, key, k, a[k], ev["map_at_k"][k]))
    print(f"\nretrieval mAP@K, query and database features at float32 and bfloat16 ({args.map_runtime}); "
          f"encoders fitted on float32 features ({args.map_epochs} epochs)")
    print("| dataset | method/bits/level | K | float32 | bfloat16 | difference |")
    print("|---|---|---:|---:|---:|---:|")
    for name, key, k, a, b in rows:
        print(f"| {name} | {key} | {k} | {a:.4f} | {b:.4f} | {b - a:+.4f} |")
    for (name, prec), (n, t) in sorted(speeds.items()):
        print(f"  extract {name} at {prec}: {n / t:.1f} frames/s (this run's new extractions)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child")
    ap.add_argument("--part", default="backbone,decode,e2e")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backbones", default="mobilenet_v2")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--load", default="spin2", choices=("spin2", "none"))
    ap.add_argument("--baseline", default="/tmp/s5vh-main")
    ap.add_argument("--sources")
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--frames", type=int, default=25)
    ap.add_argument("--map-data", default=",".join(str(ROOT / ".bench-data" / "built" / d)
                                                   for d in ("fmnist_temporal_reduced", "copy_detection")))
    ap.add_argument("--map-runtime", default="openvino")
    ap.add_argument("--map-bits", default="64")
    ap.add_argument("--map-methods", default="lsh,itq,s5vh_paper")
    ap.add_argument("--map-epochs", type=int, default=30)
    args = ap.parse_args()
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # run the clean-ups (known load, temporary files)
    if args.child:
        spec = json.loads(args.child)
        res = child_backbone(spec) if spec["kind"] == "backbone" else child_e2e(spec)
        print(json.dumps(res))
        return
    parts = args.part.split(",")
    print(f"cpu cores {os.cpu_count()}, load average at start {os.getloadavg()[0]:.1f}; "
          f"started {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
    if "backbone" in parts:
        part_backbone(args)
    sources = make_sources(args) if ("decode" in parts or "e2e" in parts) else None
    if "decode" in parts:
        part_decode(args, sources)
    if "e2e" in parts:
        if not (Path(args.baseline) / "s5vh_cli").is_dir():
            sys.exit(f"{args.baseline}: no s5vh_cli here; make it with: git archive main | tar -x -C {args.baseline}")
        part_e2e(args, sources)
    if "precision" in parts:
        part_precision(args)
    print(f"\nload average at end {os.getloadavg()[0]:.1f}; finished {time.strftime('%H:%M UTC', time.gmtime())}")


if __name__ == "__main__":
    main()
