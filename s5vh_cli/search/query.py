"""Query an index with clips, features or codes and return ranked (distance, key, id, path) results.

Video clips go through the same chain as the indexed videos: the backbone, frame count and sampling recorded
with the index (``extract_clips``), the model whose sha256 the index records (``encode_array``), then the
index search. Features files are encoded with that model; codes files are searched directly. Every input's
model must be the index's model, else the Hamming distances mean nothing and a MismatchError says so.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import artifacts
from ..codes import to_hex
from ..errors import InputError, MismatchError
from ..progress import NULL, Progress
from .index import HammingIndex, IndexParams, open_index, range_search, search


@dataclass
class QueryInput:
    name: str  # what the user gave (clip path, or "file.h5:id")
    id: str
    path: str
    code: np.ndarray | None = None
    descriptor: np.ndarray | None = None  # for --rerank: the same kind of descriptor the index stores
    flip_code: np.ndarray | None = None  # --flip: the code (and descriptor) of the clip's mirror image
    flip_descriptor: np.ndarray | None = None
    # an index of time windows: the query's own windows (codes, start, end, descriptors, flip_*)
    windows: dict[str, Any] | None = None


@dataclass
class QueryOutcome:
    index: HammingIndex
    queries: list[QueryInput]
    results: list[tuple[np.ndarray, np.ndarray]]  # per query (distances, keys), best first
    timings: dict[str, float] = field(default_factory=dict)
    topk: int | None = None
    radius: int | None = None
    scores: list[np.ndarray] | None = None  # per query, with --rerank: the descriptor similarity of each result
    matches: list[list[Any]] | None = None  # per query, on an index of windows: voting.SegmentMatch, best first
    rerank: int = 0
    flip: bool = False

    @property
    def found(self) -> int:
        if self.matches is not None:
            return int(sum(len(m) for m in self.matches))
        return int(sum(len(d) for d, _ in self.results))

    def to_records(self) -> list[dict[str, Any]]:
        """One JSON-ready object per query (the schema in docs/search.md)."""
        if self.matches is not None:
            return self._window_records()
        row = self.index.row_of()
        out = []
        for qi, (q, (d, keys)) in enumerate(zip(self.queries, self.results, strict=True)):
            hits = []
            for r, (dist, key) in enumerate(zip(d.tolist(), keys.tolist(), strict=True), start=1):
                i = row[key]
                hit = {"rank": r, "distance": int(dist), "key": int(key), "id": self.index.ids[i],
                       "path": artifacts.display_path(self.index.paths[i])}
                if self.scores is not None:
                    hit["score"] = round(float(self.scores[qi][r - 1]), 6)
                hits.append(hit)
            out.append({"query": artifacts.display_path(q.name), "query_id": q.id,
                        "query_path": artifacts.display_path(q.path),
                        "code": to_hex(q.code) if q.code is not None else None,
                        "status": "found" if hits else "none", "results": hits})
        return out

    def _window_records(self) -> list[dict[str, Any]]:
        seg = self.index.segments or {"video_id": []}
        path_of: dict[str, str] = {}
        for v, p in zip(seg["video_id"], self.index.paths, strict=True):
            path_of.setdefault(v, p)
        out = []
        for q, matches in zip(self.queries, self.matches or [], strict=True):
            hits = [{"rank": r, "id": m.video, "path": artifacts.display_path(path_of.get(m.video, "")),
                     **{k: v for k, v in m.as_dict().items() if k != "video"}} for r, m in enumerate(matches, 1)]
            out.append({"query": artifacts.display_path(q.name), "query_id": q.id,
                        "query_path": artifacts.display_path(q.path),
                        "windows": int(len(q.windows["codes"])) if q.windows else 0,
                        "status": "found" if hits else "none", "results": hits})
        return out

    @property
    def queries_without_results(self) -> int:
        if self.matches is not None:
            return sum(1 for m in self.matches if not m)
        return sum(1 for d, _ in self.results if len(d) == 0)

    def to_json(self) -> dict[str, Any]:
        return {"index": artifacts.display_path(str(self.index.path)), "type": self.index.index_type,
                "exact": self.index.exact, "bits": self.index.bits, "count": self.index.n, "topk": self.topk,
                "radius": self.radius, "rerank": self.rerank or None, "flip": self.flip,
                "windows": self.matches is not None, "queries_without_results": self.queries_without_results,
                "timings": {k: round(v, 6) for k, v in self.timings.items()}, "queries": self.to_records()}


def _h5_kind(path: str) -> str | None:
    """'codes' or 'features' for an HDF5 input, None for anything else (treated as a video)."""
    kind = artifacts.h5_kind(path)
    if kind is None or kind in ("codes", "features"):
        return kind
    raise InputError(f"{path}: a {kind or 'non-s5vh or damaged HDF5'} file; query takes videos, a folder, a features "
                     "file or a codes file")


class _ModelCache:
    """Loads the index's model at most once, and only if some input needs it."""

    def __init__(self, h: HammingIndex, model_path: str | None, device: str, ssm_backend: str,
                 progress: Progress) -> None:
        self.h, self.model_path, self.device, self.ssm_backend, self.progress = h, model_path, device, ssm_backend, progress
        self.model = None
        self.meta: dict[str, Any] = {}
        self.dev = None

    def get(self):
        if self.model is not None:
            return self.model, self.meta
        from ..checkpoint import load_model
        from ..device import describe_device, resolve_device

        path = self.model_path or str(self.h.provenance.get("model_path") or "")
        if not path:
            raise InputError(f"{self.h.path}: the index does not record a model file; pass --model PATH")
        if not Path(path).is_file():
            how = "given with --model" if self.model_path else "recorded in the index"
            raise InputError(f"{path}: model file {how} not found; pass --model PATH (the model that made the codes)")
        sha = artifacts.sha256_file(path)
        if self.h.model_sha256 and sha != self.h.model_sha256 and not self.model_path:
            # `s5vh train --force` keeps the model it replaced beside the new one, named by its sha256
            from ..checkpoint import kept_model_path

            kept = kept_model_path(path, self.h.model_sha256)
            if kept.is_file() and artifacts.sha256_file(kept) == self.h.model_sha256:
                path, sha = str(kept), self.h.model_sha256
        if self.h.model_sha256 and sha != self.h.model_sha256:
            raise MismatchError(f"{path}: model sha256 {sha[:12]} is not the model that made {self.h.path} "
                                f"({self.h.model_sha256[:12]})")
        self.dev = resolve_device(self.device)
        model, meta = load_model(path, device="cpu")
        method = getattr(model.cfg, "method", "s5vh")
        why = "transformer encoder: no selective scan" if method == "s5vh" else f"{method}: a linear projection"
        if method == "s5vh" and model.cfg.encoder == "mamba":
            from ..ssm import resolve_backend

            backend, why = resolve_backend(self.ssm_backend, self.dev)
            model.set_backend(backend)
        if model.cfg.bits != self.h.bits:
            raise MismatchError(f"{path}: model makes {model.cfg.bits}-bit codes but {self.h.path} holds "
                                f"{self.h.bits}-bit codes")
        self.progress.log(f"model {path}; device: {describe_device(self.dev)}; selective scan: {why}")
        self.model, self.meta = model.to(self.dev), meta
        return self.model, self.meta


