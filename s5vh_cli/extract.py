"""Videos to per-frame CNN features: decoding in worker processes, batched inference, resumable output.

While a run is in progress its rows go to ``<out>.partial``, an append-only journal: one header record with
the settings, then one record per finished video or failure, each with a CRC32. A killed run leaves at most a
torn last record, which the next run detects and cuts off, so resuming loses at most the batch in flight and
never the rows before it (an HDF5 file killed in the middle of a metadata write can become unreadable as a
whole; a journal cannot). When every input is done the journal is turned into the features artifact
(docs/artifacts.md) through ``atomic_output`` and removed. Rerunning on a finished output reuses its rows and
appends only new videos, replacing the file atomically.
"""

from __future__ import annotations

import contextlib
import errno
import glob as _glob
import json
import os
import struct
import sys
import time
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from . import video as _video
from .artifacts import (
    BYTES,
    STR,
    atomic_output,
    display_path,
    encode_path,
    output_lock,
    provenance,
    set_provenance,
    write_failures,
)
from .config import ExtractConfig
from .errors import ArtifactError, InputError, MismatchError, S5VHError, VideoError
from .progress import NULL, Progress

if TYPE_CHECKING:
    from .engines import ExtractEngine, ExtractPlan

LIST_SUFFIXES = (".txt", ".lst", ".list")
_MAGIC = b"S5VH-extract-journal 1\n"


# ----------------------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------------------
def collect_inputs(inputs: Iterable[str], stdin: Iterable[str] | None = None,
                   notes: list[str] | None = None) -> tuple[list[tuple[str, str]], int]:
    """Expand folders (recursively, video extensions only), globs, list files (.txt/.lst/.list, one path a
    line, relative to the list's folder) and ``-`` (paths on stdin, relative to the working folder).

    Returns ([(id, path)], number of non-video files skipped in folders). Ids: the path relative to the folder
    given, for files found in a folder; the path as given otherwise. The order is sorted within each input and
    inputs keep their order; a file reached twice is kept once. ``notes``, when given, receives a line for
    each interpretation a user should know about (a list file read as paths, images skipped in a folder). A
    list file none of whose lines names an existing file is refused: it is probably not a list.
    """
    notes = notes if notes is not None else []
    out: list[tuple[str, str]] = []
    ignored = 0
    for raw in inputs:
        if raw == "-":
            lines = stdin if stdin is not None else sys.stdin
            out += [(os.path.normpath(p), p) for p in _list_lines(lines)]
        elif os.path.isdir(raw):
            found, skipped = _scan_folder(raw, notes)
            out += found
            ignored += skipped
        elif os.path.isfile(raw) and raw.lower().endswith(LIST_SUFFIXES):
            base = os.path.dirname(raw)
            try:
                with open(raw, encoding="utf-8", errors="surrogateescape") as f:
                    entries = _list_lines(f)
            except OSError as e:
                raise InputError(f"{raw}: cannot read the list ({e.strerror})") from None
            listed = [(os.path.normpath(p), os.path.join(base, p)) for p in entries]
            if listed and not any(os.path.lexists(p) for _, p in listed):
                raise InputError(f"{raw}: read as a list of video paths (every .txt, .lst or .list input is), but "
                                 f"none of its {len(listed)} line(s) names an existing file (first: {entries[0]!r})")
            notes.append(f"{raw}: read as a list of {len(listed)} path(s), one a line")
            out += listed
        elif _glob.has_magic(raw) and not os.path.exists(raw):
            matches = sorted(_glob.glob(raw, recursive=True))
            if not matches:
                raise InputError(f"{raw}: the pattern matches no file")
            for m in matches:
                if os.path.isdir(m):
                    found, skipped = _scan_folder(m, notes)
                    out += found
                    ignored += skipped
                else:
                    out.append((os.path.normpath(m), m))
        elif os.path.lexists(raw):
            out.append((os.path.normpath(raw), raw))  # unreadable or odd files are reported as failures
        else:
            raise InputError(f"{raw}: no such file or folder")
    seen_real: set[str] = set()
    by_id: dict[str, str] = {}
    result = []
    for vid, path in out:
        real = os.path.realpath(path)
        if real in seen_real:
            continue
        seen_real.add(real)
        vid = display_path(vid).replace(os.sep, "/")
        if vid in by_id:
            raise InputError(f"{display_path(path)} and {display_path(by_id[vid])} would share the id {vid!r}; "
                             "extract them in separate runs or from one common parent folder")
        by_id[vid] = path
        # stored absolute, with its folder resolved, so that results, --exclude-self and sync work from any
        # folder; a symbolic link to a file keeps its own name
        result.append((vid, os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(path))),
                                         os.path.basename(path))))
    return result, ignored


