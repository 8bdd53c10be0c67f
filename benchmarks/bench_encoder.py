"""S5VH encoder stack (bidirectional Mamba) vs a Transformer encoder of the same width, side by side, on the CPU.

Every configuration runs in a fresh subprocess, so its peak resident memory (ru_maxrss) is its own; the
S5VH and Transformer runs of one configuration follow each other, and the whole sweep is repeated
``--rounds`` times keeping the fastest time of each, which damps noise from other work on shared cores.

    .venv/bin/python benchmarks/bench_encoder.py            # full table (several minutes on 2 cores)
    .venv/bin/python benchmarks/bench_encoder.py --quick    # frames 25 and 100 only
    .venv/bin/python benchmarks/bench_encoder.py --threads 1 --clock cpu   # CPU time, when the cores are shared
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

WIDTH, DEPTH, HEADS, FFN, D_STATE, EXPAND = 256, 6, 8, 1024, 16, 2
# Same batch for both models at each length; smaller at long lengths so attention fits in memory.
BATCH = {25: 128, 100: 128, 400: 32, 1000: 16, 4000: 4}


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _build(kind: str, backend: str, tie: bool):
    import torch
    from torch import nn

    torch.manual_seed(0)
    if kind == "s5vh":
        from s5vh_cli.mamba import BiMambaBlock

        blocks = [
            BiMambaBlock(WIDTH, d_state=D_STATE, expand=EXPAND, tie_directions=tie, backend=backend)
            for _ in range(DEPTH)
        ]
        return nn.Sequential(*blocks, nn.LayerNorm(WIDTH, eps=1e-6))
    layer = nn.TransformerEncoderLayer(WIDTH, HEADS, FFN, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, DEPTH, enable_nested_tensor=False)


def child(args) -> None:
    import torch

    if args.clock == "cpu":
        time.perf_counter = (
            time.process_time
        )  # CPU seconds of this process: immune to waiting for shared cores

    torch.set_num_threads(args.threads)
    result = {}
    if args.kind == "scan":
        from s5vh_cli.ssm import selective_scan

        b, d, n, seqlen = args.batch, EXPAND * WIDTH, D_STATE, args.frames
        g = torch.Generator().manual_seed(0)
        xs = [
            torch.randn(b, d, seqlen, generator=g),
            torch.randn(b, d, seqlen, generator=g),
            -torch.rand(d, n, generator=g) - 0.1,
            torch.randn(b, n, seqlen, generator=g),
            torch.randn(b, n, seqlen, generator=g),
            torch.randn(d, generator=g),
            torch.randn(b, d, seqlen, generator=g),
            torch.randn(d, generator=g),
        ]
        for x in xs:
            x.requires_grad_()
        selective_scan(*xs, delta_softplus=True, backend=args.backend)  # load / compile
        fwd, step = [], []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            with torch.no_grad():
                selective_scan(*xs, delta_softplus=True, backend=args.backend)
            t1 = time.perf_counter()
            selective_scan(*xs, delta_softplus=True, backend=args.backend).sum().backward()
            step.append(time.perf_counter() - t1)
            fwd.append(t1 - t0)
        result = {"fwd_ms": 1e3 * min(fwd), "train_ms": 1e3 * min(step)}
    else:
        model = _build(args.kind, args.backend, args.tie)
        x = torch.randn(args.batch, args.frames, WIDTH)
        if args.mode == "infer":
            model.eval()
            with torch.no_grad():
                model(x[:1, : min(args.frames, 8)])  # load kernels before measuring memory
                base = _rss_mb()
                times = []
                for _ in range(args.reps):
                    t0 = time.perf_counter()
                    model(x)
                    times.append(time.perf_counter() - t0)
        else:
            model.train()
            opt = torch.optim.SGD(model.parameters(), lr=1e-4)
            model(x[:1, :8]).sum().backward()
            base = _rss_mb()
            times = []
            for _ in range(args.reps):
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                model(x).pow(2).mean().backward()
                opt.step()
                times.append(time.perf_counter() - t0)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result = {"ms": 1e3 * min(times), "peak_mb": peak, "extra_mb": peak - base}
    print(json.dumps(result))


def run_child(base_cmd: list[str], policy: str = "default", **kw) -> dict:
    cmd = list(base_cmd)
    for key, value in kw.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy.upper()
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return dict(json.loads(out.stdout.strip().splitlines()[-1]), policy=policy)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", default="auto", help="selective-scan backend of the S5VH stack")
    ap.add_argument("--tie", action="store_true", help="tie the two directions (released-code behaviour)")
    ap.add_argument("--frames", default="25,100,400,1000,4000")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: elapsed time; cpu: CPU time of the process (robust when others load the cores; use --threads 1)",
    )
    ap.add_argument(
        "--wait-policies",
        default="default,passive",
        help="OpenMP wait policies to run every configuration under (default = OMP_WAIT_POLICY unset, as plain "
        "PyTorch runs; passive = what the s5vh command sets); each model keeps its fastest",
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--kind", default="s5vh", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="infer", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=128, help=argparse.SUPPRESS)
    ap.add_argument("--reps", type=int, default=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.frames = int(args.frames)
        child(args)
        return

    frames = [25, 100] if args.quick else [int(f) for f in args.frames.split(",")]
    base = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        "--threads",
        str(args.threads),
        "--backend",
        args.backend,
        "--clock",
        args.clock,
    ] + (["--tie"] if args.tie else [])
    from s5vh_cli.ssm import resolve_backend

    print(
        f"# {args.threads} threads, width {WIDTH}, depth {DEPTH}, d_state {D_STATE}, expand {EXPAND}, fp32; "
        f"S5VH scan backend: {resolve_backend(args.backend, 'cpu')[1]}; directions "
        f"{'tied' if args.tie else 'untied'}; {args.clock} clock; load average at start {os.getloadavg()[0]:.1f}"
    )
    best: dict[tuple, dict] = {}

    def keep(key, res, field):
        if "error" in res:
            best.setdefault(key, res)
        elif key not in best or "error" in best[key] or res[field] < best[key][field]:
            best[key] = res

    policies = args.wait_policies.split(",")
    for _ in range(args.rounds):
        for policy in policies:
            for t in frames:
                reps = 5 if t <= 100 else 2
                for kind in ("s5vh", "transformer"):
                    keep(
                        (kind, "infer", t),
                        run_child(base, policy, kind=kind, mode="infer", frames=t, batch=BATCH[t], reps=reps),
                        "ms",
                    )
            for kind in ("s5vh", "transformer"):
                keep(
                    (kind, "train", 25),
                    run_child(base, policy, kind=kind, mode="train", frames=25, batch=128, reps=3),
                    "ms",
                )
            for backend in ("reference", "torch", "cpu"):
                keep(
                    ("scan", backend),
                    run_child(base, policy, kind="scan", frames=25, batch=128, reps=3, backend=backend),
                    "fwd_ms",
                )

    def cell(key, field, fmt="{:.1f}"):
        res = best.get(key, {})
        return fmt.format(res[field]) if field in res else res.get("error", "-")[:40]

    print(
        "\n| frames | batch | S5VH ms (policy) | Transformer ms (policy) | time ratio S5VH/Tr | S5VH peak MB (+extra) "
        "| Transformer peak MB (+extra) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for t in frames:
        s, r = best[("s5vh", "infer", t)], best[("transformer", "infer", t)]
        ratio = f"{s['ms'] / r['ms']:.2f}" if "ms" in s and "ms" in r else "-"
        print(
            f"| {t} | {BATCH[t]} | {cell(('s5vh', 'infer', t), 'ms')} ({s.get('policy', '-')}) "
            f"| {cell(('transformer', 'infer', t), 'ms')} ({r.get('policy', '-')}) "
            f"| {ratio} | {cell(('s5vh', 'infer', t), 'peak_mb', '{:.0f}')} "
            f"(+{cell(('s5vh', 'infer', t), 'extra_mb', '{:.0f}')}) "
            f"| {cell(('transformer', 'infer', t), 'peak_mb', '{:.0f}')} "
            f"(+{cell(('transformer', 'infer', t), 'extra_mb', '{:.0f}')}) |"
        )
    s, r = best[("s5vh", "train", 25)], best[("transformer", "train", 25)]
    ratio = f"{s['ms'] / r['ms']:.2f}" if "ms" in s and "ms" in r else "-"
    print(
        f"\ntrain step (forward + backward + SGD), 25 frames, batch 128: S5VH {cell(('s5vh', 'train', 25), 'ms')} ms "
        f"({s.get('policy', '-')}), Transformer {cell(('transformer', 'train', 25), 'ms')} ms ({r.get('policy', '-')}), "
        f"ratio {ratio}"
    )
    print("\n| scan backend (b 128, d 512, n 16, L 25) | forward ms | forward+backward ms | policy |")
    print("|---|---:|---:|---|")
    for backend in ("reference", "torch", "cpu"):
        print(
            f"| {backend} | {cell(('scan', backend), 'fwd_ms')} | {cell(('scan', backend), 'train_ms')} "
            f"| {best.get(('scan', backend), {}).get('policy', '-')} |"
        )
    print(f"\n# load average at end {os.getloadavg()[0]:.1f} (on {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
