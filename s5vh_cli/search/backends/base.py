"""The one interface every index backend implements.

A backend stores packed binary codes under int64 keys and answers Hamming k-NN and radius queries. It does
not know about ids, paths, provenance or the ranking rule: ``search/index.py`` keeps the entry table and
applies the rule "distance, then key" once, above every backend, so two backends holding the same codes
return the same ranking (exact types) whatever order their engines produce.

Persistence: a backend turns itself into the bytes of the local index file (``to_bytes``) and back
(``from_bytes``). For faiss those bytes are the index itself, readable by ``faiss.read_index_binary``; a
backend whose data lives in a server writes a small descriptor that names where the data is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
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


class IndexBackend(ABC):
    """Codes under int64 keys with Hamming search. Subclasses register a ``name`` in ``backends.BACKENDS``."""

    name: ClassVar[str]

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
    def build(cls, index_type: str, bits: int, codes: np.ndarray, keys: np.ndarray, params: IndexParams,
              options: dict[str, Any], progress: Progress) -> IndexBackend:
        """A new index of ``index_type`` over ``codes`` (uint8 [N, bits/8]) under ``keys``."""

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
    def add(self, codes: np.ndarray, keys: np.ndarray, progress: Progress) -> None:
        """Insert ``codes`` under new ``keys``."""

    @abstractmethod
    def remove(self, keys: np.ndarray, kept_codes: np.ndarray, kept_keys: np.ndarray, progress: Progress) -> None:
        """Delete ``keys``. ``kept_*`` are the codes and keys that remain, for types that must be rebuilt."""

    def check_entries(self, keys: np.ndarray, codes: np.ndarray) -> str | None:
        """Why the stored codes are not ``codes`` under ``keys`` (the metadata's table, in key order), or None.
        Cheap checks only: this runs on every open."""
        return None if self.ntotal == keys.shape[0] else f"{self.ntotal} codes stored, {keys.shape[0]} listed"

    # ---- search -----------------------------------------------------------------------------------------
    @abstractmethod
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``k`` candidates per query: distances and keys [nq, k], keys -1 where fewer were found."""

    @abstractmethod
    def range_search(self, queries: np.ndarray, radius: int) -> list[Candidates]:
        """Every candidate within Hamming distance ``radius`` (inclusive) per query, in any order."""

    # ---- parameters ---------------------------------------------------------------------------------------
    @abstractmethod
    def check_params(self, params: IndexParams) -> None:
        """Raise InputError for a search parameter this index type cannot honour (checked before searching)."""

    def apply_params(self, params: IndexParams) -> None:
        """Make ``params`` the search settings (after ``check_params``)."""
        self.params = params

    def info(self) -> dict[str, Any]:
        return {"backend": self.name}
