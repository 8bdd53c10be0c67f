"""Move the non-keepers of duplicate groups aside, and undo it. Nothing is ever deleted or overwritten.

The manifest is a JSON-lines journal written as the moves happen: a header, then one line per move, flushed
and synced before that file moves, so a run interrupted at any point can still be undone exactly. Files move with a rename where the folders share a file system; elsewhere the file is copied,
synced, its size checked, and only then is the original unlinked.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import artifacts
from ..errors import InputError
from .dedup import DedupResult

MANIFEST_FORMAT = "s5vh-dedup-moves 1"


@dataclass
class MoveReport:
    manifest: str
    moved: list[tuple[str, str]] = field(default_factory=list)  # (from, to)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)

    def as_dict(self) -> dict[str, Any]:
        d = artifacts.display_path
        return {"manifest": d(self.manifest), "moved": [{"from": d(a), "to": d(b)} for a, b in self.moved],
                "skipped": [{"path": d(p), "reason": r} for p, r in self.skipped]}


def _free_name(dest: Path) -> Path:
    """``dest``, or ``name (1).ext``, ``name (2).ext``... : the first that does not exist."""
    if not os.path.lexists(dest):
        return dest
    stem, suffix = dest.stem, dest.suffix
    for i in range(1, 1_000_000):
        cand = dest.with_name(f"{stem} ({i}){suffix}")
        if not os.path.lexists(cand):
            return cand
    raise InputError(f"{dest}: no free name to move to")


def _move_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # never replaces an existing dst; same file system only
        os.unlink(src)
        return
    except OSError as e:
        if e.errno not in (18, 1, 95, 38):  # EXDEV, EPERM, EOPNOTSUPP, ENOSYS: copy instead
            raise
    size = src.stat().st_size
    tmp = dst.with_name(f".{dst.name}.s5vh-part")
    try:
        with open(src, "rb") as fi, open(tmp, "xb") as fo:
            shutil.copyfileobj(fi, fo, 1 << 22)
            fo.flush()
            os.fsync(fo.fileno())
        shutil.copystat(src, tmp)
        if tmp.stat().st_size != size:
            raise OSError(f"copy of {src} is {tmp.stat().st_size} bytes, expected {size}")
        os.link(tmp, dst)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    os.unlink(src)


def _common_root(paths: list[str]) -> str:
    try:
        return os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    except ValueError:
        return os.sep


def move_duplicates(result: DedupResult, to: str | os.PathLike, manifest: str | os.PathLike | None = None,
                    root: str | os.PathLike | None = None) -> MoveReport:
    """Move every non-keeper file into ``to`` (keeping its path below ``root``, by default the deepest folder
    holding them all) and record each move in ``manifest`` (default: ``to/s5vh-moves-<time>.jsonl``)."""
    to = Path(to)
    victims = [m for g in result.groups for m in g.members[1:] if m.path]
    if not victims:
        raise InputError("no duplicates to move")
    to.mkdir(parents=True, exist_ok=True)
    to_real = os.path.realpath(to)
    base = os.path.realpath(root) if root else _common_root([m.path for m in victims])
    mpath = Path(manifest) if manifest else to / f"s5vh-moves-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    if os.path.lexists(mpath):
        raise InputError(f"{mpath}: a manifest of that name exists already; choose another --manifest")
    report = MoveReport(manifest=str(mpath))
    keepers = {os.path.realpath(g.keeper.path) for g in result.groups if g.keeper.path}
    with open(mpath, "x", encoding="utf-8") as mf:
        mf.write(json.dumps({"format": MANIFEST_FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                             "index": result.index, "radius": result.radius, "to": to_real}) + "\n")
        mf.flush()
        os.fsync(mf.fileno())
        for m in victims:
            src = Path(m.path)
            real = os.path.realpath(src)
            if real in keepers:
                report.skipped.append((m.path, "it is the keeper of another group"))
                continue
            if not src.is_file():
                report.skipped.append((m.path, "no such file"))
                continue
            if real == to_real or real.startswith(to_real.rstrip(os.sep) + os.sep):
                report.skipped.append((m.path, "already inside the destination folder"))
                continue
            rel = os.path.relpath(real, base)
            if rel.startswith(".."):
                rel = os.path.basename(real)
            dst = _free_name(Path(to_real) / rel)
            # the intent is on disk before the file moves, so an interruption at any point can be undone
            mf.write(json.dumps({"from": os.fsencode(real).hex(), "to": os.fsencode(str(dst)).hex(),
                                 "key": m.key, "size": src.stat().st_size}) + "\n")
            mf.flush()
            os.fsync(mf.fileno())
            try:
                _move_file(src, dst)
            except OSError as e:
                report.skipped.append((m.path, f"cannot move ({e.strerror or e})"))
                continue
            report.moved.append((real, str(dst)))
    return report


def undo_moves(manifest: str | os.PathLike) -> MoveReport:
    """Move every file a manifest records back where it was (never over a file that is there now)."""
    mpath = Path(manifest)
    try:
        lines = mpath.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise InputError(f"{mpath}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise InputError(f"{mpath}: not a manifest written by `s5vh dedup --move-to`") from None
    try:
        head = json.loads(lines[0]) if lines else None
    except ValueError:
        head = None
    if not isinstance(head, dict) or head.get("format") != MANIFEST_FORMAT:
        raise InputError(f"{mpath}: not a manifest written by `s5vh dedup --move-to`")
    report = MoveReport(manifest=str(mpath))
    for n, line in enumerate(lines[1:], start=2):
        try:
            rec = json.loads(line)
            src = Path(os.fsdecode(bytes.fromhex(rec["to"])))
            dst = Path(os.fsdecode(bytes.fromhex(rec["from"])))
        except (ValueError, KeyError, TypeError):
            if n == len(lines):
                continue  # a torn last line: its intent never reached the disk whole, so that move never began
            raise InputError(f"{mpath}: line {n} is damaged; nothing after it was undone") from None
        if not src.exists():
            why = "never moved (interrupted or failed)" if dst.exists() else "not there any more"
            report.skipped.append((str(src), why))
            continue
        if os.path.lexists(dst):
            report.skipped.append((str(dst), "a file is there now; left where it is"))
            continue
        try:
            _move_file(src, dst)
        except OSError as e:
            report.skipped.append((str(src), f"cannot move back ({e.strerror or e})"))
            continue
        report.moved.append((str(src), str(dst)))
    with contextlib.suppress(OSError):
        os.replace(mpath, mpath.with_name(mpath.name + ".undone"))
        report.manifest = str(mpath.with_name(mpath.name + ".undone"))
    return report
