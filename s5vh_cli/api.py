"""The s5vh Python API: open an index; query it by clips, features or codes; add, remove, sync; find duplicates.

The command line (`s5vh index|query|sync|dedup`) and the server call these functions and nothing below them,
so a script gets exactly what the commands do. Every function raises ``s5vh_cli.errors.S5VHError`` (one-line
message) on bad input and never prints. Long operations take an optional ``progress`` object
(``s5vh_cli.progress.Progress``). Examples: docs/api.md.

    from s5vh_cli import api

    idx = api.open_index("index.bin")
    hits = api.query("index.bin", ["clip.mp4"], topk=10).to_records()[0]["results"]
    report = api.sync("videos/", "index.bin")          # extract + encode what is new or changed
    groups = api.dedup("index.bin")                     # duplicate groups with a suggested keeper
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import artifacts
from .artifacts import Codes
from .progress import Progress
from .search.dedup import DedupResult, find_duplicates
from .search.index import (
    AddReport,
    HammingIndex,
    IndexParams,
    add_codes,
    build_index,
    check_recall,
    meta_path,
    migrate_index,
    open_index,
    remove,
    verify_index,
)
from .search.moves import MoveReport, move_duplicates, undo_moves
from .search.query import QueryOutcome, Searcher, query
from .search.sync import SyncPlan, SyncReport, plan_sync, sync

__all__ = [
    "AddReport", "Codes", "DedupResult", "HammingIndex", "IndexParams", "MoveReport", "QueryOutcome", "Searcher",
    "SyncPlan", "SyncReport", "add", "add_summary", "build", "check_recall", "dedup", "meta_path", "migrate",
    "move_duplicates", "open_index", "plan_sync", "query", "remove", "remove_summary", "sync", "undo_moves",
    "verify_index",
]


def _codes(codes: Codes | str | os.PathLike) -> Codes:
    return codes if isinstance(codes, Codes) else artifacts.read_codes(codes)


def build(codes: Codes | str | os.PathLike | Sequence[Codes | str | os.PathLike], out: str | os.PathLike,
          index_type: str | None = None, params: IndexParams | None = None, backend: str = "faiss",
          backend_options: dict[str, Any] | None = None, progress: Progress | None = None) -> HammingIndex:
    """Build an index at ``out`` from one or more codes files (or ``Codes``) of one model.

    ``backend="milvus"`` keeps the codes in a Milvus collection: ``backend_options={"uri": ..., "collection":
    ..., "nlist": ...}`` (``nlist`` for ``index_type="BIN_IVF_FLAT"``). ``index_type`` defaults to the
    backend's exact type."""
    parts = [codes] if isinstance(codes, (Codes, str, os.PathLike)) else list(codes)
    if not parts:
        from .errors import InputError

        raise InputError("index: no codes given")
    return build_index([_codes(c) for c in parts], out, index_type, params=params, progress=progress,
                       backend=backend, backend_options=backend_options)


def add(index: str | os.PathLike, codes: Codes | str | os.PathLike, on_existing: str = "skip",
        progress: Progress | None = None) -> tuple[HammingIndex, AddReport]:
    """Add codes to an index once per video (see ``search.index.add_codes`` for ``on_existing``)."""
    return add_codes(index, _codes(codes), on_existing=on_existing, progress=progress)  # type: ignore[arg-type]


def migrate(index: str | os.PathLike, out: str | os.PathLike, backend: str, index_type: str | None = None,
            params: IndexParams | None = None, backend_options: dict[str, Any] | None = None,
            progress: Progress | None = None) -> HammingIndex:
    """Copy an index into ``backend`` at ``out`` under the same keys (see ``search.index.migrate_index``)."""
    return migrate_index(index, out, backend, index_type, params=params, backend_options=backend_options,
                         progress=progress)


def dedup(index: str | os.PathLike | HammingIndex, radius: int | None = None,
          progress: Progress | None = None) -> DedupResult:
    """Duplicate groups of an index at ``radius`` bits (chosen from the library's distances when None)."""
    h = index if isinstance(index, HammingIndex) else open_index(Path(index))
    return find_duplicates(h, radius=radius, progress=progress)


def add_summary(h: HammingIndex, report: AddReport) -> dict[str, Any]:
    """The JSON document of an add (`s5vh index add --json`, the server's add): the index, then what changed."""
    return h.info() | report.as_dict()


def remove_summary(h: HammingIndex, gone: Any) -> dict[str, Any]:
    """The JSON document of a removal (`s5vh index remove --json`, the server's remove)."""
    return h.info() | {"removed": int(len(gone)), "removed_keys": [int(k) for k in gone]}


# re-exported as they are: meta_path, open_index, remove, query, Searcher, sync, plan_sync, check_recall,
# verify_index,
# move_duplicates, undo_moves
