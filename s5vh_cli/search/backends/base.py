"""The one interface every index backend implements.

A backend stores packed binary codes under int64 keys and answers Hamming k-NN and radius queries. It does
not know about ids, paths, provenance or the ranking rule: ``search/index.py`` keeps the entry table and
applies the rule "distance, then key" once, above every backend, so two backends holding the same codes
return the same ranking (exact types) whatever order their engines produce.

Persistence: a backend turns itself into the bytes of the local index file (``to_bytes``) and back
(``from_bytes``). For faiss those bytes are the index itself, readable by ``faiss.read_index_binary``; a
backend whose data lives in a server writes a small descriptor that names where the data is.

The metadata is the record of what the index holds. A backend whose contents are the hashed local file cannot
drift from it (only damage shows, through ``check_entries``); a server's contents can (a writer killed between
changing the server and committing the metadata, a server that lost data), so such a backend reports the
difference (``drift``) and brings itself back in line from the metadata's copy of every code (``repair``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np

from ...progress import Progress


@dataclass
class IndexParams:
    """Search-time knobs stored with the index and overridable per query (None = the stored/default value)."""

    nprobe: int | None = None  # inverted-list types: lists visited per query
    ef_search: int | None = None  # HNSW: candidate list size during search
    nflip: int | None = None  # hash tables: bits flipped per table when probing

    def set_values(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def merged(self, override: IndexParams | None) -> IndexParams:
        """These params with every value that ``override`` sets replaced."""
        if override is None:
            return IndexParams(**vars(self))
        return IndexParams(**{f.name: (getattr(override, f.name) if getattr(override, f.name) is not None
                                       else getattr(self, f.name)) for f in fields(self)})


Candidates = tuple[np.ndarray, np.ndarray]  # (distances int, keys int64) of one query, in any order


@dataclass
class Entries:
    """Rows of the entry table handed to a backend: codes under keys, with each entry's string id and path
    (which never change under a key). A backend may keep the ids and paths beside the codes; faiss does not."""

    keys: np.ndarray  # int64 [N]
    codes: np.ndarray  # uint8 [N, bits/8]
    ids: Sequence[str]
    paths: Sequence[str]

    @property
    def n(self) -> int:
        return int(self.keys.shape[0])

    def take(self, rows: np.ndarray) -> Entries:
        rows = np.asarray(rows, dtype=np.int64)
        return Entries(self.keys[rows], np.ascontiguousarray(self.codes[rows]), [self.ids[i] for i in rows.tolist()],
                       [self.paths[i] for i in rows.tolist()])

    def of_keys(self, keys: np.ndarray) -> Entries:
        """The rows whose keys are in ``keys`` (the table's keys are sorted)."""
        return self.take(np.flatnonzero(np.isin(self.keys, keys)))


@dataclass
class Drift:
    """How a server's contents differ from the metadata's table."""

    extra: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # held, not listed
    missing: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # listed, not held
    unlisted_above: int = 0  # held keys at or above next_key (a writer killed before its commit; or one at work)
    reason: str = ""  # e.g. "collection missing"

    def __bool__(self) -> bool:
        return bool(self.extra.size or self.missing.size or self.unlisted_above or self.reason)

    def as_dict(self) -> dict[str, Any]:
        return {"extra": int(self.extra.size) + self.unlisted_above, "missing": int(self.missing.size),
                **({"reason": self.reason} if self.reason else {})}


class IndexBackend(ABC):
    """Codes under int64 keys with Hamming search. Subclasses register a ``name`` in ``backends.BACKENDS``."""

    name: ClassVar[str]
    default_type: ClassVar[str]
    # most candidates one search returns per query (None: no limit); the ranking rule works within it
    max_k: ClassVar[int | None] = None

    def __init__(self, index_type: str, bits: int, params: IndexParams) -> None:
        self.index_type = index_type
        self.bits = bits
        self.params = params

    # ---- construction and persistence -----------------------------------------------------------------
    @classmethod
    @abstractmethod
    def check_type(cls, index_type: str, bits: int, n: int | None = None) -> None:
        """Raise InputError when ``index_type`` is not a valid type for ``bits``-bit codes (and ``n`` codes)."""

    @classmethod
    @abstractmethod
    def build(cls, index_type: str, bits: int, entries: Entries, params: IndexParams, options: dict[str, Any],
              provenance: dict[str, Any], previous: bytes | None, progress: Progress) -> IndexBackend:
        """A new index of ``index_type`` over ``entries`` (codes uint8 [N, bits/8] under keys).

        ``options`` are the backend's settings (e.g. a server address); ``provenance`` describes the codes
        (bits, model, backbone...) for backends that label what they store; ``previous`` is the local index file
        this build replaces, if any, so that a server backend may reuse what it names."""

    @classmethod
    @abstractmethod
    def from_bytes(cls, raw: bytes, index_type: str, bits: int, params: IndexParams, options: dict[str, Any],
                   where: str) -> IndexBackend:
        """Reopen from the bytes ``to_bytes`` wrote; ``where`` names the file in error messages."""

    @abstractmethod
    def to_bytes(self) -> bytes:
        """The content of the local index file."""

    def options(self) -> dict[str, Any]:
        """Backend settings to keep in the index metadata (e.g. a server address); JSON-serialisable."""
        return {}

    # ---- contents ---------------------------------------------------------------------------------------
    @property
    @abstractmethod
    def ntotal(self) -> int:
        """Number of codes held."""

    @property
    @abstractmethod
    def exact(self) -> bool:
        """True when search returns the true nearest codes (ties aside), so the ranking rule can be exact."""

    @abstractmethod
    def add(self, entries: Entries, progress: Progress) -> None:
        """Insert ``entries`` under their new keys."""

    @abstractmethod
    def remove(self, keys: np.ndarray, kept: Entries, progress: Progress) -> None:
        """Delete ``keys``. ``kept`` is what remains, for types that must be rebuilt."""

    def check_entries(self, keys: np.ndarray, codes: np.ndarray) -> str | None:
        """Why the stored codes are not ``codes`` under ``keys`` (the metadata's table, in key order), or None.
        Cheap checks only: this runs on every open."""
        return None if self.ntotal == keys.shape[0] else f"{self.ntotal} codes stored, {keys.shape[0]} listed"

    def drift(self, table: Entries, next_key: int, full: bool = False) -> Drift | None:
        """How the stored contents differ from ``table`` (None when they agree), for backends whose contents can
        change apart from the metadata. Cheap unless ``full`` (which also compares every stored code)."""
        return None

    def repair(self, drift: Drift, table: Entries, next_key: int, progress: Progress) -> None:
        """Make the stored contents ``table`` again (after ``drift`` reported ``drift``)."""
        raise NotImplementedError(f"the {self.name} backend cannot drift from its metadata")

    def close(self) -> None:  # noqa: B027 - optional hook; local backends hold nothing to release
        """Release connections (a no-op for local backends)."""

    # ---- search -----------------------------------------------------------------------------------------
    @abstractmethod
    def search(self, queries: np.ndarray, k: int, key_below: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``k`` (at most ``max_k``) nearest candidates per query, nearest first: distances and keys
        [nq, k], keys -1 where fewer were found. With ``key_below`` only keys below it are candidates."""

    @abstractmethod
    def range_search(self, queries: np.ndarray, radius: int, key_below: int | None = None) -> list[Candidates]:
        """Every candidate within Hamming distance ``radius`` (inclusive) per query, in any order; with
        ``key_below`` only keys below it."""

    # ---- parameters ---------------------------------------------------------------------------------------
    @abstractmethod
    def check_params(self, params: IndexParams) -> None:
        """Raise InputError for a search parameter this index type cannot honour (checked before searching)."""

    def apply_params(self, params: IndexParams) -> None:
        """Make ``params`` the search settings (after ``check_params``)."""
        self.params = params

    def info(self) -> dict[str, Any]:
        return {"backend": self.name}
