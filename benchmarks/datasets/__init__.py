"""Benchmark datasets that anyone can rebuild from freely fetchable sources.

Each builder writes video files into ``<out>/<split>/`` plus, for every split, label files in
``<out>/labels/`` and one ``<out>/manifest.csv``. The shared layout and helpers live here.

Order rule: in every split the rows of a label file follow the video files sorted by their path
relative to the split folder (plain code-point order of the POSIX path, which is what ``sorted()``
gives). File names are unique across the whole dataset, so :func:`align_labels` can reorder a label
file to the ``ids`` of any feature or code file, whatever folder ``s5vh extract`` was pointed at.

Label file (HDF5, one per split and relevance level):
  ``labels``  uint8 [N, C] multi-hot; two videos are relevant to each other when their rows share a 1
  ``ids``     str [N]      path of each video relative to its split folder (the row order)
  ``paths``   str [N]      path relative to the dataset root
  attrs ``dataset``, ``split``, ``level``, ``class_names`` (JSON list), ``order_rule``
A ``.mat`` twin (``labels``, ``ids``) is written beside it for code that reads MATLAB files.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from s5vh_cli.errors import ArtifactError, InputError, MismatchError

ORDER_RULE = "rows follow the video files sorted by path relative to the split folder"
MANIFEST_NAME = "manifest.csv"


def split_ids(paths: Sequence[str]) -> list[str]:
    """Ids (path relative to the split folder) of dataset-root-relative paths like ``query/x.mp4``."""
    return [str(PurePosixPath(*PurePosixPath(p).parts[1:])) for p in paths]


def sort_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of one split in extraction order (see the module docstring)."""
    return sorted(rows, key=lambda r: split_ids([r["path"]])[0])


def write_manifest(out: str | os.PathLike, rows: list[dict[str, Any]], fields: Sequence[str]) -> Path:
    """Write ``manifest.csv`` (one row per video, split by split in extraction order)."""
    path = Path(out) / MANIFEST_NAME
    ordered = []
    for split in sorted({r["split"] for r in rows}):
        ordered += sort_rows([r for r in rows if r["split"] == split])
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        w.writeheader()
        w.writerows(ordered)
    os.replace(tmp, path)
    return path


def read_manifest(root: str | os.PathLike) -> list[dict[str, str]]:
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        raise InputError(f"{path}: no manifest here; build the dataset first")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_labels(out: str | os.PathLike, name: str, *, dataset: str, split: str, level: str,
                 paths: Sequence[str], labels: np.ndarray, class_names: Sequence[str],
                 extra: dict[str, np.ndarray] | None = None) -> Path:
    """Write ``<out>/labels/<name>.h5`` (+ ``.mat``) with rows in extraction order (``paths`` must be sorted)."""
    import h5py

    ids = split_ids(paths)
    if ids != sorted(ids):
        raise ValueError("write_labels: paths must be in extraction order")
    labels = np.asarray(labels, dtype=np.uint8)
    if labels.shape != (len(paths), len(class_names)):
        raise ValueError(f"write_labels: labels {labels.shape} vs {len(paths)} videos x {len(class_names)} classes")
    folder = Path(out) / "labels"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.h5"
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as h5:
        h5.attrs.update({"dataset": dataset, "split": split, "level": level,
                         "class_names": json.dumps(list(class_names)), "order_rule": ORDER_RULE})
        h5.create_dataset("labels", data=labels)
        h5.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
        h5.create_dataset("paths", data=np.array(list(paths), dtype=object), dtype=h5py.string_dtype("utf-8"))
        for k, v in (extra or {}).items():
            h5.create_dataset(k, data=np.asarray(v))
    os.replace(tmp, path)
    try:
        from scipy.io import savemat

        savemat(folder / f"{name}.mat", {"labels": labels, "ids": np.array(ids, dtype=object)})
    except ImportError:  # the .mat twin is a convenience only
        pass
    return path