def _encode(cache: _ModelCache, feats: np.ndarray, batch_size: int, progress: Progress) -> np.ndarray:
    from ..encode import encode_array

    model, _ = cache.get()
    return encode_array(model, feats, batch_size=max(1, batch_size), device=cache.dev, progress=progress)


def _descriptor_frames(h: HammingIndex) -> int:
    v = h.provenance.get("descriptor_frames")
    return int(v) if v not in (None, "") else 0


def _encode_like_index(cache: _ModelCache, h: HammingIndex, feats: np.ndarray, batch_size: int,
                       progress: Progress) -> tuple[np.ndarray, np.ndarray | None]:
    """Codes and, when the index stores them, descriptors of the same kind and frame positions."""
    from ..encode import encode_with_descriptors

    if h.descriptor == "none":  # codes only: the model's own hash, as `s5vh encode` without --descriptor
        return _encode(cache, feats, batch_size, progress), None
    model, _ = cache.get()
    return encode_with_descriptors(model, feats, h.descriptor, _descriptor_frames(h), batch_size=max(1, batch_size),
                                   device=cache.dev, progress=progress)


def _encode_windows_like_index(cache: _ModelCache, h: HammingIndex, feats: np.ndarray, times: np.ndarray,
                               valid: np.ndarray, hop: float | None, batch_size: int,
                               progress: Progress) -> list[dict[str, Any]]:
    """Each video's windows, cut like the index's (same length; ``hop`` or the index's step), with codes and
    descriptors: one dict per video."""
    from ..encode import encode_segments

    model, _ = cache.get()
    window = float(h.provenance.get("segment_seconds") or 0)
    step = float(hop or h.provenance.get("hop_seconds") or window / 4)
    seg = encode_segments(model, feats, times, valid, window, step, h.descriptor, _descriptor_frames(h),
                          batch_size=max(1, batch_size), device=cache.dev, progress=progress)
    out = []
    for v in range(feats.shape[0]):
        rows = np.nonzero(seg["video"] == v)[0]
        out.append({"codes": seg["codes"][rows], "start": seg["start"][rows], "end": seg["end"][rows],
                    "descriptors": None if seg["descriptors"] is None else seg["descriptors"][rows]})
    return out


