"""Convergence: retrieval mAP@K against training epoch, with and without the centre-alignment loss.

Computes the centres once (or reads ``--centers``), then trains the same model twice in this process with
the library ``train()``: ``with_ca`` uses the preset's centre-alignment weight (``a_cluster``), ``no_ca`` sets
it to 0. Everything else (seed, initial weights, batch order, masks) is the same. After every epoch a
callback encodes the query and database features with the current weights and computes the SSVH mAP@K of
query vs database (``s5vh_cli.evaluate.evaluate``, the tie rule of ``s5vh eval``: Hamming distance, then
database row) at each label level. The callback does not change the run: the last epoch's numbers equal
those of the printed ``s5vh train`` / ``s5vh encode`` / ``s5vh eval`` commands.

Writes, rewritten after every epoch (so a run cut short keeps what finished):
  <out>/results.json      per run and epoch: losses, the centre-alignment term actually weighted in, mAP@K per
                          level, seconds (train, evaluation, elapsed)
  <out>/results.md        tables of mAP@K and losses against epoch
  <out>/convergence.png   mAP@K against epoch, both runs (skipped with a note when matplotlib is missing)
plus <out>/centers.h5 (when computed here) and <out>/models/{with_ca,no_ca}.pt (the last epoch's weights).

Usage: python -m benchmarks.bench_convergence --train F.h5 --query Q.h5 --database D.h5
       --query-labels QL.h5 [QL2.h5 ...] --db-labels DL.h5 [DL2.h5 ...] [--levels labels,motion]
       [--bits 64] [--epochs 30] [--preset default] [--behaviour paper|released] [--batch-size N]
       [--threads N] [--centers C.h5] [--ks 5,20,100] [--reference results.json] --out DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RUNS = ("with_ca", "no_ca")
TAIL = 5  # epochs averaged in the "mean of last" row of results.md
RUN_TITLES = {"with_ca": "with centre alignment", "no_ca": "without centre alignment (a_cluster = 0)"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=Path, help="training features (s5vh extract)")
    ap.add_argument("--query", type=Path, help="query features")
    ap.add_argument("--database", type=Path, help="database features")
    ap.add_argument("--query-labels", nargs="+", type=Path, help="one labels file per level")
    ap.add_argument("--db-labels", nargs="+", type=Path, help="one labels file per level")
    ap.add_argument("--levels", default=None,
                    help="names of the label levels, comma-separated [default: query label file names without "
                         "a 'query_' prefix]")
    ap.add_argument("--out", required=True, type=Path, help="output folder (created)")
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--behaviour", default="paper", choices=("paper", "released"))
    ap.add_argument("--batch-size", type=int, default=None, help="[default: the preset's]")
    ap.add_argument("--a-cluster", type=float, default=None,
                    help="centre-alignment weight of the with_ca run [default: the preset's]")
    ap.add_argument("--warm-up-epochs", type=int, default=None,
                    help="epochs before pseudo-label smoothing [default: the preset's]")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--centers", type=Path, default=None, help="centres file; computed here when omitted")
    ap.add_argument("--clusters", type=int, default=None, help="k-means clusters [default: the preset's]")
    ap.add_argument("--pca-dim", type=int, default=None, help="PCA dims before k-means [default: the preset's]")
    ap.add_argument("--ks", default="5,20,100", help="mAP@K cut-offs, comma-separated")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--ssm-backend", default="auto")
    ap.add_argument("--reference", type=Path, default=None,
                    help="results.json of benchmarks.run_benchmarks: its LSH/ITQ rows at --bits are drawn as "
                         "reference lines")
    ap.add_argument("--table-every", type=int, default=1, help="show every Nth epoch in results.md (and the last)")
    ap.add_argument("--runs", default=",".join(RUNS),
                    help="which runs to train, comma-separated (with_ca, no_ca): to train them side by side in two "
                         "processes, give each its own --out and the same --centers, then --combine")
    ap.add_argument("--combine", nargs="+", type=Path, default=None,
                    help="results.json files of runs made separately with the same settings: merge them into --out "
                         "(no training)")
    args = ap.parse_args(argv)
    if args.combine is None:
        missing = [o for o in ("train", "query", "database", "query_labels", "db_labels") if getattr(args, o) is None]
        if missing:
            ap.error("required: " + ", ".join("--" + m.replace("_", "-") for m in missing) + " (or --combine)")
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    if not runs or any(r not in RUNS for r in runs):
        ap.error(f"--runs: choose from {', '.join(RUNS)}, got {args.runs!r}")
    args.runs = runs
    return args


def level_names(query_labels: list[Path], levels: str | None) -> list[str]:
    if levels:
        names = [x.strip() for x in levels.split(",") if x.strip()]
    else:
        names = [p.stem[len("query_"):] if p.stem.startswith("query_") else p.stem for p in query_labels]
    if len(names) != len(query_labels) or len(set(names)) != len(names):
        raise SystemExit(f"--levels: need {len(query_labels)} distinct names, one per --query-labels file, "
                         f"got {names}")
    return names


def _cmd(*parts: Any) -> str:
    return shlex.join(str(p) for p in parts)


def _reference_rows(path: Path | None, bits: int) -> list[dict[str, Any]]:
    """LSH/ITQ mAP@K from a run_benchmarks results.json (same data, same evaluation)."""
    if path is None:
        return []
    data = json.loads(path.read_text())
    return [r for r in data.get("rows", []) if r.get("method") in ("lsh", "itq") and r.get("bits") == bits]


# ----------------------------------------------------------------------------------------------------------
# outputs
# ----------------------------------------------------------------------------------------------------------
def _write_text(path: Path, text: str) -> None:
    from s5vh_cli import artifacts

    with artifacts.atomic_output(path) as tmp:
        tmp.write_text(text)


def _fmt(x: float | None, nd: int = 4) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.{nd}f}"


def _epoch_table(runs: dict[str, Any], shown: list[int], columns: list[str],
                 cells_of: Callable[[dict[str, Any]], list[str]]) -> list[str]:
    """Markdown rows, one per shown epoch: for each run, the cells ``cells_of`` makes from that epoch's record
    (blank when the run has fewer epochs)."""
    head = ["epoch"] + [f"{'CA' if r == 'with_ca' else 'no CA'} {c}" for r in RUNS for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for e in shown:
        cells = [str(e)]
        for r in RUNS:
            eps = runs[r]["epochs"]
            cells += cells_of(eps[e - 1]) if e <= len(eps) else [""] * len(columns)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(result: dict[str, Any], every: int = 1) -> str:
    cfg, ks, levels = result["config"], result["config"]["ks"], result["config"]["levels"]
    runs = result["runs"]
    n_ep = max((len(r["epochs"]) for r in runs.values()), default=0)
    shown = [e for e in range(1, n_ep + 1) if e % max(every, 1) == 0 or e == 1 or e == n_ep]
    lines = [f"Convergence at {cfg['bits']} bits, preset {cfg['preset']}, behaviour {cfg['behaviour']}, "
             f"{cfg['epochs']} epochs, batch {cfg['batch_size']}, seed {cfg['seed']}; with_ca: a_cluster = "
             f"{runs['with_ca']['a_cluster']}, no_ca: a_cluster = 0. mAP@K of query vs database (SSVH, ties by "
             "database row).", ""]
    for lvl in levels:
        lines += [f"**{lvl}** relevance:", ""]
        lines += _epoch_table(runs, shown, [f"mAP@{k}" for k in ks],
                              lambda row, lvl=lvl: [_fmt(row["map_at_k"][lvl][str(k)]) for k in ks])
        if n_ep >= 2 * TAIL:  # one epoch's numbers are noisy: the mean of the last few says more
            cells = [f"mean of last {TAIL}"]
            for r in RUNS:
                eps = runs[r]["epochs"][-TAIL:] if len(runs[r]["epochs"]) == n_ep else []
                cells += [_fmt(sum(e["map_at_k"][lvl][str(k)] for e in eps) / TAIL) if eps else "" for k in ks]
            lines.append("| " + " | ".join(cells) + " |")
        for ref in result.get("reference", []):
            m = ref.get("map", {}).get(lvl)
            if m:
                vals = [_fmt(m.get(str(k))) for k in ks]
                lines.append(f"| {ref['method'].upper()} (reference) | " + " | ".join(vals + vals) + " |")
        lines.append("")
    lines += ["Training losses (epoch means; `ca term` = a_cluster x ca, the part of the loss the alignment "
              "contributes):", ""]
    lines += _epoch_table(runs, shown, ["loss", "rec", "dcl", "ca", "ca term"],
                          lambda row: [_fmt(row[c]) for c in ("loss", "rec", "dcl", "ca", "ca_term")])
    secs = {r: sum(x["train_s"] for x in runs[r]["epochs"]) for r in RUNS}
    ev = {r: sum(x["eval_s"] for x in runs[r]["epochs"]) for r in RUNS}
    lines += ["", "Seconds: " + "; ".join(f"{r}: training {secs[r]:.1f} s over {len(runs[r]['epochs'])} epochs, "
                                          f"per-epoch evaluation {ev[r]:.1f} s" for r in RUNS), ""]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> str | None:
    """mAP@K against epoch, one panel per (level, K); returns a note when the PNG could not be made."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot written"
    from s5vh_cli import artifacts

    cfg = result["config"]
    levels, ks = cfg["levels"], cfg["ks"]
    fig, axes = plt.subplots(len(levels), len(ks), figsize=(4.2 * len(ks), 3.2 * len(levels)), squeeze=False)
    styles = {"with_ca": dict(color="C0", marker="o"), "no_ca": dict(color="C3", marker="s")}
    ref_styles = {"lsh": dict(color="0.5", linestyle=":"), "itq": dict(color="0.2", linestyle="--")}
    for i, lvl in enumerate(levels):
        for j, k in enumerate(ks):
            ax = axes[i][j]
            for r in RUNS:
                eps = result["runs"][r]["epochs"]
                if eps:
                    ax.plot([x["epoch"] for x in eps], [x["map_at_k"][lvl][str(k)] for x in eps], markersize=3,
                            label=RUN_TITLES[r] if r == "no_ca" else f"{RUN_TITLES[r]} "
                            f"(a_cluster = {result['runs'][r]['a_cluster']})", **styles[r])
            for ref in result.get("reference", []):
                v = ref.get("map", {}).get(lvl, {}).get(str(k))
                if v is not None:
                    ax.axhline(v, label=f"{ref['method'].upper()} (mean features)", **ref_styles[ref["method"]])
            ax.set_title(f"{lvl}: mAP@{k}", fontsize=10)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle(f"S5VH {cfg['bits']} bits, preset {cfg['preset']}, behaviour {cfg['behaviour']}", fontsize=11)
    fig.tight_layout()
    with artifacts.atomic_output(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return None


def write_outputs(result: dict[str, Any], out: Path, every: int = 1, with_plot: bool = True) -> None:
    if with_plot:  # first, so that results.json says whether the picture exists
        note = plot(result, out / "convergence.png")
        result["plot"] = note or str(out / "convergence.png")
    _write_text(out / "results.json", json.dumps(result, indent=1, sort_keys=True) + "\n")
    _write_text(out / "results.md", markdown(result, every))


# ----------------------------------------------------------------------------------------------------------
# the benchmark
# ----------------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace, log=print) -> dict[str, Any]:
    import numpy as np
    import torch

    from s5vh_cli import artifacts, config
    from s5vh_cli.centers import compute_centers
    from s5vh_cli.encode import encode_array
    from s5vh_cli.errors import InputError, MismatchError
    from s5vh_cli.evaluate import evaluate, load_labels
    from s5vh_cli.train import train

    levels = level_names(args.query_labels, args.levels)
    if len(args.db_labels) != len(args.query_labels):
        raise InputError(f"--db-labels: {len(args.db_labels)} files for {len(args.query_labels)} query label files")
    ks = sorted({int(k) for k in args.ks.split(",") if k.strip()})
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = args.out
    for sub in ("models", "codes"):  # codes/: where the printed encode commands write
        (out / sub).mkdir(parents=True, exist_ok=True)

    model_cfg, train_cfg, centers_cfg = config.preset(args.preset, args.behaviour)
    model_cfg = config.replace(model_cfg, bits=args.bits).validate()
    train_cfg = config.replace(train_cfg, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                               a_cluster=args.a_cluster, warm_up_epochs=args.warm_up_epochs).validate()
    if train_cfg.a_cluster == 0:
        raise InputError("--a-cluster 0 would make both runs the same; give the with_ca run a positive weight")

    feats = artifacts.read_features(args.train)
    query = artifacts.read_features(args.query)
    db = artifacts.read_features(args.database)
    for f in (query, db):
        if (f.frames, f.dim) != (feats.frames, feats.dim):
            raise MismatchError(f"{f.path}: [{f.frames} frames x {f.dim}-d] but {feats.path} is "
                                f"[{feats.frames} frames x {feats.dim}-d]")
    labels = {lvl: (load_labels(ql, n=query.n), load_labels(dl, n=db.n))
              for lvl, ql, dl in zip(levels, args.query_labels, args.db_labels, strict=True)}
    log(f"# train {feats.n} videos, query {query.n}, database {db.n}; {feats.frames} frames x {feats.dim}-d; "
        f"levels {', '.join(levels)}")

    commands: list[str] = []

    def say(cmd: str) -> None:
        commands.append(cmd)
        log("$ " + cmd)

    s5vh = "s5vh"
    if args.centers is None:
        # the clamps train() applies to in-process centres, so that a tiny input still runs
        ccfg = config.replace(centers_cfg, n_clusters=args.clusters, pca_dim=args.pca_dim, seed=args.seed)
        k = max(2, min(ccfg.n_clusters, feats.n // 4))
        pca = max(1, min(ccfg.pca_dim, feats.dim, feats.n - 1))
        ccfg = dataclasses.replace(ccfg, n_clusters=k, pca_dim=pca, bits=[args.bits])
        centers_path = out / "centers.h5"
        say(_cmd(s5vh, "centers", args.train, "-o", centers_path, "--bits", args.bits, "-k", k, "--pca-dim", pca,
                 "--preset", args.preset, "--seed", args.seed, "--json", "-q"))
        t0 = time.perf_counter()
        cents = compute_centers(feats.feats, ccfg, features_sha256=feats.sha256)
        artifacts.write_centers(centers_path, cents, artifacts.provenance("centers", config.to_dict(ccfg),
                                                                         {"features": feats.sha256}))
        cents = artifacts.read_centers(centers_path)
        centres_s = time.perf_counter() - t0
        log(f"# centres: {k} clusters, {args.bits} bits, {centres_s:.1f} s")
    else:
        centers_path = args.centers
        cents = artifacts.read_centers(centers_path)
        centres_s = 0.0

    result: dict[str, Any] = {
        "config": {"bits": args.bits, "epochs": train_cfg.epochs, "preset": args.preset,
                   "behaviour": args.behaviour, "batch_size": train_cfg.batch_size, "seed": args.seed,
                   "warm_up_epochs": train_cfg.warm_up_epochs, "ks": ks, "levels": levels,
                   "threads": torch.get_num_threads(), "device": args.device, "ssm_backend": args.ssm_backend,
                   "train": str(args.train), "query": str(args.query), "database": str(args.database),
                   "query_labels": [str(p) for p in args.query_labels],
                   "db_labels": [str(p) for p in args.db_labels], "centers": str(centers_path),
                   "centers_computed_here": args.centers is None, "centres_s": round(centres_s, 2),
                   "n_train": feats.n, "n_query": query.n, "n_database": db.n,
                   "argv": sys.argv[1:]},
        "commands": commands,
        "reference": _reference_rows(args.reference, args.bits),
        "runs": {r: {"a_cluster": train_cfg.a_cluster if r == "with_ca" else 0.0, "epochs": [], "done": False}
                 for r in RUNS},
    }
    every = args.table_every
    for name in args.runs:
        run_rec = result["runs"][name]
        tcfg = dataclasses.replace(train_cfg, a_cluster=run_rec["a_cluster"])
        model_path = out / "models" / f"{name}.pt"
        train_cmd = [s5vh, "train", args.train, "--centers", centers_path, "-o", model_path, "--bits", args.bits,
                     "--preset", args.preset, "--behaviour", args.behaviour, "--seed", args.seed,
                     "--epochs", tcfg.epochs, "--batch-size", tcfg.batch_size, "--a-cluster", tcfg.a_cluster,
                     "--warm-up-epochs", tcfg.warm_up_epochs, "--device", args.device,
                     "--ssm-backend", args.ssm_backend]
        if args.threads is not None:
            train_cmd += ["--threads", args.threads]
        say(_cmd(*train_cmd) + "   # per-epoch evaluation runs in-process after each epoch")
        t_run = time.perf_counter()

        def on_epoch(epoch: int, model: torch.nn.Module, row: dict, run_rec=run_rec, t_run=t_run,
                     tcfg=tcfg, name=name) -> None:
            a = tcfg.a_cluster
            t0 = time.perf_counter()
            qc = encode_array(model, query.feats)
            dc = encode_array(model, db.feats)
            maps = {lvl: evaluate(qc, ql, dc, dl, args.bits, ks=tuple(ks), full_map=False,
                                  pr=False)["map_at_k"] for lvl, (ql, dl) in labels.items()}
            eval_s = time.perf_counter() - t0
            entry = {"epoch": epoch, "lr": row["lr"], "loss": row["loss"], "rec": row["rec"], "dcl": row["dcl"],
                     "ca": row["ca"], "a_cluster": a, "ca_term": a * row["ca"],
                     "loss_minus_rec_alpha_dcl": row["loss"] - row["rec"] - tcfg.alpha * row["dcl"],
                     "train_s": row["time_s"], "eval_s": round(eval_s, 3),
                     "elapsed_s": round(time.perf_counter() - t_run, 2),
                     "bits_set_fraction": round(float(np.unpackbits(dc, axis=1).mean()), 4),
                     "map_at_k": maps}
            run_rec["epochs"].append(entry)
            write_outputs(result, out, every)
            first = levels[0]
            log(f"{name} epoch {epoch:>3}/{tcfg.epochs}: loss {row['loss']:.4f} (rec {row['rec']:.4f}, dcl "
                f"{row['dcl']:.4f}, ca {row['ca']:.4f} x {a}) | {first} mAP@" +
                ", @".join(f"{k} {maps[first][str(k)]:.4f}" for k in ks) +
                f" | train {row['time_s']:.1f} s, eval {eval_s:.1f} s")

        summary = train(feats, cents, model_cfg, tcfg, model_path, device=args.device,
                        ssm_backend=args.ssm_backend, on_epoch=on_epoch)
        run_rec["done"] = True
        run_rec["seconds"] = round(time.perf_counter() - t_run, 2)
        run_rec["train_seconds"] = summary["seconds"]
        run_rec["ssm_backend"] = summary["ssm_backend"]
        run_rec["model"] = str(model_path)
        # the same last-epoch numbers, from files, with the command-line tools
        for split, fpath in (("query", args.query), ("database", args.database)):
            say(_cmd(s5vh, "encode", model_path, fpath, "-o", out / "codes" / f"{name}_{split}.h5", "-q",
                     "--ssm-backend", args.ssm_backend)
                + ("" if args.threads is None else f" --threads {args.threads}"))
        for lvl, ql, dl in zip(levels, args.query_labels, args.db_labels, strict=True):
            say(_cmd(s5vh, "eval", out / "codes" / f"{name}_query.h5", "--labels", ql, "--database",
                     out / "codes" / f"{name}_database.h5", "--db-labels", dl, "--k", ",".join(map(str, ks)),
                     "--no-full-map", "--json") + f"   # = {name} epoch {tcfg.epochs}, level {lvl}")
        write_outputs(result, out, every)
    return result


_SAME_SETTINGS = ("bits", "epochs", "preset", "behaviour", "batch_size", "seed", "warm_up_epochs", "ks", "levels",
                  "train", "query", "database", "query_labels", "db_labels", "centers")


def combine(paths: list[Path], out: Path, every: int = 1) -> dict[str, Any]:
    """Merge results.json files whose runs were trained separately (same settings); each run from the file
    that holds the most epochs of it."""
    from s5vh_cli.errors import InputError, MismatchError

    results = []
    for p in paths:
        try:
            results.append(json.loads(Path(p).read_text()))
        except (OSError, ValueError) as e:
            raise InputError(f"{p}: not a readable results.json ({e})") from None
    base = results[0]
    for p, r in zip(paths[1:], results[1:], strict=True):
        diff = [k for k in _SAME_SETTINGS if r["config"].get(k) != base["config"].get(k)]
        if diff:
            raise MismatchError(f"{p}: other settings than {paths[0]} ({', '.join(diff)}); cannot combine")
    merged = {**base, "runs": {}, "commands": [], "combined_from": [str(p) for p in paths]}
    for name in RUNS:
        merged["runs"][name] = max((r["runs"][name] for r in results), key=lambda x: len(x["epochs"]))
    for r in results:
        merged["commands"] += [c for c in r["commands"] if c not in merged["commands"]]
    out.mkdir(parents=True, exist_ok=True)
    write_outputs(merged, out, every)
    return merged


def main(argv: list[str] | None = None) -> int:
    from s5vh_cli.errors import S5VHError

    args = parse_args(argv)
    try:
        result = combine(args.combine, args.out, args.table_every) if args.combine else run(args)
    except S5VHError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"# wrote {args.out / 'results.json'}, {args.out / 'results.md'}; plot: {result.get('plot')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