def _list_lines(lines: Iterable[str]) -> list[str]:
    return [ln.rstrip("\r\n") for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def _scan_folder(folder: str, notes: list[str] | None = None) -> tuple[list[tuple[str, str]], int]:
    found, ignored, images = [], 0, []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = os.path.join(root, name)
            ext = os.path.splitext(name)[1].lower()
            if ext in _video.VIDEO_EXTENSIONS:
                found.append((os.path.relpath(path, folder), path))
            else:
                ignored += 1
                if ext in _video.IMAGE_EXTENSIONS:
                    images.append(os.path.relpath(path, folder))
    if images and notes is not None:
        notes.append(f"{folder}: skipped {len(images)} still image(s) (first: {display_path(images[0])}); images "
                     "are not videos, and one named directly is refused the same way")
    return sorted(found), ignored


# ----------------------------------------------------------------------------------------------------------
# decoding jobs (run in worker processes: no torch here)
# ----------------------------------------------------------------------------------------------------------
def _worker_init() -> None:
    import signal

    import cv2

    cv2.setNumThreads(1)  # parallelism comes from the worker processes
    _video.DECODE_THREADS = 1
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled once, by the main process
    _die_with_parent()


def _die_with_parent() -> None:
    """A worker whose main process was killed (SIGKILL, OOM killer) must not linger as an orphan."""
    import threading

    parent = os.getppid()
    try:  # Linux: the kernel delivers SIGKILL when the parent dies
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, 9, 0, 0, 0) == 0 and os.getppid() == parent:  # PR_SET_PDEATHSIG, SIGKILL
            return
    except (OSError, AttributeError):
        pass

    def watch() -> None:  # elsewhere: notice being re-parented
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def file_records(path: str) -> dict[str, Any]:
    """Size, modification time and content sha256 of a file: what `sync` compares and `add` dedupes by."""
    from .artifacts import sha256_file

    st = os.stat(path)
    return {"file_size": int(st.st_size), "file_mtime_ns": int(st.st_mtime_ns), "file_sha256": sha256_file(path)}


def _decode_job(path: str, frames: int, sampling: str, size: int, resize: int, decoder: str = "auto",
                views: int = 0, view_seed: int = 0, view_key: str = "", records: bool = True) -> tuple[str, Any]:
    try:
        clip = _video.read_frames(path, frames, sampling, size=size, resize=resize, decoder=decoder, views=views,
                                  view_seed=view_seed, view_key=view_key)
        if records:
            clip.file = file_records(path)
        return "ok", clip
    except S5VHError as e:
        return "err", _reason(str(e), path)
    except MemoryError:
        return "err", "out of memory while decoding"
    except Exception as e:  # a decoder bug must not stop the other videos
        return "err", f"decoder error: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"


def _reason(msg: str, path: str) -> str:
    """The failure reason without the leading path (the path is stored beside it)."""
    prefix = f"{path}: "
    return msg[len(prefix):] if msg.startswith(prefix) else msg