def _clip_precision(precision: str, meta: dict[str, Any]) -> str:
    """The backbone precision for clips: the one asked for, or with "auto", bfloat16 when the model's training
    features were made in bfloat16 (clips are embedded as those were)."""
    if precision == "auto" and (meta.get("features") or {}).get("precision") == "bfloat16":
        return "bfloat16"
    return precision


def _clip_settings(h: HammingIndex, meta: dict[str, Any]) -> tuple[str, int, str, str]:
    feat = meta.get("features") or {}

    def pick(key: str) -> Any:
        v = h.provenance.get(key)
        return v if v not in (None, "", "unknown") else feat.get(key)

    backbone, frames, sampling = pick("backbone"), pick("frames"), pick("sampling")
    if not backbone or backbone == "unknown" or not frames or not sampling or sampling == "unknown":
        raise InputError(f"{h.path}: neither the index nor its model records the backbone/frames/sampling of "
                         "the indexed features, so clips cannot be prepared the same way; query with a "
                         "features or codes file instead")
    return str(backbone), int(frames), str(sampling), str(pick("backbone_sha256") or "")


class Searcher:
    """An opened index with what clip and feature queries need (model, backbone), loaded at most once.

    ``query()`` below makes one per call; a long-lived caller (the server) keeps one and calls ``query``
    many times, so the model and backbone load once.
    """

    def __init__(self, index: HammingIndex | str | os.PathLike, *, model_path: str | None = None,
                 device: str = "auto", ssm_backend: str = "auto", batch_size: int = 32, weights: str | None = None,
                 params: IndexParams | None = None, runtime: str = "auto", precision: str = "auto",
                 progress: Progress | None = None) -> None:
        t0 = time.perf_counter()
        self.index = index if isinstance(index, HammingIndex) else open_index(index, params=params)
        self.open_s = time.perf_counter() - t0
        self.device, self.batch_size, self.weights = device, batch_size, weights
        self.params = params
        self.runtime, self.precision = runtime, precision  # of the backbone for clip queries (runtimes/)
        self.progress = progress or NULL
        self._models = _ModelCache(self.index, model_path, device, ssm_backend, self.progress)

    @property
    def windows(self) -> bool:
        """True for an index of time windows (``encode --segment``): queries are answered by voting."""
        return self.index.segments is not None

    def prepare(self, inputs: list[str], flip: bool = False,
                hop: float | None = None) -> tuple[list[QueryInput], dict[str, float]]:
        """Turn clips / folders / features files / codes files into packed query codes (in input order); with
        ``flip``, also the codes of the clips' mirror images; on an index of windows, the query's windows."""
        return _prepare(self, inputs, flip=flip, hop=hop)

    def search(self, queries: list[QueryInput], topk: int = 20, radius: int | None = None,
               exclude_self: bool = False, rerank: int = 0,
               flip: bool = False) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[np.ndarray] | None, float]:
        """Hamming search (merged with the mirror images' with ``flip``), then with ``rerank`` K the top K
        re-scored by descriptor (``stages.rerank``) and cut to ``topk``. Returns (results, scores, seconds)."""
        from .stages import check_descriptor, merge_min
        from .stages import rerank as rerank_candidates

        h = self.index
        if radius is not None and not 0 <= radius <= h.bits:
            raise InputError(f"--radius must be between 0 and {h.bits} (the code length), got {radius}")
        if not queries:
            return [], None, 0.0
        if rerank:
            for x in queries:
                check_descriptor(h, x.descriptor, x.name)
        q = np.stack([x.code for x in queries])
        excl = _self_keys(h, queries) if exclude_self else None
        depth = max(rerank, topk or 0)
        t0 = time.perf_counter()
        if radius is not None:
            res = range_search(h, q, radius, exclude=excl)
        else:
            res = search(h, q, depth, exclude=excl)
        if flip:
            fl = [i for i, x in enumerate(queries) if x.flip_code is not None]
            if fl:
                fq = np.stack([queries[i].flip_code for i in fl])
                fexcl = [excl[i] for i in fl] if excl is not None else None
                fres = range_search(h, fq, radius, exclude=fexcl) if radius is not None else \
                    search(h, fq, depth, exclude=fexcl)
                for j, i in enumerate(fl):
                    res[i] = merge_min(res[i], fres[j], depth if radius is None else h.n)
        scores = None
        if rerank:
            ranked = [rerank_candidates(h, (d[:rerank], k[:rerank]), x.descriptor,
                                        x.flip_descriptor if flip else None, topk or rerank)
                      for x, (d, k) in zip(queries, res, strict=True)]
            res = [(r.distances, r.keys) for r in ranked]
            scores = [r.scores for r in ranked]
        elif topk:
            res = [(d[:topk], k[:topk]) for d, k in res]
        return res, scores, time.perf_counter() - t0

    def vote(self, queries: list[QueryInput], topk: int = 20, hits_per_window: int = 20,
             rerank: bool = False) -> tuple[list[list[Any]], float]:
        """On an index of windows: each query's windows searched and voted into videos with time ranges."""
        from .stages import check_descriptor, vote_windows

        t0 = time.perf_counter()
        out = []
        for x in queries:
            if x.windows is None or not len(x.windows["codes"]):
                raise InputError(f"{x.name}: no time windows to search (an index of windows needs clips or "
                                 "features sampled at a fixed rate, or codes from `s5vh encode --segment`)")
            if rerank:
                for d in x.windows["descriptors"] if x.windows["descriptors"] is not None else [None]:
                    check_descriptor(self.index, d, x.name)
            out.append(vote_windows(self.index, x.windows, hits_per_window, topk or 20, rerank))
        return out, time.perf_counter() - t0

    def query(self, inputs: list[str], topk: int = 20, radius: int | None = None,
              exclude_self: bool = False, rerank: int = 0, flip: bool = False, hop: float | None = None,
              hits_per_window: int = 20) -> QueryOutcome:
        """Search with every input; top-``topk`` or everything within ``radius`` (then at most ``topk``).

        ``rerank`` K: re-score the top K by the descriptors the index stores. ``flip``: also search each clip's
        mirror image and keep every result's better distance (and score). On an index of time windows the answer
        is per video, by voting over the query's windows (cut every ``hop`` seconds, by default the index's step;
        ``hits_per_window`` candidates each; ``rerank`` > 0 weighs the hits by descriptor similarity).
        """
        if radius is not None and not 0 <= radius <= self.index.bits:  # before any clip is decoded
            raise InputError(f"--radius must be between 0 and {self.index.bits} (the code length), got {radius}")
        if rerank < 0:
            raise InputError(f"--rerank must be 0 (off) or a number of candidates, got {rerank}")
        if rerank and self.index.descriptors is None:
            from .stages import check_descriptor

            check_descriptor(self.index, None, "")
        if self.windows and radius is not None:
            raise InputError(f"{self.index.path}: an index of time windows answers by voting; --radius does not "
                             "apply (use --topk)")
        queries, timings = self.prepare(inputs, flip=flip, hop=hop)
        if self.windows:
            matches, t_search = self.vote(queries, topk, hits_per_window, rerank > 0)
            timings = {"open_s": self.open_s, **timings, "search_s": t_search}
            return QueryOutcome(index=self.index, queries=queries, results=[], timings=timings, topk=topk or 20,
                                matches=matches, rerank=rerank, flip=flip)
        res, scores, t_search = self.search(queries, topk, radius, exclude_self, rerank, flip)
        timings = {"open_s": self.open_s, **timings, "search_s": t_search}
        return QueryOutcome(index=self.index, queries=queries, results=res, timings=timings,
                            topk=topk if topk else None, radius=radius, scores=scores, rerank=rerank, flip=flip)

    def query_codes(self, codes: np.ndarray, names: list[str] | None = None, topk: int = 20,
                    radius: int | None = None, exclude_self: bool = False) -> QueryOutcome:
        """Search with packed codes given in memory (uint8 [n, bits/8]); ``names`` are their ids."""
        codes = np.ascontiguousarray(codes, dtype=np.uint8)
        if codes.ndim != 2 or codes.shape[1] * 8 != self.index.bits:
            raise MismatchError(f"codes of {codes.shape[-1] * 8 if codes.ndim == 2 else '?'} bits given, but "
                                f"{self.index.path} holds {self.index.bits}-bit codes")
        return self._outcome(codes, names, {}, topk, radius, exclude_self)

    def query_features(self, feats: np.ndarray, names: list[str] | None = None, topk: int = 20,
                       radius: int | None = None, exclude_self: bool = False) -> QueryOutcome:
        """Search with features given in memory (float [n, frames, dim]), encoded with the index's model."""
        if radius is not None and not 0 <= radius <= self.index.bits:
            raise InputError(f"--radius must be between 0 and {self.index.bits} (the code length), got {radius}")
        feats = np.asarray(feats, dtype=np.float32)
        if feats.ndim != 3 or feats.shape[0] == 0:
            raise InputError(f"features must be [videos, frames, dim], got shape {list(feats.shape)}")
        t0 = time.perf_counter()
        self._models.get()
        timings = {"model_load_s": time.perf_counter() - t0}
        t0 = time.perf_counter()
        codes = _encode(self._models, feats, self.batch_size, self.progress)
        timings["encode_s"] = time.perf_counter() - t0
        return self._outcome(codes, names, timings, topk, radius, exclude_self)

    def _outcome(self, codes: np.ndarray, names: list[str] | None, timings: dict[str, float], topk: int,
                 radius: int | None, exclude_self: bool) -> QueryOutcome:
        names = list(names) if names else [f"query[{i}]" for i in range(codes.shape[0])]
        if len(names) != codes.shape[0]:
            raise InputError(f"{len(names)} names given for {codes.shape[0]} queries")
        queries = [QueryInput(name=n, id=n, path="", code=c) for n, c in zip(names, codes, strict=True)]
        res, _, t_search = self.search(queries, topk, radius, exclude_self)  # no descriptors here: no re-ranking
        return QueryOutcome(index=self.index, queries=queries, results=res, timings={**timings, "search_s": t_search},
                            topk=topk if topk else None, radius=radius)

    def reopen(self) -> None:
        """Read the index again from its files (after a write). The loaded model is kept when the index still
        records the same model (sha256), so only a model change costs a reload."""
        t0 = time.perf_counter()
        h = open_index(self.index.path, params=self.params)
        old = self._models
        models = _ModelCache(h, old.model_path, old.device, old.ssm_backend, self.progress)
        if old.model is not None and h.model_sha256 == self.index.model_sha256:
            models.model, models.meta, models.dev = old.model, old.meta, old.dev
        self.index, self._models, self.open_s = h, models, time.perf_counter() - t0

    def load_model(self) -> None:
        """Load the model now rather than at the first clip or features query (raises what that would)."""
        self._models.get()


