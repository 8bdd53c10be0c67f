"""Hold out part of a benchmark's training split as a labelled validation set, for choosing settings without
looking at the query and database splits (choosing them there is test-set selection).

From a built dataset folder and its training features, writes a new dataset folder and features folder that
``benchmarks.run_benchmarks`` takes as they are:

    python -m benchmarks.validation_split --data .bench-data/built/fmnist_temporal \\
        --features .bench-data/runs/fmnist_full/features --fraction 0.2 --seed 0 \\
        --out-data .bench-data/built/fmnist_temporal_val --out-features .bench-data/runs/fmnist_val/features
    python -m benchmarks.run_benchmarks --data .bench-data/built/fmnist_temporal_val \\
        --features .bench-data/runs/fmnist_val/features --workdir .bench-data/runs/fmnist_val ...

In the new folders ``train`` and ``database`` are the kept training videos (the fit set) and ``query`` the held
out ones; label files follow, for every level of the original. Nothing of the original query or database split
is read. The fit/validation choice is a seeded random permutation of the training rows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import h5py
import numpy as np

from s5vh_cli.artifacts import atomic_output, provenance, read_features, write_features


def _levels(data: Path) -> list[str]:
    return sorted(p.name[len("train_") : -len(".h5")] for p in (data / "labels").glob("train_*.h5"))


def _write_labels(src: Path, dst: Path, rows: np.ndarray, split: str) -> None:
    with h5py.File(src, "r") as f:
        ids, labels, paths = f["ids"][()], f["labels"][()], f["paths"][()]
        attrs = dict(f.attrs)
    attrs["split"] = split
    attrs["order_rule"] = f"rows of the training split's label file, in the order of {split}.h5 (validation_split)"
    with atomic_output(dst) as tmp, h5py.File(tmp, "w") as g:
        g.attrs.update(attrs)
        g.create_dataset("ids", data=ids[rows])
        g.create_dataset("labels", data=labels[rows])
        g.create_dataset("paths", data=paths[rows])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.validation_split", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="built dataset folder with labels/train_<level>.h5")
    ap.add_argument("--features", required=True, help="folder holding train.h5 (features of the training split)")
    ap.add_argument("--fraction", type=float, default=0.2, help="share of training videos held out (default 0.2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-data", required=True)
    ap.add_argument("--out-features", required=True)
    a = ap.parse_args(argv)
    data, out_data, out_feats = Path(a.data), Path(a.out_data), Path(a.out_features)
    levels = _levels(data)
    if not levels:
        print(f"error: {data}/labels holds no train_<level>.h5 label file", file=sys.stderr)
        return 2
    if not 0.0 < a.fraction < 1.0:
        print(f"error: --fraction must lie in (0, 1), got {a.fraction}", file=sys.stderr)
        return 2
    feats = read_features(Path(a.features) / "train.h5")
    with h5py.File(data / "labels" / f"train_{levels[0]}.h5", "r") as f:
        label_ids = [Path(x.decode() if isinstance(x, bytes) else str(x)).name for x in f["ids"][()]]
    if [Path(i).name for i in feats.ids] != label_ids:
        print("error: train.h5 rows are not the training label file's rows in the same order", file=sys.stderr)
        return 2
    n = feats.n
    n_val = max(1, round(a.fraction * n))
    perm = np.random.default_rng(a.seed).permutation(n)
    rows = {"query": np.sort(perm[:n_val]), "train": np.sort(perm[n_val:])}
    rows["database"] = rows["train"]
    prov = provenance("benchmarks.validation_split", {"source": str(Path(a.features) / "train.h5"),
                                                      "fraction": a.fraction, "seed": a.seed})
    out_feats.mkdir(parents=True, exist_ok=True)
    (out_data / "labels").mkdir(parents=True, exist_ok=True)
    for split, r in rows.items():
        write_features(out_feats / f"{split}.h5", feats.feats[r], [feats.ids[i] for i in r],
                       [feats.paths[i] for i in r], backbone=feats.backbone, backbone_sha256=feats.backbone_sha256,
                       sampling=feats.sampling, prov=prov)
        (out_data / split).mkdir(exist_ok=True)
        for level in levels:
            _write_labels(data / "labels" / f"train_{level}.h5", out_data / "labels" / f"{split}_{level}.h5", r, split)
    info = {"dataset": "validation split", "source": str(data), "fraction": a.fraction, "seed": a.seed,
            "videos": {s: int(len(r)) for s, r in rows.items()},
            "note": "train = database = the kept training videos; query = the held-out ones"}
    (out_data / "dataset.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