def _decoded(jobs: list[tuple[str, str]], cfg: ExtractConfig, size: int, resize: int,
             workers: int) -> Iterator[tuple[str, str, str, Any]]:
    """Yield (id, path, "ok"|"err", Clip|reason) in input order, decoding ``workers`` videos at a time."""
    args = (cfg.frames, cfg.sampling, size, resize, cfg.decoder, cfg.views, cfg.view_seed)
    if workers <= 0:
        for vid, path in jobs:
            yield (vid, path, *_decode_job(path, *args, vid))
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("spawn")  # no fork of a process that holds torch's thread pools
    ahead = max(2, workers * 3)  # bounded read-ahead keeps memory flat when inference is the slower side
    crashes: dict[int, int] = {}
    retry: deque[int] = deque()  # jobs in flight when a worker died: rerun one at a time to find the culprit
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init)
    try:
        pending: deque[tuple[int, Any]] = deque()
        nxt = 0
        while nxt < len(jobs) or pending or retry:
            limit = 1 if retry else ahead
            while len(pending) < limit and (retry or nxt < len(jobs)):
                if retry:
                    j = retry.popleft()
                else:
                    j, nxt = nxt, nxt + 1
                pending.append((j, pool.submit(_decode_job, jobs[j][1], *args, jobs[j][0])))
            i, fut = pending.popleft()
            try:
                status, value = fut.result()
            except BrokenProcessPool:
                # a decoder crashed its process (some corrupt files do); a job that crashes a worker while
                # running alone is recorded as a failure, the others are run again
                pool.shutdown(wait=False, cancel_futures=True)
                pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init)
                alone = crashes.get(i, 0) > 0 and not pending  # its rerun ran alone
                crashes[i] = crashes.get(i, 0) + 1
                redo = [i] + [j for j, _ in pending] + list(retry)
                pending.clear()
                retry.clear()
                if alone or crashes[i] >= 3:
                    yield jobs[i][0], jobs[i][1], "err", "the decoder crashed on this file (corrupt?)"
                    redo = redo[1:]
                retry.extend(sorted(redo))
                continue
            yield jobs[i][0], jobs[i][1], status, value
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


# ----------------------------------------------------------------------------------------------------------
# journal (<out>.partial)
# ----------------------------------------------------------------------------------------------------------
def _pack(kind: bytes, head: dict[str, Any], payload: bytes = b"") -> bytes:
    h = json.dumps(head, ensure_ascii=True).encode()
    body = kind + struct.pack("<IQ", len(h), len(payload)) + h + payload
    return body + struct.pack("<I", zlib.crc32(body))


def _read_journal(path: Path) -> tuple[dict[str, Any], list[tuple[dict[str, Any], int]], int]:
    """Return (settings, [(video record head, payload offset)], offset just after the last intact record).

    Streams the file: payloads are checked against their CRC and left on disk."""
    rows: list[tuple[dict[str, Any], int]] = []
    settings: dict[str, Any] | None = None
    with open(path, "rb") as f:
        if f.read(len(_MAGIC)) != _MAGIC:
            raise ArtifactError(f"{path}: not an s5vh extract journal; delete it to start afresh")
        good = f.tell()
        while True:
            fixed = f.read(13)
            if len(fixed) < 13:
                break
            hl, pl = struct.unpack("<IQ", fixed[1:])
            raw_head = f.read(hl)
            if len(raw_head) < hl:
                break
            crc = zlib.crc32(fixed + raw_head)
            payload_at = f.tell()
            left = pl
            while left:
                chunk = f.read(min(left, 1 << 22))
                if not chunk:
                    break
                crc = zlib.crc32(chunk, crc)
                left -= len(chunk)
            tail = f.read(4)
            if left or len(tail) < 4 or struct.unpack("<I", tail)[0] != crc:
                break  # torn last record: the run was killed while writing it
            head = json.loads(raw_head)
            if fixed[:1] == b"S":
                settings = head
            elif fixed[:1] == b"V":
                rows.append((head, payload_at))
            good = f.tell()
    if settings is None:
        raise ArtifactError(f"{path}: the journal has no intact header; delete it to start afresh")
    return settings, rows, good


class _Journal:
    def __init__(self, path: Path, f: BinaryIO, settings: dict[str, Any]) -> None:
        self.path, self.f, self.settings = path, f, settings
        self.rows: list[tuple[dict[str, Any], int]] = []  # (head, offset of the features in the file)
        self.failures: list[tuple[str, str]] = []
        self.from_finished = False  # seeded from a finished output

    def add_video(self, head: dict[str, Any], feats: np.ndarray) -> None:
        payload = np.ascontiguousarray(feats).tobytes()
        record = _pack(b"V", head, payload)
        at = self.f.tell() + len(record) - 4 - len(payload)
        self.f.write(record)
        self.rows.append((head, at))

    def payload(self, at: int) -> bytes:
        s = self.settings
        size = (1 + int(s.get("views", 0))) * int(s["frames"]) * int(s["feature_dim"]) * np.dtype(s["dtype"]).itemsize
        return os.pread(self.f.fileno(), size, at)

    def add_failure(self, path: str, reason: str) -> None:
        self.f.write(_pack(b"F", {"path": os.fsencode(path).hex(), "reason": reason}))
        self.failures.append((path, reason))

    def commit(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())