def _prepare(s: Searcher, inputs: list[str], flip: bool = False,
             hop: float | None = None) -> tuple[list[QueryInput], dict[str, float]]:
    h, cache, progress = s.index, s._models, s.progress
    device, batch_size, weights, runtime, precision = s.device, s.batch_size, s.weights, s.runtime, s.precision
    timings = {"extract_s": 0.0, "encode_s": 0.0, "model_load_s": 0.0}
    queries: list[QueryInput] = []
    videos: list[tuple[str, str]] = []
    windows = h.segments is not None
    noted: list[str] = []

    def encode(feats: np.ndarray, times: np.ndarray | None, valid: np.ndarray | None, name: str) -> list[dict]:
        """Per video: code + descriptor (whole-video index) or its windows (index of windows)."""
        t0 = time.perf_counter()
        try:
            if windows:
                if times is None or valid is None:
                    raise InputError(f"{name}: an index of time windows needs frame times (features from `s5vh "
                                     "extract --fps RATE`)")
                out = [{"windows": w} for w in _encode_windows_like_index(cache, h, feats, times, valid, hop,
                                                                         batch_size, progress)]
            else:
                codes, desc = _encode_like_index(cache, h, feats, batch_size, progress)
                out = [{"code": codes[i], "descriptor": None if desc is None else desc[i]} for i in range(len(codes))]
        except MismatchError as e:
            raise MismatchError(f"{name}: {e}") from None
        timings["encode_s"] += time.perf_counter() - t0
        return out

    def flush_videos() -> None:
        if not videos:
            return
        from ..extract import extract_clips

        loader = _Loader.start_for(cache, h)
        if loader is None:
            t0 = time.perf_counter()
            cache.get()
            timings["model_load_s"] += time.perf_counter() - t0
        backbone, frames, sampling, bb_sha = _clip_settings(h, cache.meta)
        prec = _clip_precision(precision, cache.meta)  # while the model loads its meta is not known yet
        t0 = time.perf_counter()
        paths = [p for _, p in videos]

        def run_extract(prec: str, mirror: bool = False):  # noqa: ANN202
            return extract_clips(paths, backbone=backbone, frames=frames, sampling=sampling, weights=weights,
                                 device=device, batch_size=batch_size, runtime=runtime, precision=prec,
                                 progress=progress, mirror=mirror)

        try:
            feats, infos = run_extract(prec)
        finally:
            if loader is not None:  # its error (a missing or wrong model) is the one to report first
                timings["model_load_s"] += loader.finish()
        if _clip_precision(precision, cache.meta) != prec:
            # the model, loaded beside the clips, says its features were made in another precision: clips
            # must be embedded as those were (rare: bfloat16 features; the cold query pays extraction twice)
            prec = _clip_precision(precision, cache.meta)
            feats, infos = run_extract(prec)
        flipped = run_extract(prec, mirror=True)[0] if flip else None  # --flip: the clips' mirror images
        timings["extract_s"] += time.perf_counter() - t0
        got = {i.get("backbone_sha256") for i in infos} - {None, ""}
        if bb_sha and got and got != {bb_sha}:
            raise MismatchError(f"backbone {backbone} weights (sha256 {sorted(got)[0][:12]}) differ from those of "
                                f"the indexed features ({bb_sha[:12]}); pass the same --weights")
        times = valid = None
        if windows:  # only windows need the frame times
            times = np.array([i["frame_times"] for i in infos], dtype=np.float64)
            valid = np.array([i["valid_frames"] for i in infos], dtype=np.int64)
        enc = encode(feats, times, valid, "clips")
        fenc = encode(flipped, times, valid, "mirrored clips") if flipped is not None else None
        for j, ((vid, p), e) in enumerate(zip(videos, enc, strict=True)):
            q = QueryInput(name=p, id=vid, path=p, code=e.get("code"), descriptor=e.get("descriptor"),
                           windows=e.get("windows"))
            if fenc is not None:
                q.flip_code, q.flip_descriptor = fenc[j].get("code"), fenc[j].get("descriptor")
                if q.windows is not None:
                    q.windows["flip_codes"] = fenc[j]["windows"]["codes"]
                    q.windows["flip_descriptors"] = fenc[j]["windows"]["descriptors"]
            queries.append(q)
        videos.clear()

    for raw in inputs:
        kind = _h5_kind(raw)
        if kind is None:
            from ..extract import collect_inputs

            found, _ = collect_inputs([raw])
            if not found and os.path.isdir(raw):
                raise InputError(f"{raw}: the folder holds no video files")
            videos.extend(found)
            continue
        flush_videos()
        if flip and not noted:
            noted.append(raw)
            progress.log("--flip mirrors video inputs only; features and codes files are searched as they are")
        if kind == "codes":
            c = artifacts.read_codes(raw)
            if c.bits != h.bits:
                raise MismatchError(f"{raw}: codes have {c.bits} bits but {h.path} holds {h.bits}-bit codes")
            if c.model_sha256 != h.model_sha256:
                raise MismatchError(f"{raw}: codes come from model {c.model_sha256[:12] or '(none)'} but {h.path} "
                                    f"holds codes of model {h.model_sha256[:12] or '(none)'}")
            if windows:
                queries.extend(_window_queries_from_codes(c, raw))
                continue
            for i, (vid, p) in enumerate(zip(c.ids, c.paths, strict=True)):
                queries.append(QueryInput(name=p or f"{raw}:{vid}", id=vid, path=p, code=c.codes[i],
                                          descriptor=None if c.descriptors is None else c.descriptors[i]))
        else:
            f = artifacts.read_features(raw)
            enc = encode(f.feats, f.meta.get("frame_times"), f.meta.get("valid_frames"), raw)
            for i, (vid, p) in enumerate(zip(f.ids, f.paths, strict=True)):
                queries.append(QueryInput(name=p or f"{raw}:{vid}", id=vid, path=p, code=enc[i].get("code"),
                                          descriptor=enc[i].get("descriptor"), windows=enc[i].get("windows")))
    flush_videos()
    if not queries:
        raise InputError("no query inputs: give video files, a folder of videos, a features file or a codes file")
    return queries, timings


