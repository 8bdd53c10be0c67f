"""Copy detection, every option side by side in one run: which database segment is a transformed copy's source.

From features extracted once (``s5vh extract``; database, queries, and optionally the database with views from
``s5vh extract --views N`` and the queries' mirror images), this fits or trains each method at each bit length on
the database videos (no labels), encodes queries and database, and scores:

  codes      Hamming ranking of the binary codes (ties by database row), as `s5vh query` returns it
  +rerank    the top K of that ranking re-scored by the stored float16 descriptor (soft: cosine of the
             pre-sign codes; frames: the frame codes compared in time order, s5vh_cli.descriptors)
  +flip      each database video's best distance over the query and its mirror image (`s5vh query --flip`)

Methods: ``cosine`` (float cosine of mean frame features: the free reference), ``lsh``, ``itq`` (`s5vh train
--method`), ``lsh_w``, ``itq_w`` (the same on frames whitened by what the database's own renderings change:
`s5vh train --method itq --whiten 256`, needs the database features with views), ``s5vh`` (the method as published), ``s5vh_views`` (+ --transformed-views), ``s5vh_reverse``
(+ --reverse-negatives), ``s5vh_views_reverse`` (both); for the diagnosis, ``s5vh_noca`` and ``s5vh_views_noca``
(the centre-alignment weight set to 0).

The score is exact top-1: the share of queries whose first answer is their source segment (= `s5vh eval`'s
exact mAP@1), with its standard error over queries, per transform, and paired against float cosine. Train
and encode seconds are measured in this process. Results go to ``<out>/results.json`` (with every query's
outcome, for paired comparisons) and ``<out>/results.md``.

Usage: python -m benchmarks.bench_copy --data DIR --features DIR --out DIR [--bits 16,32,64] [--methods ...]
       [--rerank 20] [--epochs N] [--batch-size B] [--threads N] [--queries LIST] [--make-flip]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import time
from pathlib import Path

import h5py
import numpy as np

from s5vh_cli import config
from s5vh_cli.artifacts import read_features
from s5vh_cli.codes import hamming, topk_from_distances
from s5vh_cli.descriptors import normalise, sequence_similarity, soft_similarity

METHODS = ("cosine", "lsh", "itq", "lsh_w", "itq_w", "s5vh", "s5vh_views", "s5vh_reverse", "s5vh_views_reverse", "s5vh_noca",
           "s5vh_views_noca")
TRAIN_OPTIONS = {"s5vh": {}, "s5vh_views": {"transformed_views": True}, "s5vh_reverse": {"reverse_negatives": True},
                 "s5vh_views_reverse": {"transformed_views": True, "reverse_negatives": True},
                 # diagnosis: without the centre-alignment term
                 "s5vh_noca": {"a_cluster": 0.0}, "s5vh_views_noca": {"transformed_views": True, "a_cluster": 0.0}}


def sem(x: np.ndarray) -> float:
    x = np.asarray(x, np.float64)
    return float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")


def labels(data: Path, split: str, level: str, ids: list[str]) -> np.ndarray:
    """Class of each of ``ids`` (matched by file name: a features file may hold a sample of the split)."""
    with h5py.File(data / "labels" / f"{split}_{level}.h5", "r") as f:
        by_name = dict(zip((Path(i).name for i in f["ids"].asstr()[()]), f["labels"][()].argmax(1), strict=True))
    return np.array([by_name[Path(i).name] for i in ids])


def make_flip_features(data: Path, q, out: Path, runtime: str) -> None:
    """Features of the queries' mirror images (``extract_clips(mirror=True)``, as `s5vh query --flip`), with the
    query features' sampling, frames and backbone; written to ``out``."""
    from s5vh_cli import artifacts
    from s5vh_cli.extract import extract_clips
    from s5vh_cli.progress import Progress

    class Say(Progress):
        def advance(self, n: int = 1, **_: object) -> None:
            self.done = getattr(self, "done", 0) + n
            print(f"# mirrored {self.done}/{len(paths)} at {time.perf_counter() - t0:.0f} s", flush=True)

    paths = [str(data / "query" / Path(i).name) for i in q.ids]
    t0 = time.perf_counter()
    feats, _ = extract_clips(paths, backbone=q.backbone, frames=q.frames, sampling=q.sampling, runtime=runtime,
                             mirror=True, batch_size=25, progress=Say())
    print(f"# mirrored query features: {len(paths)} clips in {time.perf_counter() - t0:.1f} s", flush=True)
    artifacts.write_features(out, feats, q.ids, paths, backbone=q.backbone, backbone_sha256="", sampling=q.sampling,
                             prov=artifacts.provenance("bench_copy mirror"))