def _open_journal(out: Path, settings: dict[str, Any], progress: Progress) -> _Journal:
    part = out.with_name(out.name + ".partial")
    if part.exists():
        old, rows, good = _read_journal(part)
        _check_settings(part, old, settings)
        f = open(part, "r+b")
        f.truncate(good)  # drop a torn last record
        f.seek(good)
        progress.log(f"resuming from {part}: {len(rows)} video(s) already done")
        j = _Journal(part, f, settings)
        j.rows = rows
        return j
    f = open(part, "w+b")
    f.write(_MAGIC + _pack(b"S", settings))
    j = _Journal(part, f, settings)
    if out.exists():  # a finished output: keep its rows, append new videos, replace it at the end
        from .artifacts import open_artifact

        dtype = np.dtype(settings["dtype"])
        with open_artifact(out, "features", required=("feats", "ids", "paths")) as h5:
            _check_settings(out, {k: h5.attrs.get(k) for k in _SETTING_KEYS}, settings)
            ids = list(h5["ids"].asstr()[()])
            paths = list(h5["paths"][()])
            meta = {k: h5["meta"][k][()] for k in _META_KEYS if "meta" in h5 and k in h5["meta"]}
            has_views = int(settings.get("views", 0)) > 0
            for i in range(len(ids)):  # row by row: the output may be larger than memory
                head: dict[str, Any] = {"id": ids[i], "path": bytes(paths[i]).hex()}
                for k, v in meta.items():
                    x = v[i].tolist()
                    head[k] = x.decode() if isinstance(x, bytes) else x
                row = h5["feats"][i].astype(dtype)
                if has_views:
                    row = np.concatenate([row[None], h5["views"][i].astype(dtype)])
                j.add_video(head, row)
        j.from_finished = True
        progress.log(f"{out}: {len(ids)} video(s) already extracted; new ones will be appended")
    j.commit()
    return j


def _finished_ids(out: Path, settings: dict[str, Any]) -> set[str]:
    """Ids in a finished output, after checking it was made with these settings."""
    from .artifacts import open_artifact

    with open_artifact(out, "features", required=("feats",)) as h5:
        _check_settings(out, {k: h5.attrs.get(k) for k in _SETTING_KEYS}, settings)
        return set(h5["ids"].asstr()[()]) if "ids" in h5 else set()


_SETTING_KEYS = ("backbone", "backbone_sha256", "sampling", "frames", "feature_dim", "dtype", "preprocess", "views",
                 "view_seed", "precision")
_SETTING_DEFAULTS = {"views": 0, "view_seed": 0}  # files made before views existed have neither attribute
_OPTIONAL_KEYS = {"precision"}  # absent from files made before it was recorded: not compared then
_META_KEYS = ("duration", "fps", "frame_count", "valid_frames", "frame_times", "frame_indices", "width", "height",
              "file_size", "file_mtime_ns", "file_sha256")


def _meta_column(k: str, n: int, t: int) -> np.ndarray:
    if k == "file_sha256":
        return np.zeros(n, "S64")
    if k in ("file_size", "file_mtime_ns"):
        return np.full(n, -1, np.int64)
    shape = (n, t) if k in ("frame_times", "frame_indices") else (n,)
    return np.zeros(shape, np.int64 if k in ("frame_count", "valid_frames", "frame_indices", "width", "height")
                    else np.float64)