def _window_queries_from_codes(c: artifacts.Codes, raw: str) -> list[QueryInput]:
    """A codes file of windows (``encode --segment``) as queries: one per video, with its windows."""
    if c.segments is None:
        raise InputError(f"{raw}: codes of whole videos cannot query an index of time windows; encode the query "
                         "with the same --segment")
    out: dict[str, QueryInput] = {}
    rows: dict[str, list[int]] = {}
    for r, v in enumerate(c.segments["video_id"]):
        rows.setdefault(v, []).append(r)
        if v not in out:
            out[v] = QueryInput(name=c.paths[r] or f"{raw}:{v}", id=v, path=c.paths[r])
    for v, q in out.items():
        idx = np.asarray(rows[v], dtype=np.int64)
        q.windows = {"codes": c.codes[idx], "start": np.asarray(c.segments["start"])[idx],
                     "end": np.asarray(c.segments["end"])[idx],
                     "descriptors": None if c.descriptors is None else c.descriptors[idx]}
    return list(out.values())


class _Loader(threading.Thread):
    """Loads the model (checkpoint, selective-scan kernel) beside the clips' decoding and backbone pass.

    A cold query pays both; on two cores they overlap (OpenCV decodes without the GIL). Used only when the
    index itself records how its clips were prepared, so nothing needs the model before the frames.
    """

    def __init__(self, cache: _ModelCache) -> None:
        super().__init__(name="s5vh-model-load", daemon=True)
        self.cache, self.error, self.seconds = cache, None, 0.0

    @classmethod
    def start_for(cls, cache: _ModelCache, h: HammingIndex) -> _Loader | None:
        if cache.model is not None:
            return None
        try:
            _clip_settings(h, {})
        except InputError:
            return None  # the settings come from the model's metadata: load it first
        import torch  # noqa: F401 - imported once here, before two threads need it

        from .. import checkpoint, device  # noqa: F401
        loader = cls(cache)
        loader.start()
        return loader

    def run(self) -> None:
        t0 = time.perf_counter()
        try:
            self.cache.get()
        except BaseException as e:  # handed to the caller's thread by finish()
            self.error = e
        self.seconds = time.perf_counter() - t0

    def finish(self) -> float:
        self.join()
        if self.error is not None:
            raise self.error
        return self.seconds