def transforms_of(data: Path, ids: list[str]) -> np.ndarray:
    man = data / "manifest.csv"
    if not man.is_file():
        return np.array(["?"] * len(ids))
    by_name = {Path(r["path"]).name: r.get("transform", "?") for r in csv.DictReader(man.open())}
    return np.array([by_name.get(Path(i).name, "?") for i in ids])


def top1_hamming(cq: np.ndarray, cd: np.ndarray, flip: np.ndarray | None = None) -> np.ndarray:
    d = hamming(cq, cd)
    if flip is not None:
        d = np.minimum(d, hamming(flip, cd))
    return topk_from_distances(d, 1)[1][:, 0]


def top1_rerank(cq: np.ndarray, cd: np.ndarray, dq: np.ndarray, dd: np.ndarray, k: int, kind: str,
                flip: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Top K by Hamming (ties by row), re-scored by the descriptor; the best score wins (ties: Hamming order).

    ``kind``: soft, or frames-<order> (an order of descriptors.sequence_similarity)."""
    d = hamming(cq, cd)
    if flip is not None:
        d = np.minimum(d, hamming(flip[0], cd))
    _, top = topk_from_distances(d, k)
    best = np.empty(len(cq), np.int64)
    for i in range(len(cq)):
        cand = top[i]
        score = _score(dq[i], dd[cand], kind)
        if flip is not None:
            score = np.maximum(score, _score(flip[1][i], dd[cand], kind))
        best[i] = cand[int(np.argmax(score))]  # argmax keeps the first of equal scores: the Hamming order
    return best


def _score(q: np.ndarray, cands: np.ndarray, kind: str) -> np.ndarray:
    if kind == "soft":
        return soft_similarity(q.astype(np.float32), cands.astype(np.float32))
    return sequence_similarity(q.astype(np.float32), cands.astype(np.float32), kind.split("-", 1)[1])


class Bench:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.data, self.feat_dir, self.out = Path(a.data), Path(a.features), Path(a.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.db = read_features(self.feat_dir / "database.h5")
        self.q = read_features(self.feat_dir / "query.h5")
        if a.queries:  # score exactly these queries (by file name), e.g. the sample every method was scored on
            want = {ln.strip() for ln in Path(a.queries).read_text().splitlines() if ln.strip()}
            keep = [i for i, v in enumerate(self.q.ids) if Path(v).name in want]
            self.q.feats = self.q.feats[keep]
            self.q.ids = [self.q.ids[i] for i in keep]
            self.q.paths = [self.q.paths[i] for i in keep]
        vpath = Path(a.views_features) if a.views_features else self.feat_dir / "database_views.h5"
        self.db_views = read_features(vpath) if vpath.is_file() else None
        fpath = Path(a.flip_features) if a.flip_features else self.feat_dir / "query_flip.h5"
        if a.make_flip and not fpath.is_file():
            make_flip_features(self.data, self.q, fpath, a.runtime)
        self.q_flip = read_features(fpath) if fpath.is_file() else None
        if self.q_flip is not None:  # rows in the queries' order
            row = {v: i for i, v in enumerate(self.q_flip.ids)}
            self.q_flip.feats = self.q_flip.feats[[row[v] for v in self.q.ids]]
        self.ql = labels(self.data, "query", "exact", self.q.ids)
        self.dl = labels(self.data, "database", "exact", self.db.ids)
        self.tf = transforms_of(self.data, self.q.ids)
        self.rows: list[dict] = []
        self.outcomes: dict[str, list[int]] = {}
        if a.val_views:
            self._validation_split(a.val_views)

    def _validation_split(self, k: int) -> None:
        """Validation without the query split: the last ``k`` extraction views of each database video are the
        queries (their source is known without labels), training sees only the other views."""
        import copy

        v = self.db_views
        if v is None or v.views is None or v.views.shape[1] <= k:
            raise SystemExit(f"--val-views {k} needs database features with more than {k} views")
        q = copy.copy(v)
        q.feats = v.views[:, -k:].reshape(-1, *v.feats.shape[1:])
        q.ids = [f"{i}#view{j}" for i in v.ids for j in range(k)]
        q.views = None
        self.q, self.q_flip = q, None
        self.ql = np.repeat(self.dl, k)
        self.tf = np.array(["view"] * len(self.ql))
        train = copy.copy(v)
        train.views = v.views[:, :-k]
        self.db_views = train

    def record(self, method: str, bits: int | None, variant: str, top1: np.ndarray, train_s: float | None,
               encode_s: float | None) -> None:
        ok = (self.dl[top1] == self.ql).astype(np.int8)
        key = f"{method}/{bits}/{variant}"
        self.outcomes[key] = ok.tolist()
        per = {t: round(float(ok[self.tf == t].mean()), 3) for t in sorted(set(self.tf.tolist()))}
        row = {"method": method, "bits": bits, "variant": variant, "top1": float(ok.mean()), "top1_sem": sem(ok),
               "per_transform": per, "train_s": train_s, "encode_s": encode_s}
        if "cosine/None/codes" in self.outcomes and key != "cosine/None/codes":
            diff = ok - np.asarray(self.outcomes["cosine/None/codes"])
            row["vs_cosine"], row["vs_cosine_sem"] = float(diff.mean()), sem(diff)
        self.rows.append(row)
        print(f"{method:20s} {bits!s:>4} {variant:24s} top1 {ok.mean():.3f} ± {sem(ok):.3f}  "
              f"train {train_s if train_s is not None else '-'} encode {encode_s if encode_s is not None else '-'}  "
              f"{per}", flush=True)
        self.save()

    def save(self) -> None:
        doc = {"config": vars(self.a), "n_query": self.q.n, "n_database": self.db.n, "rows": self.rows,
               "outcomes": self.outcomes, "transforms": self.tf.tolist()}
        (self.out / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
        (self.out / "results.md").write_text(markdown(self.rows) + "\n")

    def fit(self, method: str, bits: int):
        """Train/fit in process through the same core function `s5vh train` calls; returns (model, seconds)."""
        from s5vh_cli.checkpoint import load_model
        from s5vh_cli.train import train

        mcfg, tcfg, ccfg = config.preset(self.a.preset, "paper")
        linear = method.split("_")[0] if method.split("_")[0] in ("lsh", "itq") else None
        mcfg = dataclasses.replace(mcfg, bits=bits, method=linear or "s5vh",
                                   whiten_dim=self.a.whiten_dim if method.endswith("_w") else 0)
        over = {"seed": self.a.seed}
        if self.a.epochs:
            over["epochs"] = self.a.epochs
        if self.a.batch_size:
            over["batch_size"] = self.a.batch_size
        tcfg = dataclasses.replace(tcfg, **over, **TRAIN_OPTIONS.get(method, {}))
        needs_views = tcfg.transformed_views or mcfg.whiten_dim
        feats = self.db_views if needs_views else self.db
        if needs_views and feats is None:
            return None, None
        path = self.out / "models" / f"{method}{bits}.pt"
        path.parent.mkdir(exist_ok=True)
        if self.a.reuse_models and path.is_file():  # trained by an earlier run on the same database
            model, _ = load_model(path)
            return model, None
        t0 = time.perf_counter()
        train(feats, None, mcfg, tcfg, path, device="cpu", centers_cfg=dataclasses.replace(ccfg, seed=self.a.seed),
              force=True)
        seconds = time.perf_counter() - t0
        model, _ = load_model(path)
        return model, seconds

    def run(self) -> None:
        from s5vh_cli.encode import encode_with_descriptors

        a = self.a
        if "cosine" in a.methods:
            s = normalise(self.q.feats.mean(1)) @ normalise(self.db.feats.mean(1)).T
            self.record("cosine", None, "codes", s.argmax(1), None, None)
        for bits in a.bits:
            for method in a.methods:
                if method == "cosine":
                    continue
                model, train_s = self.fit(method, bits)
                if model is None:
                    print(f"# {method}: no database features with views; skipped", flush=True)
                    continue
                t0 = time.perf_counter()
                cq, fq = encode_with_descriptors(model, self.q.feats, "frames", a.descriptor_frames)
                cd, fd = encode_with_descriptors(model, self.db.feats, "frames", a.descriptor_frames)
                encode_s = time.perf_counter() - t0
                _, sq = encode_with_descriptors(model, self.q.feats, "soft")
                _, sd = encode_with_descriptors(model, self.db.feats, "soft")
                r = lambda x: None if x is None else round(x, 2)  # noqa: E731
                self.record(method, bits, "codes", top1_hamming(cq, cd), r(train_s), r(encode_s))
                for k in a.rerank:
                    self.record(method, bits, f"+rerank{k} soft", top1_rerank(cq, cd, sq, sd, k, "soft"), None, None)
                    for o in a.order:
                        self.record(method, bits, f"+rerank{k} frames-{o}",
                                    top1_rerank(cq, cd, fq, fd, k, f"frames-{o}"), None, None)
                if self.q_flip is not None:
                    cf, ff = encode_with_descriptors(model, self.q_flip.feats, "frames", a.descriptor_frames)
                    self.record(method, bits, "+flip", top1_hamming(cq, cd, cf), None, None)
                    for k in a.rerank:
                        self.record(method, bits, f"+flip +rerank{k} frames-{a.order[0]}",
                                    top1_rerank(cq, cd, fq, fd, k, f"frames-{a.order[0]}", flip=(cf, ff)), None,
                                    None)


def markdown(rows: list[dict]) -> str:
    out = ["| method | bits | variant | exact top-1 | vs float cosine (paired) | train s | encode s |",
           "|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        vs = f"{r['vs_cosine']:+.3f} ± {r['vs_cosine_sem']:.3f}" if "vs_cosine" in r else ""
        out.append(f"| {r['method']} | {r['bits'] or '-'} | {r['variant']} | {r['top1']:.3f} ± {r['top1_sem']:.3f} | "
                   f"{vs} | {'' if r['train_s'] is None else r['train_s']} | "
                   f"{'' if r['encode_s'] is None else r['encode_s']} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_copy", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="built copy-detection dataset (labels/, manifest.csv)")
    ap.add_argument("--features", required=True, help="folder with database.h5 and query.h5 (and optionally "
                    "database_views.h5, query_flip.h5)")
    ap.add_argument("--views-features", help="database features with views (default <features>/database_views.h5)")
    ap.add_argument("--flip-features", help="mirrored query features (default <features>/query_flip.h5)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--bits", default="16,32,64")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--rerank", default="20", help="comma-separated K for re-ranking (empty: none)")
    ap.add_argument("--descriptor-frames", type=int, default=8)
    ap.add_argument("--whiten-dim", type=int, default=256, help="dimensions of the lsh_w/itq_w whitening")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--val-views", type=int, default=0, help="validate instead of testing: the last N views of the "
                    "database features with views are the queries; the query split is not read")
    ap.add_argument("--reuse-models", action="store_true", help="load <out>/models/<method><bits>.pt when an "
                    "earlier run trained it (no train seconds then)")
    ap.add_argument("--queries", help="file of query file names to score (one a line); default: every query row")
    ap.add_argument("--make-flip", action="store_true", help="extract the queries' mirror images (from "
                    "<data>/query/) when the mirrored features file is missing")
    ap.add_argument("--runtime", default="torch", help="backbone runtime for --make-flip (that of the query features)")
    ap.add_argument("--order", default="aligned", help="comma-separated frame alignments for --rerank frames: "
                    "aligned, monotone, none (the first also serves +flip)")
    a = ap.parse_args(argv)
    a.bits = [int(b) for b in a.bits.split(",") if b]
    a.methods = [m for m in a.methods.split(",") if m]
    a.rerank = [int(k) for k in a.rerank.split(",") if k]
    bad = [m for m in a.methods if m not in METHODS]
    if bad:
        ap.error(f"unknown method(s) {bad}; choose from {', '.join(METHODS)}")
    a.order = [o for o in a.order.split(",") if o]
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    Bench(a).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