def _check_settings(where: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    diff = []
    for k in _SETTING_KEYS:
        a, b = old.get(k), new.get(k)
        if a is None:
            a = _SETTING_DEFAULTS.get(k)
        if b is None:
            b = _SETTING_DEFAULTS.get(k)
        if isinstance(a, (np.integer, np.floating)):
            a = a.item()
        if isinstance(a, bytes):
            a = a.decode()
        if a is None and k in _OPTIONAL_KEYS:
            continue
        if a != b:
            diff.append(f"{k} {a!r} vs {b!r}")
    if diff:
        raise MismatchError(f"{where}: was made with other settings ({'; '.join(diff)}); "
                            "use another -o, the same options, or delete it")


def _finalise(j: _Journal, out: Path, cfg: ExtractConfig, prov: dict[str, Any]) -> None:
    s = j.settings
    n, t, d = len(j.rows), int(s["frames"]), int(s["feature_dim"])
    nv = int(s.get("views", 0))
    dtype = np.dtype(s["dtype"])
    with atomic_output(out) as tmp:
        import h5py

        with h5py.File(tmp, "w") as h5:
            set_provenance(h5, "features", prov)
            for k in _SETTING_KEYS:
                if s.get(k) is not None:
                    h5.attrs[k] = s[k]
            h5.attrs["weights_file"] = s.get("weights_file", "")
            feats = h5.create_dataset("feats", shape=(n, t, d), dtype=dtype, chunks=(1, t, d))
            views = h5.create_dataset("views", shape=(n, nv, t, d), dtype=dtype, chunks=(1, nv, t, d)) if nv else None
            ids = h5.create_dataset("ids", shape=(n,), dtype=STR)
            paths = h5.create_dataset("paths", shape=(n,), dtype=BYTES)
            meta = {k: _meta_column(k, n, t) for k in _META_KEYS}
            j.f.flush()
            for i, (head, at) in enumerate(j.rows):
                row = np.frombuffer(j.payload(at), dtype=dtype).reshape(1 + nv, t, d)
                feats[i] = row[0]
                if views is not None:
                    views[i] = row[1:]
                ids[i] = head["id"]
                paths[i] = encode_path(os.fsdecode(bytes.fromhex(head["path"])))
                for k in _META_KEYS:
                    if k in head:
                        meta[k][i] = head[k]
            g = h5.create_group("meta")
            for k, v in meta.items():
                g.create_dataset(k, data=v)
            write_failures(h5, j.failures)


# ----------------------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------------------
@dataclass
class ExtractResult:
    out: str
    videos: int  # rows in the output
    extracted: int  # new this run
    skipped: int  # already in the output or partial file
    failed: list[tuple[str, str]] = field(default_factory=list)
    frames_per_s: float = 0.0
    videos_per_s: float = 0.0
    seconds: float = 0.0
    device: str = ""
    weights: str = ""
    runtime: str = ""  # e.g. "openvino 2026.4.1 on cpu, float32, 2 thread(s)"
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["failed"] = [{"path": display_path(p), "reason": r} for p, r in self.failed]
        return d


def preprocess_string(size: int, resize: int) -> str:
    return f"shorter_side={resize},center_crop={size},cv2_area_down_linear_up,rgb,imagenet_mean_std"


def default_workers(runtime: str = "torch") -> int:
    """Decode processes when --workers is not given. With torch on the CPU one core is left to its OpenMP
    pool, which collapses when it shares cores; the other runtimes cost a fraction of a core per video next to
    decoding, so every core decodes (docs/extract.md, "Speed")."""
    cores = os.cpu_count() or 2
    return max(1, min(8, cores - 1 if runtime == "torch" else cores))


def _embed(embedder, clips: list[Any]) -> np.ndarray:
    """Features of the frames of ``clips`` in one batch: float32 [sum T, D] (``runtimes.Embedder.embed``)."""
    return embedder.embed(np.concatenate([c.frames for c in clips]))


def videos_per_pass(batch_size: int, frames: int) -> int:
    """Whole videos per forward pass: enough to reach ``batch_size`` frames."""
    return max(1, -(-batch_size // frames))


def embed_clips(embedder, clips: list[Any], videos: int) -> np.ndarray:
    """Features of the frames of ``clips`` (at most ``videos`` of them) in one batch: float32 [sum T, D].

    The batch always holds ``videos`` clips' worth of frames, the missing ones as zero frames: a frame's features
    depend on the size of the batch it was computed in (the CPU kernels pick their algorithm by batch size; up
    to 6e-6 apart measured on MobileNetV2), never on the other frames in it. A fixed size makes every row the
    same whichever videos share its batch: the last batch of a run, a resumed run and every engine agree exactly.
    """
    if len(clips) > videos:
        raise ValueError(f"embed_clips: {len(clips)} clips for a pass of {videos}")
    n = sum(len(c.frames) for c in clips)
    short = videos * len(clips[0].frames) - n
    if short <= 0:
        return _embed(embedder, clips)
    pad = _video.Clip(path="", frames=np.zeros((short, *clips[0].frames.shape[1:]), np.uint8),
                      indices=np.zeros(0), times=np.zeros(0), frame_count=0, fps=0.0, duration=0.0, valid=0)
    return _embed(embedder, [*clips, pad])[:n]


def embed_views(embedder, clips: list[Any], videos: int) -> list[np.ndarray]:
    """Features of each clip's transformed renderings (``Clip.views`` [V, T, ...]): one float32 [V * T, D] per
    clip, in passes of ``videos`` renderings (``embed_clips``, so the pass size never changes the rows)."""
    flat = [(k, v) for k, c in enumerate(clips) for v in c.views]
    out: list[list[np.ndarray]] = [[] for _ in clips]
    t = len(flat[0][1]) if flat else 0
    for s in range(0, len(flat), videos):
        part = flat[s:s + videos]
        f = embed_clips(embedder, [_video.Clip(path="", frames=v, indices=np.zeros(0), times=np.zeros(0),
                                               frame_count=0, fps=0.0, duration=0.0, valid=0) for _, v in part],
                        videos)
        for i, (k, _) in enumerate(part):
            out[k].append(f[i * t:(i + 1) * t])
    return [np.concatenate(o) if o else np.zeros((0, 0), np.float32) for o in out]


def _row_head(vid: str, clip: Any) -> dict[str, Any]:
    return {"id": vid, "path": os.fsencode(clip.path).hex(), "duration": float(clip.duration),
            "fps": float(clip.fps), "frame_count": int(clip.frame_count), "valid_frames": int(clip.valid),
            "frame_times": [float(x) for x in clip.times], "frame_indices": [int(x) for x in clip.indices],
            "width": int(clip.width), "height": int(clip.height), **clip.file}


def extract(inputs: list[str], out: str | os.PathLike, *, config: ExtractConfig | None = None,
            weights: str | None = None, device: str = "auto", workers: int | None = None,
            threads: int | None = None, stdin: Iterable[str] | None = None,
            progress: Progress = NULL, items: list[tuple[str, str]] | None = None,
            allow_empty: bool = False, engine: ExtractEngine | None = None) -> ExtractResult:
    """Extract features of every video in ``inputs`` into ``out`` (resuming a partial or finished output).

    ``items`` ((id, absolute path) pairs, as ``collect_inputs`` makes them) replaces ``inputs`` when given.
    ``engine`` runs the decoding and inference (s5vh_cli.engines; default: this machine with ``workers``
    decode processes and the backbone runtime of ``config``). Raises VideoError when no video at all could be
    extracted (with ``allow_empty``, returns a result with no videos and the failures, writing nothing);
    individual failures are recorded, not raised.
    """
    from .backbones import get_spec
    from .engines import ExtractPlan
    from .engines.local import LocalEngine

    cfg = config or ExtractConfig()
    spec = get_spec(cfg.backbone)
    sampling = _video.parse_sampling(cfg.sampling)
    if cfg.frames < 1 or cfg.batch_size < 1:
        raise InputError("--frames and --batch-size must be at least 1")
    if cfg.dtype not in ("float32", "float16"):
        raise InputError(f"dtype must be float32 or float16, got {cfg.dtype!r}")
    if cfg.views < 0:
        raise InputError(f"views must be 0 or more, got {cfg.views}")
    out = Path(out)
    if out.is_dir():
        raise InputError(f"{out}: is a folder, expected an output file name such as feats.h5")
    if not (out.parent if str(out.parent) else Path(".")).is_dir():
        raise InputError(f"{out.parent}: output folder does not exist")
    ignored = 0
    notes: list[str] = []
    if items is None:
        items, ignored = collect_inputs(inputs, stdin, notes)
        for note in notes:
            progress.log(note)
    if ignored:
        progress.log(f"skipped {ignored} file(s) without a video extension in the input folder(s)")
    if not items:
        raise InputError(f"no videos found in {', '.join(inputs)}")
    _video.check_decoder(cfg.decoder)
    if threads:
        import torch

        torch.set_num_threads(threads)
    engine = engine or LocalEngine(workers=workers)
    if cfg.views and engine.name != "local":
        engine.close()
        raise InputError(f"--views runs on the local engine only, not {engine.name}")
    plan = ExtractPlan(backbone=cfg.backbone, weights=weights, frames=cfg.frames, sampling=str(sampling),
                       size=spec.input_size, resize=spec.resize,
                       videos_per_pass=videos_per_pass(cfg.batch_size, cfg.frames), device=device,
                       runtime=cfg.runtime, precision=cfg.precision, decoder=cfg.decoder, threads=threads,
                       views=cfg.views, view_seed=cfg.view_seed)
    try:
        return _extract(engine, plan, items, out, cfg, spec, progress, notes, allow_empty)
    finally:
        engine.close()


def _extract(engine: ExtractEngine, plan: ExtractPlan, items: list[tuple[str, str]], out: Path, cfg: ExtractConfig,
             spec: Any, progress: Progress, notes: list[str], allow_empty: bool) -> ExtractResult:
    model = engine.open_backbone(plan)
    for note in model.notes:
        progress.log(note)
    progress.log(f"backbone {cfg.backbone} ({spec.feature_dim}-d, weights {model.weights_path}) on {model.where}")
    settings = {"backbone": cfg.backbone, "backbone_sha256": model.weights_sha256, "sampling": plan.sampling,
                "frames": cfg.frames, "feature_dim": spec.feature_dim, "dtype": cfg.dtype,
                "preprocess": preprocess_string(spec.input_size, spec.resize), "precision": model.precision,
                "weights_file": os.path.basename(model.weights_path), "views": cfg.views, "view_seed": cfg.view_seed}

    def prov() -> dict[str, Any]:  # after the run: an engine may learn what its workers resolved ("auto")
        run_cfg = asdict(cfg) | {"sampling": plan.sampling} | model.record
        return provenance("extract", run_cfg | {"preprocess": settings["preprocess"]},
                          {"backbone": model.weights_sha256})

    t0 = time.perf_counter()

    def result(**kw: Any) -> ExtractResult:
        return ExtractResult(out=str(out), device=model.where, weights=model.weights_path, runtime=model.runtime,
                             notes=notes, **kw)

    with output_lock(out, wait=False), _journal_errors(out):
        part = out.with_name(out.name + ".partial")
        if out.exists() and not part.exists():
            done_ids = _finished_ids(out, settings)
            if all(v in done_ids for v, _ in items):  # nothing new: leave the output as it is
                progress.log(f"{out}: all {len(items)} video(s) already extracted")
                return result(videos=len(done_ids), extracted=0, skipped=len(items))
        j = _open_journal(out, settings, progress)
        try:
            done = {head["id"] for head, _ in j.rows}
            todo = [(v, p) for v, p in items if v not in done]
            skipped = len(items) - len(todo)
            extracted, frames_done = _run(j, todo, cfg, engine, plan, progress)
            elapsed = time.perf_counter() - t0
            if not j.rows:
                j.f.close()
                j.path.unlink(missing_ok=True)
                if allow_empty:
                    return result(videos=0, extracted=0, skipped=skipped, failed=list(j.failures), seconds=elapsed)
                first = j.failures[0] if j.failures else ("", "no input")
                raise VideoError(f"no video could be extracted: {len(j.failures)} failed "
                                 f"(first: {display_path(first[0])}: {first[1]})")
            j.commit()
            if not (j.from_finished and extracted == 0 and not j.failures):  # else the output is already right
                _finalise(j, out, cfg, prov())
        finally:
            if not j.f.closed:
                j.f.close()
        j.path.unlink(missing_ok=True)
    return result(videos=len(j.rows), extracted=extracted, skipped=skipped, failed=list(j.failures),
                  frames_per_s=frames_done / elapsed if elapsed else 0.0,
                  videos_per_s=extracted / elapsed if elapsed else 0.0, seconds=elapsed)


@contextlib.contextmanager
def _journal_errors(out: Path) -> Iterator[None]:
    """A journal write that fails (full disk, lost permission) ends the run with one line; what was committed
    before stays in the journal for the next run."""
    try:
        yield
    except OSError as e:
        part = out.with_name(out.name + ".partial")
        why = "no space left on device" if e.errno == errno.ENOSPC else f"cannot write ({e.strerror or e})"
        raise InputError(f"{part}: {why}; videos already done are kept there, rerun to resume") from None


def _run(j: _Journal, todo: list[tuple[str, str]], cfg: ExtractConfig, engine: ExtractEngine, plan: ExtractPlan,
         progress: Progress) -> tuple[int, int]:
    dtype = np.dtype(cfg.dtype)
    progress.start("extract", total=len(todo))
    t0 = time.perf_counter()
    extracted = frames_done = 0
    try:
        for rows in engine.extract(todo, plan):
            done = 0
            for row in rows:
                if row[0] == "err":
                    _, _, path, reason = row
                    j.add_failure(path, reason)
                    progress.log(f"failed: {display_path(path)}: {reason}")
                    progress.advance(1, **{"failed": len(j.failures)})
                    continue
                _, vid, path, head, feats, notes = row
                for note in notes:
                    progress.log(f"note: {display_path(path)}: {note}")
                j.add_video(head, np.asarray(feats).astype(dtype))
                done += 1
            if not done:
                continue  # failures alone are committed with the next rows
            j.commit()  # a kill after this point loses nothing of this batch
            extracted += done
            frames_done += done * cfg.frames * (1 + cfg.views)  # plain frames and views' frames
            dt = max(time.perf_counter() - t0, 1e-9)
            progress.advance(done, **{"videos/s": extracted / dt, "frames/s": frames_done / dt,
                                      "failed": len(j.failures)})
    finally:
        progress.finish()
    return extracted, frames_done


# ----------------------------------------------------------------------------------------------------------
# for the query pipeline
# ----------------------------------------------------------------------------------------------------------
def extract_clips(paths: list[str], *, backbone: str, frames: int, sampling: str, weights: str | None = None,
                  device: str = "auto", batch_size: int = 32, runtime: str = "auto", precision: str = "auto",
                  decoder: str = "auto", threads: int | None = None, progress: Progress | None = None,
                  mirror: bool = False) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Features of a few clips with exactly the sampling and preprocessing a features artifact records.

    ``mirror``: the features of the clips' mirror images (each frame flipped left-right after the centre crop,
    which is the centre crop of the flipped frame), for queries that must also find mirrored copies.

    ``sampling`` is the artifact's ``sampling`` attribute ("uniform" or "fps=RATE"). Returns float32
    [n, frames, D] and one dict per clip (path, duration, fps, frame_count, valid_frames, frame_times,
    frame_indices, backbone_sha256, runtime, runtime_version, precision). The backbone runs in the runtime
    that ``extract`` uses (``runtimes.load_embedder``, loaded once per process). Raises VideoError naming the
    first clip that cannot be decoded.
    """
    from .backbones import get_spec
    from .runtimes import load_embedder

    progress = progress or NULL
    spec = get_spec(backbone)
    samp = _video.parse_sampling(sampling)
    if frames < 1:
        raise InputError(f"frames must be at least 1, got {frames}")
    _video.check_decoder(decoder)
    model, _ = load_embedder(backbone, weights, runtime=runtime, precision=precision, device=device,
                             threads=threads, batch_size=batch_size)
    progress.start("extract clips", total=len(paths))
    feats = np.zeros((len(paths), frames, spec.feature_dim), np.float32)
    infos: list[dict[str, Any]] = []
    pending: list[tuple[int, Any]] = []

    def flush() -> None:
        if pending:
            f = embed_clips(model, [c for _, c in pending], videos_per_pass(batch_size, frames))
            for k, (i, _) in enumerate(pending):
                feats[i] = f[k * frames:(k + 1) * frames]
            progress.advance(len(pending))
            pending.clear()

    try:
        for i, p in enumerate(paths):
            clip = _video.read_frames(str(p), frames, samp, size=spec.input_size, resize=spec.resize,
                                      decoder=decoder)
            if mirror:
                clip.frames = np.ascontiguousarray(clip.frames[:, :, ::-1])
            head = _row_head(str(p), clip)
            head["path"] = str(p)
            head["backbone_sha256"] = model.weights_sha256
            head |= model.record()
            head["notes"] = clip.notes
            infos.append(head)
            pending.append((i, clip))
            if len(pending) * frames >= batch_size:
                flush()
        flush()
    finally:
        progress.finish()
    return feats, infos
