"""Bring an index up to date with a folder: extract and encode only what is new or changed, drop what is gone.

A file is unchanged when its size and modification time are those the index recorded; when either differs
its content sha256 decides (a file that was only touched keeps its entry, with its records refreshed). New
and changed files are extracted with the backbone, frame count and sampling the index records, and encoded
with the index's model (the one whose sha256 it records). Entries whose files under the folder no longer
exist are removed. Entries of files outside the folder are left alone, so one index can hold several folders.

Interrupted syncs resume: the features of the files to extract go to a work folder named by the plan (the
list of files and their sizes and times), which `extract` resumes; the index itself changes in one atomic
write under its lock at the end, so a killed sync leaves the index as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import artifacts
from ..errors import InputError
from ..progress import NULL, Progress
from .index import (
    HammingIndex,
    drop_keys,
    entry_identity,
    index_lock,
    merge_codes,
    open_index,
    write_index,
)


@dataclass
class SyncPlan:
    folder: str
    extract: list[tuple[str, str, str]] = field(default_factory=list)  # (id, path, "new"|"changed")
    # size or mtime moved but the content is the same: (entry identity, new file records); nothing is extracted
    touched: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    unchanged: int = 0
    gone: list[tuple[int, str]] = field(default_factory=list)  # (key, path) of entries whose file is gone

    def key(self) -> str:
        """Names the work folder: the same plan (after an interruption) finds the same partial extraction."""
        h = hashlib.sha256()
        for vid, p, _ in self.extract:
            try:
                st = os.stat(p)
                h.update(f"{vid}\0{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
            except OSError:
                h.update(f"{vid}\0{p}\0gone\n".encode("utf-8", "surrogateescape"))
        return h.hexdigest()[:16]


@dataclass
class SyncReport:
    index: str
    folder: str
    added: list[str] = field(default_factory=list)  # paths
    replaced: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    refreshed: int = 0
    unchanged: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): left out, retried next sync
    dry_run: bool = False
    count: int = 0  # entries in the index afterwards

    def as_dict(self) -> dict[str, Any]:
        d = artifacts.display_path
        return {"index": d(self.index), "folder": d(self.folder), "dry_run": self.dry_run, "count": self.count,
                "added": [d(p) for p in self.added], "replaced": [d(p) for p in self.replaced],
                "removed": [d(p) for p in self.removed], "refreshed": self.refreshed, "unchanged": self.unchanged,
                "failed": [{"path": d(p), "reason": r} for p, r in self.failed]}


def plan_sync(h: HammingIndex, folder: str | os.PathLike) -> SyncPlan:
    """Compare the folder's video files with the index's entries (hashing only files whose size/mtime moved)."""
    from ..extract import collect_inputs

    folder = str(folder)
    if not os.path.isdir(folder):
        raise InputError(f"{folder}: no such folder")
    root = os.path.realpath(folder)
    files, _ = collect_inputs([folder])
    rows = {entry_identity(p, i): r for r, (i, p) in enumerate(zip(h.ids, h.paths, strict=True)) if p}
    rec = h.records
    plan = SyncPlan(folder=root)
    seen: set[str] = set()
    for vid, path in files:
        ident = entry_identity(path, vid)
        seen.add(ident)
        r = rows.get(ident)
        if r is None:
            plan.extract.append((vid, path, "new"))
            continue
        try:
            st = os.stat(path)
        except OSError:
            plan.extract.append((vid, path, "changed"))  # unreadable now: extraction records why
            continue
        if st.st_size == rec["file_size"][r] and st.st_mtime_ns == rec["file_mtime_ns"][r]:
            plan.unchanged += 1
            continue
        known = rec["file_sha256"][r]
        if known and st.st_size == rec["file_size"][r]:
            sha = artifacts.sha256_file(path)
            if sha.encode() == known:  # extraction would give the same features: only the records move
                plan.touched.append((ident, {"file_size": int(st.st_size), "file_mtime_ns": int(st.st_mtime_ns),
                                         "file_sha256": sha}))
                continue
        plan.extract.append((vid, path, "changed"))
    prefix = root.rstrip(os.sep) + os.sep
    for r, (k, p) in enumerate(zip(h.keys.tolist(), h.paths, strict=True)):
        if p and os.path.normpath(os.path.abspath(p)).startswith(prefix) and entry_identity(p, h.ids[r]) not in seen:
            if not os.path.exists(p):
                plan.gone.append((int(k), p))
    return plan


def _work_dir(index_path: Path, work: str | os.PathLike | None) -> Path:
    return Path(work) if work else index_path.with_name(index_path.name + ".sync")


def sync(folder: str | os.PathLike, index_path: str | os.PathLike, *, model_path: str | None = None,
         work: str | os.PathLike | None = None, weights: str | None = None, device: str = "auto",
         ssm_backend: str = "auto", workers: int | None = None, batch_size: int = 32, dry_run: bool = False,
         progress: Progress | None = None) -> SyncReport:
    """Make ``index_path`` hold exactly the videos under ``folder`` (plus its entries from elsewhere)."""
    from ..config import ExtractConfig
    from ..extract import extract
    from .query import _clip_settings, _encode_like_index, _ModelCache

    progress = progress or NULL
    index_path = Path(index_path)
    h = open_index(index_path)
    if h.segments is not None:
        raise InputError(f"{index_path}: an index of time windows (encode --segment) is rebuilt, not synced: "
                         "extract, encode --segment and index again")
    plan = plan_sync(h, folder)
    report = SyncReport(index=str(index_path), folder=plan.folder, unchanged=plan.unchanged, dry_run=dry_run)
    todo = [(v, p) for v, p, _ in plan.extract]
    report.removed = [p for _, p in plan.gone]
    if dry_run:
        report.added = [p for _, p, why in plan.extract if why == "new"]
        report.replaced = [p for _, p, why in plan.extract if why == "changed"]
        report.refreshed = len(plan.touched)
        report.count = h.n + len(report.added) - len(report.removed)
        return report
    codes = None
    work_dir = _work_dir(index_path, work) / plan.key()
    if todo:
        cache = _ModelCache(h, model_path, device, ssm_backend, progress)
        _, meta = cache.get()
        backbone, frames, sampling, _ = _clip_settings(h, meta)
        work_dir.mkdir(parents=True, exist_ok=True)
        feats_path = work_dir / "feats.h5"
        progress.log(f"sync: extracting {len(todo)} new or changed video(s) into {work_dir}")
        res = extract([], feats_path, config=ExtractConfig(backbone=backbone, frames=frames, sampling=sampling),
                      weights=weights, device=device, workers=workers, progress=progress, items=todo,
                      allow_empty=True)
        report.failed = list(res.failed)
        if res.videos:
            f = artifacts.read_features(feats_path)
            # codes (and descriptors) exactly like the index's, so every row can be re-ranked alike
            c, desc = _encode_like_index(cache, h, f.feats, batch_size, progress)
            from ..encode import _records

            keys = ("backbone", "sampling", "frames", "descriptor_frames", "segment_seconds", "hop_seconds")
            codes = artifacts.Codes(path=feats_path, codes=c, ids=f.ids, paths=f.paths, bits=h.bits,
                                    model_sha256=h.model_sha256, meta=_records(f), descriptors=desc,
                                    attrs={k: h.provenance.get(k, "") for k in keys})
    with index_lock(index_path):
        h = open_index(index_path)  # another writer may have changed it while we extracted
        changed = False
        if codes is not None:
            rep = merge_codes(h, codes, "skip", progress)
            row_of = h.row_of()
            new_keys = set(rep.added.tolist()) - set(rep.replaced.values())
            report.added = [h.paths[row_of[k]] for k in sorted(new_keys)]
            report.replaced = [h.paths[row_of[k]] for k in sorted(rep.replaced.values())]
            report.refreshed += rep.refreshed
            changed |= rep.changed
        if plan.touched:
            report.refreshed += _refresh(h, plan)
            changed = True
        still_gone = [k for k, p in plan.gone if not os.path.exists(p) and k in set(h.keys.tolist())]
        if still_gone:
            drop_keys(h, np.asarray(still_gone, dtype=np.int64), progress)
            changed = True
        report.removed = [p for k, p in plan.gone if k in set(still_gone)]
        if changed:
            write_index(h, index_path, "sync")
        report.count = h.n
    with contextlib.suppress(OSError):
        shutil.rmtree(work_dir)
        work_dir.parent.rmdir()  # only when no other plan's work is there
    return report


def _refresh(h: HammingIndex, plan: SyncPlan) -> int:
    """Store the new size/mtime of files whose content is unchanged (rows are found again by identity: the
    index was reopened under the lock and may have changed since the plan was made)."""
    rows = {entry_identity(p, i): r for r, (i, p) in enumerate(zip(h.ids, h.paths, strict=True))}
    n = 0
    for ident, rec in plan.touched:
        r = rows.get(ident)
        if r is not None:
            for k, v in rec.items():
                h.records[k][r] = v
            n += 1
    return n



def default_library_index(folder: str | os.PathLike) -> Path:
    """Where `s5vh dedup FOLDER` keeps the folder's index between runs: the user's cache, named by the folder."""
    base = os.environ.get("S5VH_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "s5vh")
    key = hashlib.sha256(os.fsencode(os.path.realpath(folder))).hexdigest()[:16]
    return Path(base) / "libraries" / key / "index.bin"


def index_folder(folder: str | os.PathLike, index_path: str | os.PathLike, *, model_path: str | None,
                 weights: str | None = None, device: str = "auto", ssm_backend: str = "auto",
                 workers: int | None = None, batch_size: int = 32, progress: Progress | None = None) -> SyncReport:
    """Make ``index_path`` index the videos under ``folder``: sync it when it exists, else extract, encode
    with ``model_path`` and build it (the features and codes of a first build go to a work folder beside it)."""
    from ..config import ExtractConfig
    from ..encode import encode_file
    from ..extract import extract
    from .index import build_index

    progress = progress or NULL
    index_path = Path(index_path)
    if index_path.exists():
        return sync(folder, index_path, model_path=model_path, weights=weights, device=device,
                    ssm_backend=ssm_backend, workers=workers, batch_size=batch_size, progress=progress)
    if not os.path.isdir(folder):
        raise InputError(f"{folder}: no such folder")
    if not model_path:
        raise InputError(f"{index_path}: no index for {folder} yet; give --model (a model from `s5vh train`) to "
                         "build one, or give an index instead of the folder")
    from ..checkpoint import load_model

    _, meta = load_model(model_path)
    feat = meta.get("features") or {}
    cfg = ExtractConfig(backbone=str(feat.get("backbone") or "mobilenet_v2"),
                        frames=int(feat.get("frames") or meta["model_config"]["frames"]),
                        sampling=str(feat.get("sampling") or "uniform"))
    work = index_path.with_name(index_path.name + ".build")
    work.mkdir(parents=True, exist_ok=True)
    res = extract([str(folder)], work / "feats.h5", config=cfg, weights=weights, device=device, workers=workers,
                  progress=progress)
    encode_file(model_path, work / "feats.h5", work / "codes.h5", device=device, ssm_backend=ssm_backend,
                progress=progress)
    h = build_index(artifacts.read_codes(work / "codes.h5"), index_path, progress=progress)
    with contextlib.suppress(OSError):
        shutil.rmtree(work)
    return SyncReport(index=str(index_path), folder=os.path.realpath(folder), added=list(h.paths),
                      failed=list(res.failed), count=h.n)


__all__ = ["SyncPlan", "SyncReport", "default_library_index", "index_folder", "plan_sync", "sync"]
