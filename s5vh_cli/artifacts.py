"""Read, write and validate the artifacts passed between stages.

Every artifact records what made it (format version, producer, config, a hash of its inputs) and is
written atomically: to a temporary file in the destination folder, flushed, then renamed over the target,
under an exclusive lock so that two writers of the same output serialise instead of interleaving.
The layout of each artifact is documented in docs/artifacts.md.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import __version__
from .errors import ArtifactError, InputError, MismatchError, S5VHError

FORMAT_VERSION = 1
KINDS = ("features", "centers", "codes", "index")
_PRODUCED_BY = {
    "features": "`s5vh extract`",
    "centers": "`s5vh centers`",
    "codes": "`s5vh encode`",
    "index": "`s5vh index`",
    "model": "`s5vh train`",
}
STR = h5py.string_dtype("utf-8")
BYTES = h5py.vlen_dtype(np.dtype("uint8"))  # paths as written before: one vlen uint8 row per path (still read)
PATHS = h5py.string_dtype("ascii")  # paths: vlen byte strings holding the raw bytes of the name

# Per-video file records: made by `extract` (meta/ of features), carried by `encode` (meta/ of codes) into the
# index, where `sync` compares them with the files on disk and `dedup` chooses a keeper with them.
# name -> (dtype, value meaning "unknown")
RECORD_FIELDS: dict[str, tuple[str, Any]] = {
    "file_size": ("int64", -1),
    "file_mtime_ns": ("int64", -1),
    "file_sha256": ("S64", b""),
    "width": ("int32", -1),
    "height": ("int32", -1),
    "duration": ("float64", float("nan")),
    "fps": ("float64", float("nan")),
}


# ----------------------------------------------------------------------------------------------------------
# generic helpers
# ----------------------------------------------------------------------------------------------------------
def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from None
    return h.hexdigest()


def encode_path(p: str | os.PathLike) -> np.ndarray:
    """Paths are stored as raw bytes so that names that are not valid UTF-8 survive the round trip."""
    return np.frombuffer(os.fsencode(os.fspath(p)), dtype=np.uint8)


def decode_path(b: np.ndarray | bytes) -> str:
    return os.fsdecode(bytes(b))


def display_path(p: str) -> str:
    """Printable form of a path whose bytes may not be UTF-8."""
    return p.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def provenance(command: str, config: dict[str, Any] | None = None,
               inputs: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "producer": f"s5vh {__version__} {command}",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": json.dumps(config or {}, sort_keys=True),
        "inputs_sha256": json.dumps(inputs or {}, sort_keys=True),
    }


def set_provenance(h5: h5py.File, kind: str, prov: dict[str, Any]) -> None:
    h5.attrs["s5vh_artifact"] = kind
    for k, v in prov.items():
        h5.attrs[k] = v


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of an output: ``.NAME.lock`` beside it (hidden, like the temporaries; never removed)."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def output_lock(path: str | os.PathLike, wait: bool = True) -> Iterator[None]:
    """Exclusive advisory lock (flock) on the output's lock file, so processes writing one output take turns.

    The lock file is created once and never removed: removing it on release would let a process still waiting
    on the old file and a newcomer that creates a new one both hold "the" lock at once. It is an empty file;
    the lock itself lives in the kernel and dies with its process, so a killed writer never blocks the next.
    """
    path = Path(path)
    if not path.name or path.name in (".", ".."):
        raise InputError(f"{path}: not a file name")
    lp = lock_path(path)
    try:
        # read-only is enough for flock and works on a lock file another user created; no symlink is followed
        fd = os.open(lp, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InputError(f"{lp}: the lock file is a symbolic link; remove it") from None
        raise InputError(f"{path.parent}: cannot write here ({e.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise InputError(f"{path}: another s5vh process is writing this file") from None
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (see above)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync and rename it over ``path``.

    On any error (including KeyboardInterrupt) the temporary file is removed and the previous
    ``path``, if any, is left untouched.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{parent}: output folder does not exist")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a file name")
    _remove_stale_temporaries(parent, path.name)
    try:
        # the writer's pid is in the name so that a later run can tell a killed writer's leftover from a live one
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp" + suffix, dir=parent)
    except OSError as e:
        raise InputError(f"{parent}: cannot write here ({e.strerror})") from None
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600; give the final file the permissions a plain open() would (0666 & ~umask)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        with contextlib.suppress(OSError):
            dfd = os.open(parent, os.O_RDONLY)
            os.fsync(dfd)
            os.close(dfd)
    except OSError as e:
        tmp_path.unlink(missing_ok=True)
        if e.errno == errno.ENOSPC:
            raise InputError(f"{path}: no space left on device; nothing was written") from None
        raise InputError(f"{path}: cannot write ({e.strerror or e}); nothing was written") from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _remove_stale_temporaries(parent: Path, name: str) -> None:
    """Delete temporaries of ``name`` left by writers that were killed (their pid no longer runs)."""
    pattern = re.compile(rf"^\.{re.escape(name)}\.(\d+)\.[A-Za-z0-9_]{{8}}\.tmp")
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return
    for entry in entries:
        m = pattern.match(entry.name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue  # still running: its temporary is in use
        except ProcessLookupError:
            pass
        except OSError:
            continue  # exists but is not ours to signal: leave it
        with contextlib.suppress(OSError):
            os.unlink(entry.path)


@contextlib.contextmanager
def reading(path: str | os.PathLike, kind: str) -> Iterator[None]:
    """Turn any failure while parsing an untrusted artifact into one ArtifactError line naming the file.

    h5py and numpy raise KeyError, TypeError, ValueError, RuntimeError or OSError for damaged or malformed
    files; none of them means a bug here, all of them mean "this file is not what it claims to be".
    """
    try:
        yield
    except (S5VHError, MemoryError):
        raise
    except Exception as e:
        raise ArtifactError(f"{path}: damaged or malformed {kind} file ({_short(e)})") from None


# Declared (uncompressed) bytes a dataset may hold per byte it stores. Deflate, the strongest filter h5py reads
# without plugins, tops out near 1030:1 on all-zero chunks; s5vh's own datasets are stored uncompressed.
MAX_EXPANSION = 1100


def check_stored_here(h5: h5py.File, path: str | os.PathLike | None = None) -> None:
    """Refuse an HDF5 file with data that does not live in the file itself, or that it does not hold.

    Checked before anything is read: external links, soft links (s5vh never writes either), datasets with
    external raw storage or virtual layout (their bytes come from other files, a FIFO, a device...), and datasets
    whose declared size the file does not back: unallocated storage (reads would return a fill value of any size),
    missing chunks, stored sizes beyond the end of the file, or more than ``MAX_EXPANSION`` declared bytes per
    stored byte. Attributes live in the object headers and need no check.
    """
    name_of = path if path is not None else h5.filename
    try:
        file_size = os.path.getsize(h5.filename)
    except OSError:
        file_size = 0
    problem: list[str] = []

    def visit(name: str, link: Any) -> bool | None:
        if isinstance(link, h5py.ExternalLink):
            problem.append(f"'{name}' is an external link to {_clip(link.filename)}:{_clip(link.path)}")
        elif isinstance(link, h5py.SoftLink):
            problem.append(f"'{name}' is a soft link (to {_clip(link.path)})")
        elif not isinstance(link, h5py.HardLink):
            problem.append(f"'{name}' is a link of an unknown kind")
        else:
            obj = h5.get(name)
            if isinstance(obj, h5py.Dataset):
                why = _dataset_storage_problem(obj, file_size)
                if why:
                    problem.append(f"'{name}' {why}")
        return True if problem else None

    h5.visititems_links(visit)
    if problem:
        why = ("a file that does not hold what it declares is damaged or crafted" if " declares " in problem[0]
               else "s5vh reads only data stored in the file itself")
        raise ArtifactError(f"{name_of}: {problem[0]}; {why}, refused")


def _clip(text: Any, n: int = 80) -> str:
    text = str(text)
    return text if len(text) <= n else text[:n] + "..."


def _dataset_storage_problem(ds: h5py.Dataset, file_size: int) -> str | None:
    dcpl = ds.id.get_create_plist()
    layout = dcpl.get_layout()
    if layout == h5py.h5d.VIRTUAL:
        return "is a virtual dataset (its data lives in other files)"
    if dcpl.get_external_count():
        return f"keeps its data in an external file ({_clip(os.fsdecode(dcpl.get_external(0)[0]))})"
    if ds.shape is None:  # a null dataspace (h5py.Empty): nothing to read
        return None
    shape = ds.shape
    declared = int(np.prod([int(s) for s in shape], dtype=object)) * int(ds.dtype.itemsize)
    if declared == 0:
        return None
    what = f"declares {'x'.join(str(s) for s in shape) or 'a scalar'} {ds.dtype} ({declared:,} bytes)"
    if layout == h5py.h5d.CHUNKED:
        chunks = ds.chunks or shape
        expected = int(np.prod([-(-int(s) // int(c)) for s, c in zip(shape, chunks, strict=True)], dtype=object))
        stored_chunks = ds.id.get_num_chunks()
        if stored_chunks < expected:
            return f"{what} but stores only {stored_chunks:,} of its {expected:,} chunks"
    stored = int(ds.id.get_storage_size())
    if stored == 0:
        return f"{what} but stores none of them"
    if stored > file_size:
        return f"{what} and claims {stored:,} stored bytes, more than the {file_size:,}-byte file holds"
    if declared > MAX_EXPANSION * stored:
        return f"{what} from only {stored:,} stored bytes (more than {MAX_EXPANSION}:1)"
    if ds.dtype.kind == "O":
        return _vlen_problem(ds, dcpl, layout, file_size)
    return None


def _vlen_problem(ds: h5py.Dataset, dcpl: Any, layout: int, file_size: int) -> str | None:
    """Variable-length elements (ids, paths) say their own length, and HDF5 allocates what they say before it
    reads the heap: their lengths must add up to no more than the file holds. The on-disk descriptors (a 4-byte
    length, a heap address, a 4-byte index) are read raw; a layout where they cannot be reached raw is refused."""
    n = int(np.prod(ds.shape or (), dtype=object))
    if n == 0:
        return None
    step = 8 + ds.file.id.get_create_plist().get_sizes()[0]  # 4-byte length + heap address + 4-byte index
    if layout == h5py.h5d.CONTIGUOUS and ds.id.get_offset() is not None:
        with open(ds.file.filename, "rb") as f:
            f.seek(ds.id.get_offset())
            raw = f.read(n * step)
    elif layout == h5py.h5d.CHUNKED and dcpl.get_nfilters() == 0:
        raw = b"".join(ds.id.read_direct_chunk(ds.id.get_chunk_info(i).chunk_offset)[1]
                       for i in range(ds.id.get_num_chunks()))
    else:
        return "declares variable-length data in a layout whose sizes cannot be checked before reading"
    if len(raw) < n * step:
        return f"declares {n} variable-length elements but stores fewer descriptors"
    lengths = np.frombuffer(raw[: len(raw) // step * step], dtype=np.uint8).reshape(-1, step)[:, :4]
    total = int(lengths.copy().view("<u4").astype(np.int64).sum())
    base = (ds.dtype.metadata or {}).get("vlen", np.uint8)
    total *= 1 if base in (str, bytes) else np.dtype(base).itemsize
    if total > file_size:
        return (f"declares variable-length elements of {total:,} bytes in all, more than the {file_size:,}-byte "
                "file holds")
    return None


def check_not_input(out: str | os.PathLike, inputs: dict[str, str | os.PathLike | None]) -> None:
    """Refuse an output path that names one of the inputs (writing it would destroy the input)."""
    try:
        out_real = os.path.realpath(out)
    except (OSError, ValueError):
        return
    for what, p in inputs.items():
        if p is not None and os.path.realpath(p) == out_real:
            raise InputError(f"{out}: the output would overwrite the input {what} file; choose another output")


def h5_kind(path: str | os.PathLike) -> str | None:
    """What an input file is, from its attributes alone (no data read): an s5vh kind (``features``, ``centers``,
    ``codes``, ``index``), ``features`` for a public file with a ``feats`` array, ``""`` for any other HDF5 file
    (including an ``s5vh_artifact`` attribute that is not a kind name), None for a file that is not HDF5."""
    p = Path(path)
    if not p.is_file():
        return None
    try:
        if not h5py.is_hdf5(p):
            return None
        with h5py.File(p, "r") as f:
            kind = f.attrs.get("s5vh_artifact")
            if isinstance(kind, bytes):
                kind = kind.decode(errors="replace")
            if isinstance(kind, str) and kind in KINDS:
                return kind
            if kind is None and "feats" in f:  # a link lookup only: nothing is opened or read
                return "features"
            return ""
    except (OSError, ValueError, TypeError):
        return ""  # HDF5 magic, but damaged: the reader names the problem


def open_artifact(path: str | os.PathLike, kind: str, required: tuple[str, ...] = ()) -> h5py.File:
    """Open an HDF5 artifact read-only and check it is the expected kind with the required keys.

    Files with no ``s5vh_artifact`` attribute are accepted as ``features`` when they hold a ``feats`` array
    (the public FCVID/ActivityNet/UCF101/HMDB51 feature files).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a {kind} file from {_PRODUCED_BY[kind]}")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: permission denied")
    if path.stat().st_size == 0:
        raise ArtifactError(f"{path}: empty file (0 bytes), expected a {kind} file from {_PRODUCED_BY[kind]}")
    try:
        if not h5py.is_hdf5(path):
            raise ArtifactError(f"{path}: not an HDF5 file, expected a {kind} file from {_PRODUCED_BY[kind]}")
        h5 = h5py.File(path, "r")
    except ArtifactError:
        raise
    except Exception as e:  # h5py raises OSError for truncated / damaged files
        raise ArtifactError(f"{path}: damaged or truncated HDF5 file ({_short(e)})") from None
    try:
        with reading(path, kind):
            check_stored_here(h5, path)  # before anything else is read: bytes elsewhere, sizes not held
        actual = h5.attrs.get("s5vh_artifact")
        if isinstance(actual, bytes):
            actual = actual.decode(errors="replace")
        if actual is not None and not isinstance(actual, str):
            actual = "?"  # an array or number: not a kind name at all
        if actual is None and kind == "features" and "feats" in h5:
            pass  # a public feature file
        elif actual != kind:
            what = f"a {actual} file" if actual in KINDS else "not an s5vh artifact"
            raise ArtifactError(f"{path}: {what}; expected a {kind} file from {_PRODUCED_BY[kind]}")
        else:
            try:
                ver = int(h5.attrs.get("format_version", 0))
            except (TypeError, ValueError):
                ver = -1
            if ver > FORMAT_VERSION or ver < 1:
                raise ArtifactError(f"{path}: {kind} format version {ver} is not supported by s5vh {__version__}")
        with reading(path, kind):
            for key in required:
                if key not in h5:
                    raise ArtifactError(f"{path}: missing '{key}' in {kind} file")
        return h5
    except BaseException:
        h5.close()
        raise