def _self_keys(h: HammingIndex, queries: list[QueryInput]) -> list[set[int]]:
    """Keys of database entries that are the query itself: same path (normalised), or same id when no path."""
    by_path: dict[str, set[int]] = {}
    by_id: dict[str, set[int]] = {}
    for k, i, p in zip(h.keys.tolist(), h.ids, h.paths, strict=True):
        if p:
            by_path.setdefault(os.path.normpath(os.path.abspath(p)), set()).add(k)
        by_id.setdefault(i, set()).add(k)
    out = []
    for q in queries:
        if q.path:
            out.append(set(by_path.get(os.path.normpath(os.path.abspath(q.path)), set())))
        else:
            out.append(set(by_id.get(q.id, set())))
    return out


def query(index_path: str | os.PathLike, inputs: list[str], topk: int = 20, radius: int | None = None,
          exclude_self: bool = False, model_path: str | None = None, device: str = "auto",
          ssm_backend: str = "auto", batch_size: int = 32, weights: str | None = None,
          params: IndexParams | None = None, runtime: str = "auto", precision: str = "auto",
          progress: Progress | None = None, rerank: int = 0, flip: bool = False, hop: float | None = None,
          hits_per_window: int = 20) -> QueryOutcome:
    """Search ``index_path`` with every input; top-``topk`` or everything within ``radius`` (``Searcher.query``
    explains ``rerank``, ``flip``, ``hop`` and ``hits_per_window``)."""
    s = Searcher(index_path, model_path=model_path, device=device, ssm_backend=ssm_backend, batch_size=batch_size,
                 weights=weights, params=params, runtime=runtime, precision=precision, progress=progress)
    return s.query(inputs, topk=topk, radius=radius, exclude_self=exclude_self, rerank=rerank, flip=flip, hop=hop,
                   hits_per_window=hits_per_window)
