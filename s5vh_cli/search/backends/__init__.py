"""Index backends by name. Each is one implementation of ``base.IndexBackend``; none special-cases another."""

from __future__ import annotations

from ...errors import InputError
from .base import IndexBackend, IndexParams

__all__ = ["BACKENDS", "IndexBackend", "IndexParams", "get_backend"]

# name -> "module:class", imported on first use so that an optional backend's client library is never
# imported unless that backend is asked for
BACKENDS = {
    "faiss": "s5vh_cli.search.backends.faiss:FaissBackend",
    "milvus": "s5vh_cli.search.backends.milvus:MilvusBackend",
}


def get_backend(name: str) -> type[IndexBackend]:
    if name not in BACKENDS:
        raise InputError(f"unknown index backend {name!r}; choose one of {', '.join(sorted(BACKENDS))}")
    import importlib

    mod, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(mod), cls)