def _short(e: BaseException) -> str:
    return str(e).splitlines()[0][:160] if str(e) else type(e).__name__


def read_json_attr(h5: h5py.File, key: str) -> dict[str, Any]:
    raw = h5.attrs.get(key)
    if raw is None:
        return {}
    try:
        return json.loads(raw)
    except (TypeError, ValueError):
        raise ArtifactError(f"{h5.filename}: attribute '{key}' is not valid JSON") from None


def _attr_str(h5: h5py.File, key: str, default: str = "") -> str:
    v = h5.attrs.get(key, default)
    return v.decode() if isinstance(v, bytes) else str(v)


def _read_strings(h5: h5py.File, key: str, n: int) -> list[str]:
    if key not in h5:
        return [str(i) for i in range(n)] if key == "ids" else [""] * n
    ds = h5[key]
    if ds.shape != (n,):
        raise ArtifactError(f"{h5.filename}: '{key}' has shape {ds.shape}, expected ({n},)")
    # (h5py's string and vlen dtypes compare equal as numpy dtypes: tell them apart by their metadata)
    if h5py.check_string_dtype(ds.dtype) is not None:
        if key == "paths":  # raw bytes of the name in a vlen byte string
            return [b.decode("utf-8", "surrogateescape") for b in ds[()]]
        return ds.asstr()[()].tolist()
    if key == "paths" and h5py.check_vlen_dtype(ds.dtype) is not None:  # files written before 0.2
        return [decode_path(b) for b in ds[()]]
    return [s.decode() if isinstance(s, bytes) else str(s) for s in ds.asstr()[()]]