def read_labels(path: str | os.PathLike) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    """Return ``(labels [N, C] uint8, ids, attrs)`` of a label file written by :func:`write_labels`."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such label file")
    try:
        with h5py.File(path, "r") as h5:
            if "labels" not in h5 or "ids" not in h5:
                raise ArtifactError(f"{path}: not a label file (needs 'labels' and 'ids')")
            labels = h5["labels"][()]
            ids = [s for s in h5["ids"].asstr()[()]]
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in h5.attrs.items()}
    except OSError as e:
        raise ArtifactError(f"{path}: damaged or not HDF5 ({e})") from None
    if labels.ndim != 2 or labels.shape[0] != len(ids):
        raise ArtifactError(f"{path}: 'labels' {labels.shape} does not match {len(ids)} ids")
    return labels, ids, attrs


def align_labels(labels_path: str | os.PathLike, ids: Sequence[str]) -> np.ndarray:
    """Rows of a label file reordered to ``ids`` (from a features or codes file).

    Ids are matched by file name, which is unique within a dataset, so they may be relative to the
    split folder, to the dataset root, or to any folder above it.
    """
    labels, own_ids, _ = read_labels(labels_path)
    by_name: dict[str, int] = {}
    for i, p in enumerate(own_ids):
        name = PurePosixPath(p).name
        if name in by_name:
            raise ArtifactError(f"{labels_path}: file name {name} occurs twice; cannot match by name")
        by_name[name] = i
    rows, missing = [], []
    for vid in ids:
        j = by_name.get(PurePosixPath(str(vid).replace(os.sep, "/")).name)
        if j is None:
            missing.append(vid)
        else:
            rows.append(j)
    if missing:
        raise MismatchError(f"{len(missing)} of {len(ids)} ids have no row in {labels_path} "
                            f"(first: {missing[0]}); were the features extracted from this dataset's split?")
    if len(set(rows)) != len(rows):
        raise MismatchError(f"ids repeat a video of {labels_path}")
    return labels[np.asarray(rows, dtype=np.int64)]


def write_aligned(labels_path: str | os.PathLike, features_path: str | os.PathLike,
                  out: str | os.PathLike) -> Path:
    """Write a copy of a label file whose rows follow the ids of a features (or codes) artifact."""
    import h5py

    from s5vh_cli.artifacts import STR

    with h5py.File(features_path, "r") as h5:
        if "ids" not in h5:
            raise ArtifactError(f"{features_path}: has no 'ids'; cannot align labels to it")
        ids = [s for s in h5["ids"].asstr()[()]]
    labels = align_labels(labels_path, ids)
    _, _, attrs = read_labels(labels_path)
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    with h5py.File(tmp, "w") as h5:
        h5.attrs.update(attrs)
        h5.attrs["order_rule"] = f"rows follow the ids of {Path(features_path).name}"
        h5.create_dataset("labels", data=labels)
        h5.create_dataset("ids", data=np.array(ids, dtype=object), dtype=STR)
    os.replace(tmp, out)
    return out


def list_videos(folder: str | os.PathLike, exts: tuple[str, ...] = (".mp4", ".avi")) -> list[str]:
    """Video files under ``folder``, as sorted POSIX paths relative to it (the extraction order)."""
    folder = Path(folder)
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.suffix.lower() in exts)


def check_dataset(root: str | os.PathLike) -> dict[str, int]:
    """Check that manifest, files on disk and label files agree; return videos per split."""
    root = Path(root)
    rows = read_manifest(root)
    counts: dict[str, int] = {}
    for split in sorted({r["split"] for r in rows}):
        paths = [r["path"] for r in rows if r["split"] == split]
        on_disk = [f"{split}/{p}" for p in list_videos(root / split)]
        if paths != on_disk:
            raise MismatchError(f"{root}: manifest and files of split '{split}' differ "
                                f"({len(paths)} in manifest, {len(on_disk)} on disk)")
        for lab in sorted((root / "labels").glob(f"{split}_*.h5")):
            _, ids, attrs = read_labels(lab)
            if attrs.get("split") != split:
                continue
            if ids != split_ids(paths):
                raise MismatchError(f"{lab}: ids are not in the order of the manifest")
        counts[split] = len(paths)
    return counts
