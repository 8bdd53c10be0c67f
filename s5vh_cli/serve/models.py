"""Request and response models: validation and the OpenAPI document come from these.

Responses are the CLI's ``--json`` documents, made by the same functions (``QueryOutcome.to_json``,
``HammingIndex.info``, ``api.add_summary``, ``SyncReport.as_dict``, ``DedupResult.as_dict``); the models below
describe them for the OpenAPI document and allow extra keys, so a field the API adds later passes through.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class QueryOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    topk: int | None = Field(None, ge=1, description="Results per query [default 20; with radius: all within it].")
    radius: int | None = Field(None, ge=0, description="Every entry within this Hamming distance (inclusive).")
    exclude_self: bool = Field(False, description="Drop results that are the query itself.")


class PathQuery(QueryOptions):
    paths: list[str] = Field(..., min_length=1, max_length=10_000,
                             description="Videos, folders, features or codes files under the server's roots.")


class CodesQuery(QueryOptions):
    codes: list[str] = Field(..., min_length=1, max_length=100_000,
                             description="Packed codes in hex, bit 0 first (the `code` field of query results).")
    ids: list[str] | None = Field(None, description="A name per code, shown as the query's id.")


class FeaturesQuery(QueryOptions):
    features: list[list[list[float]]] = Field(..., min_length=1, max_length=1_000,
                                              description="[videos][frames][dim] backbone features.")
    ids: list[str] | None = Field(None, description="A name per video, shown as the query's id.")


class AddRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    codes: str = Field(..., description="Codes file (from `s5vh encode`) under the server's roots.")
    on_existing: Literal["skip", "replace", "error"] = "skip"


class RemoveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[str] = Field(default_factory=list)
    keys: list[int] = Field(default_factory=list)
    paths: list[str] = Field(default_factory=list, description="Indexed paths (names in the index, not read).")


class SyncRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    folder: str = Field(..., description="Folder of videos under the server's roots.")
    dry_run: bool = False


class _Doc(BaseModel):
    model_config = ConfigDict(extra="allow")


class Hit(_Doc):
    rank: int
    distance: int
    key: int
    id: str
    path: str


class QueryRecord(_Doc):
    query: str
    query_id: str
    query_path: str
    code: str | None
    status: Literal["found", "none"]
    results: list[Hit]


class QueryDocument(_Doc):
    """`s5vh query --json`."""

    index: str
    type: str
    exact: bool
    bits: int
    count: int
    topk: int | None
    radius: int | None
    queries_without_results: int
    timings: dict[str, float]
    queries: list[QueryRecord]


class IndexInfo(_Doc):
    """`s5vh index info --json`."""

    index: str | None
    backend: str
    type: str
    exact: bool
    bits: int
    count: int
    next_key: int
    model_sha256: str
    sources: list[dict[str, Any]]


class AddDocument(IndexInfo):
    """`s5vh index add --json`."""

    added: int
    replaced: int
    skipped: int
    refreshed: int
    added_keys: list[int]


class RemoveDocument(IndexInfo):
    """`s5vh index remove --json`."""

    removed: int
    removed_keys: list[int]


class SyncDocument(_Doc):
    """`s5vh sync --json`."""

    index: str
    folder: str
    dry_run: bool
    count: int
    added: list[str]
    replaced: list[str]
    removed: list[str]
    refreshed: int
    unchanged: int
    failed: list[dict[str, str]]


class DedupDocument(_Doc):
    """`s5vh dedup --json` (without moves: the server never moves files)."""

    index: str
    bits: int
    videos: int
    radius: int
    radius_rule: dict[str, Any]
    groups: int
    duplicates: int
    duplicate_groups: list[dict[str, Any]]


class Thumbnails(_Doc):
    key: int
    id: str
    path: str
    thumbnails: list[str] = Field(..., description="JPEG keyframes, base64.")


class Health(_Doc):
    status: Literal["ok"]
    version: str
    index: str
    count: int
    bits: int
    model_loaded: bool
    clip_queries: bool
    uptime_s: float


class Error(BaseModel):
    error: str