def _write_ids_paths(h5: h5py.File, ids: list[str], paths: list[str]) -> None:
    h5.create_dataset("ids", data=np.array(ids, dtype=object), dtype=STR)
    # variable-length byte strings hold any path's raw bytes (names need not be UTF-8) and are written in one
    # call; a vlen-uint8 dataset had to be written row by row (232 s for a million paths)
    h5.create_dataset("paths", data=np.array([os.fsencode(p) for p in paths], dtype=object), dtype=PATHS)


def video_records(meta: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """The RECORD_FIELDS columns of a ``meta`` group of ``n`` rows, filled with "unknown" where absent."""
    out = {}
    for name, (dtype, missing) in RECORD_FIELDS.items():
        col = np.full(n, missing, dtype=dtype)
        v = meta.get(name)
        if v is not None:
            v = np.asarray(v)
            if v.shape != (n,):
                raise ArtifactError(f"meta/{name} has shape {v.shape}, expected ({n},)")
            col[:] = v.astype(dtype)
        out[name] = col
    return out


def concat_records(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([p[name] for p in parts]) for name in RECORD_FIELDS}


def write_records(h5: h5py.File, records: dict[str, np.ndarray], n: int) -> None:
    g = h5.require_group("meta")
    for name, (dtype, missing) in RECORD_FIELDS.items():
        v = records.get(name)
        g.create_dataset(name, data=np.full(n, missing, dtype=dtype) if v is None else np.asarray(v, dtype=dtype))


def read_records(h5: h5py.File, n: int) -> dict[str, np.ndarray]:
    meta = {}
    if "meta" in h5:
        for name in RECORD_FIELDS:
            if name in h5["meta"]:
                meta[name] = h5["meta"][name][()]  # open_artifact checked every dataset's storage
    return video_records(meta, n)


# ----------------------------------------------------------------------------------------------------------
# features
# ----------------------------------------------------------------------------------------------------------
# Largest feature magnitude accepted. CNN features are O(1)-O(100); values beyond this are damage, and their
# squares (PCA, layer norms, losses) overflow float32.
MAX_FEATURE_ABS = 1e6


def check_feature_values(block: np.ndarray, name: str, where: str = "",
                         error: type[S5VHError] = ArtifactError) -> None:
    """Refuse NaN, infinite or absurdly large feature values (one line naming the file and the videos)."""
    flat = block.reshape(block.shape[0], -1)
    with np.errstate(invalid="ignore"):
        hi, lo = flat.max(axis=1), flat.min(axis=1)  # per video, without a full-size temporary; NaN propagates
    hi, lo = hi.astype(np.float64), lo.astype(np.float64)  # float16 cannot hold the limit itself
    bad = ~(np.isfinite(hi) & np.isfinite(lo))
    if bad.any():
        raise error(f"{name}: 'feats' holds NaN or infinite values in {int(bad.sum())} video(s){where}")
    big = (hi > MAX_FEATURE_ABS) | (lo < -MAX_FEATURE_ABS)
    if big.any():
        peak = float(max(hi.max(), -lo.min()))
        raise error(f"{name}: 'feats' holds values as large as {peak:.3g} in {int(big.sum())} video(s)"
                            f"{where}; features beyond {MAX_FEATURE_ABS:g} are damage")


@dataclass
class Features:
    path: Path
    feats: np.ndarray  # [N, T, D] float32 (or float16 as stored)
    ids: list[str]
    paths: list[str]
    backbone: str = "unknown"
    backbone_sha256: str = ""
    sampling: str = "unknown"
    meta: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    views: np.ndarray | None = None  # [N, V, T, D] transformed renderings (``extract --views``), else None

    @property
    def n(self) -> int:
        return int(self.feats.shape[0])

    @property
    def frames(self) -> int:
        return int(self.feats.shape[1])

    @property
    def dim(self) -> int:
        return int(self.feats.shape[2])


def read_features(path: str | os.PathLike, *, check_finite: bool = True, with_hash: bool = True) -> Features:
    """Load a feature artifact (or a public ``feats`` file) into memory and validate it."""
    with open_artifact(path, "features", required=("feats",)) as h5, reading(path, "features"):
        ds = h5["feats"]
        if ds.ndim != 3:
            raise ArtifactError(f"{path}: 'feats' has shape {ds.shape}, expected [videos, frames, dim]")
        if ds.dtype.kind != "f":
            raise ArtifactError(f"{path}: 'feats' has dtype {ds.dtype}, expected float16/float32/float64")
        n = ds.shape[0]
        if n == 0:
            raise ArtifactError(f"{path}: holds zero videos")
        if ds.shape[1] == 0 or ds.shape[2] == 0:
            raise ArtifactError(f"{path}: 'feats' has shape {ds.shape}: zero frames or zero dimensions per video")
        try:
            feats = ds[()]
        except Exception as e:
            raise ArtifactError(f"{path}: cannot read 'feats' ({_short(e)}); the file is damaged") from None
        if feats.dtype == np.float64:
            with np.errstate(over="ignore"):  # values beyond float32 become inf and are refused just below
                feats = feats.astype(np.float32)
        if check_finite:
            check_feature_values(feats, str(path))
        meta = {}
        if "meta" in h5:
            meta = {k: h5["meta"][k][()] for k in h5["meta"]}
        views = None
        if "views" in h5:
            views = h5["views"][()]
            if views.ndim != 4 or views.shape[0] != n or views.shape[2:] != feats.shape[1:]:
                raise ArtifactError(f"{path}: 'views' has shape {views.shape}, expected [{n}, V, {feats.shape[1]}, "
                                    f"{feats.shape[2]}]")
            if views.dtype == np.float64:
                views = views.astype(np.float32)
            if check_finite and not np.isfinite(views).all():
                raise ArtifactError(f"{path}: 'views' holds NaN or infinite values")
        out = Features(
            path=Path(path),
            feats=feats,
            ids=_read_strings(h5, "ids", n),
            paths=_read_strings(h5, "paths", n),
            backbone=_attr_str(h5, "backbone", "unknown"),
            backbone_sha256=_attr_str(h5, "backbone_sha256"),
            sampling=_attr_str(h5, "sampling", "unknown"),
            meta=meta,
            attrs={k: (v.decode() if isinstance(v, bytes) else v) for k, v in h5.attrs.items()},
            views=views,
        )
    if with_hash:
        out.sha256 = sha256_file(path)
    return out


def write_features(path: str | os.PathLike, feats: np.ndarray, ids: list[str], paths: list[str], *,
                   backbone: str, backbone_sha256: str, sampling: str, meta: dict[str, np.ndarray] | None = None,
                   failures: list[tuple[str, str]] | None = None, prov: dict[str, Any],
                   views: np.ndarray | None = None) -> None:
    """Write a complete feature artifact atomically (extract writes incrementally, then finalises with this layout)."""
    feats = np.asarray(feats)
    if feats.ndim != 3 or len(ids) != feats.shape[0] or len(paths) != feats.shape[0]:
        raise ArtifactError("features: feats must be [N, T, D] with one id and path per video")
    with output_lock(path), atomic_output(path) as tmp, h5py.File(tmp, "w") as h5:
        set_provenance(h5, "features", prov)
        h5.attrs.update({"backbone": backbone, "backbone_sha256": backbone_sha256, "sampling": sampling,
                         "frames": feats.shape[1], "feature_dim": feats.shape[2]})
        h5.create_dataset("feats", data=feats, chunks=(1, *feats.shape[1:]))
        if views is not None and views.shape[1] > 0:
            h5.attrs["views"] = int(views.shape[1])
            h5.create_dataset("views", data=np.asarray(views), chunks=(1, *views.shape[1:]))
        _write_ids_paths(h5, list(ids), list(paths))
        g = h5.create_group("meta")
        for k, v in (meta or {}).items():
            g.create_dataset(k, data=np.asarray(v))
        write_failures(h5, failures or [])


def write_failures(h5: h5py.File, failures: list[tuple[str, str]]) -> None:
    g = h5.require_group("failures")
    for k in ("paths", "reasons"):
        if k in g:
            del g[k]
    ds = g.create_dataset("paths", shape=(len(failures),), dtype=BYTES)
    for i, (p, _) in enumerate(failures):
        ds[i] = encode_path(p)
    g.create_dataset("reasons", data=np.array([r for _, r in failures], dtype=object), dtype=STR)


def read_failures(path: str | os.PathLike) -> list[tuple[str, str]]:
    with open_artifact(path, "features") as h5, reading(path, "features"):
        if "failures" not in h5:
            return []
        g = h5["failures"]
        paths = [decode_path(b) for b in g["paths"][()]]
        reasons = [r for r in g["reasons"].asstr()[()]]
        return list(zip(paths, reasons, strict=True))


# ----------------------------------------------------------------------------------------------------------
# centres
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Centers:
    path: Path | None
    pseudo_labels: np.ndarray  # [N] int64
    centroids: np.ndarray  # [K, p] float32, L2-normalised rows
    pca_mean: np.ndarray  # [D]
    pca_components: np.ndarray  # [p, D]
    hash_centers: dict[int, np.ndarray]  # bits -> [K, bits] int8 in {-1, +1}
    stats: dict[int, dict[str, Any]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    features_sha256: str = ""
    sha256: str = ""
    kmeans_centroids: np.ndarray | None = None  # [K, p] raw k-means centroids (assign new videos); optional

    @property
    def n_clusters(self) -> int:
        return int(self.centroids.shape[0])


def write_centers(path: str | os.PathLike, c: Centers, prov: dict[str, Any]) -> None:
    with output_lock(path), atomic_output(path) as tmp, h5py.File(tmp, "w") as h5:
        set_provenance(h5, "centers", prov)
        h5.attrs["features_sha256"] = c.features_sha256
        h5.create_dataset("pseudo_labels", data=np.asarray(c.pseudo_labels, dtype=np.int64))
        h5.create_dataset("centroids", data=np.asarray(c.centroids, dtype=np.float32))
        g = h5.create_group("pca")
        g.create_dataset("mean", data=np.asarray(c.pca_mean, dtype=np.float32))
        g.create_dataset("components", data=np.asarray(c.pca_components, dtype=np.float32))
        if c.kmeans_centroids is not None:
            h5.create_dataset("kmeans_centroids", data=np.asarray(c.kmeans_centroids, dtype=np.float32))
        hc = h5.create_group("hash_centers")
        for bits, m in sorted(c.hash_centers.items()):
            ds = hc.create_dataset(str(bits), data=np.asarray(m, dtype=np.int8))
            for k, v in c.stats.get(bits, {}).items():
                ds.attrs[k] = v


def read_centers(path: str | os.PathLike) -> Centers:
    with open_artifact(path, "centers", required=("pseudo_labels", "centroids", "hash_centers", "pca")) as h5, \
            reading(path, "centers"):
        labels = h5["pseudo_labels"][()]
        cent = h5["centroids"][()]
        if labels.ndim != 1 or cent.ndim != 2:
            raise ArtifactError(f"{path}: pseudo_labels must be [N] and centroids [K, p]")
        k = cent.shape[0]
        if labels.size and (labels.min() < 0 or labels.max() >= k):
            raise ArtifactError(f"{path}: pseudo_labels out of range for {k} clusters")
        hcs, stats = {}, {}
        for name, ds in h5["hash_centers"].items():
            m = ds[()]
            if m.shape != (k, int(name)) or not np.isin(m, (-1, 1)).all():
                raise ArtifactError(f"{path}: hash_centers/{name} must be [{k}, {name}] with entries +-1")
            hcs[int(name)] = m.astype(np.int8)
            stats[int(name)] = {a: (v.item() if hasattr(v, "item") else v) for a, v in ds.attrs.items()}
        return Centers(
            path=Path(path), pseudo_labels=labels.astype(np.int64), centroids=cent,
            pca_mean=h5["pca/mean"][()], pca_components=h5["pca/components"][()],
            hash_centers=hcs, stats=stats, config=read_json_attr(h5, "config"),
            features_sha256=_attr_str(h5, "features_sha256"), sha256=sha256_file(path),
            kmeans_centroids=h5["kmeans_centroids"][()] if "kmeans_centroids" in h5 else None,
        )


# ----------------------------------------------------------------------------------------------------------
# codes
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Codes:
    path: Path | None
    codes: np.ndarray  # [N, bits/8] uint8, np.packbits order (bit 0 of the code = MSB of byte 0)
    ids: list[str]
    paths: list[str]
    bits: int
    model_sha256: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, np.ndarray] = field(default_factory=dict)  # per-video records (RECORD_FIELDS), each [N]
    descriptors: np.ndarray | None = None  # float16 [N, L] ("soft") or [N, F, L] ("frames"); see descriptors.py
    segments: dict[str, Any] | None = None  # window rows (encode --segment): video_id [N], start [N], end [N] s

    @property
    def n(self) -> int:
        return int(self.codes.shape[0])

    @property
    def descriptor(self) -> str:
        """Kind of the stored descriptors: none, soft or frames."""
        if self.descriptors is None:
            return "none"
        return "soft" if self.descriptors.ndim == 2 else "frames"


def write_codes(path: str | os.PathLike, c: Codes, prov: dict[str, Any], extra_attrs: dict[str, Any] | None = None) -> None:
    if c.codes.dtype != np.uint8 or c.codes.ndim != 2 or c.codes.shape[1] * 8 != c.bits:
        raise ArtifactError(f"codes must be uint8 [N, {c.bits // 8}]")
    with output_lock(path), atomic_output(path) as tmp, h5py.File(tmp, "w") as h5:
        set_provenance(h5, "codes", prov)
        h5.attrs["bits"] = c.bits
        h5.attrs["model_sha256"] = c.model_sha256
        for k, v in (extra_attrs or {}).items():
            h5.attrs[k] = v
        h5.create_dataset("codes", data=c.codes)
        if c.descriptors is not None:
            if c.descriptors.shape[0] != c.n or c.descriptors.ndim not in (2, 3):
                raise ArtifactError(f"descriptors must be [N, L] or [N, F, L] with N = {c.n}")
            h5.attrs["descriptor"] = c.descriptor
            h5.create_dataset("descriptors", data=np.asarray(c.descriptors, dtype=np.float16))
        if c.segments is not None:
            g = h5.create_group("segments")
            g.create_dataset("video_id", data=np.array(list(c.segments["video_id"]), dtype=object), dtype=STR)
            g.create_dataset("start", data=np.asarray(c.segments["start"], np.float64))
            g.create_dataset("end", data=np.asarray(c.segments["end"], np.float64))
        _write_ids_paths(h5, c.ids, c.paths)
        if c.meta:
            write_records(h5, video_records(c.meta, c.n), c.n)


def read_codes(path: str | os.PathLike) -> Codes:
    with open_artifact(path, "codes", required=("codes",)) as h5, reading(path, "codes"):
        codes = h5["codes"][()]
        bits = int(h5.attrs.get("bits", 0))
        if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] * 8 != bits:
            raise ArtifactError(f"{path}: 'codes' has shape {codes.shape} / dtype {codes.dtype}; expected uint8 [N, {bits // 8}]")
        n = codes.shape[0]
        desc = None
        if "descriptors" in h5:
            desc = h5["descriptors"][()]
            if desc.ndim not in (2, 3) or desc.shape[0] != n or desc.dtype.kind != "f":
                raise ArtifactError(f"{path}: 'descriptors' has shape {desc.shape} / dtype {desc.dtype}; expected "
                                    f"float [{n}, L] or [{n}, F, L]")
        segments = None
        if "segments" in h5:
            g = h5["segments"]
            segments = {"video_id": [str(x) for x in g["video_id"].asstr()[()]], "start": g["start"][()],
                        "end": g["end"][()]}
            if any(len(v) != n for v in segments.values()):
                raise ArtifactError(f"{path}: 'segments' does not have one entry per code")
        return Codes(path=Path(path), codes=codes, ids=_read_strings(h5, "ids", n), paths=_read_strings(h5, "paths", n),
                     bits=bits, model_sha256=_attr_str(h5, "model_sha256"),
                     attrs={k: (v.decode() if isinstance(v, bytes) else v) for k, v in h5.attrs.items()},
                     descriptors=desc, segments=segments,
                     meta=read_records(h5, n) if "meta" in h5 else {})


def check_same(what: str, a: Any, b: Any, a_name: str, b_name: str) -> None:
    if a != b:
        raise MismatchError(f"{what} differ: {a_name} has {a}, {b_name} has {b}")
