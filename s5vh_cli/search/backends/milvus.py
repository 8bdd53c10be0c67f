"""Milvus: the codes live in a collection on a Milvus server, for libraries that outgrow one machine.

    pip install 's5vh[milvus]'         # pymilvus, imported only when this backend is used
    s5vh index codes.h5 -o index.bin --backend milvus --uri http://127.0.0.1:19530 --collection NAME
    s5vh index codes.h5 -o index.bin --backend milvus ... --type BIN_IVF_FLAT --nlist 1024 --nprobe 16

Types (metric HAMMING): ``BIN_FLAT`` exact; ``BIN_IVF_FLAT`` inverted lists (``nlist`` at build, ``nprobe`` per
query, default ``min(8, nlist)``), trained by Milvus per sealed segment of at least 1024 rows (smaller segments,
and rows added after the build until Milvus seals their segment, are searched exactly).

The collection has one row per entry: ``key`` (INT64 primary key: the index's key), ``code`` (BINARY_VECTOR,
dim = bits), ``id`` and ``path`` (VARCHAR; path bytes that are not UTF-8 are stored with backslash escapes,
the metadata keeps them exactly). Its description is a JSON object naming s5vh, a uid, the type and the codes'
provenance (bits, model sha256, backbone, sampling, frames). Counts and listings read at consistency level
Strong, searches at Bounded after a Strong count (see ``_search``), so a search sees every committed write.

The local index file is a small JSON descriptor (uri, collection, uid, type, nlist, bits, provenance); like any
index file its sha256 is in the metadata. ``S5VH_MILVUS_URI`` overrides the uri when the server moved;
``S5VH_MILVUS_TOKEN`` gives credentials (never written to a file).

Consistency with the metadata (see ``search/index.py``): searches only consider keys below the metadata's
``next_key``; ``drift`` compares the collection with the metadata's table (two counts; the keys themselves when
a count differs) and ``repair`` deletes what a killed writer added and re-inserts what is missing.

Limits of Milvus 2.3 that become one-line errors or are worked within: at most 16384 results per query (top-k;
the ranking rule completes ties within it, radius queries split the key range), 16384 queries per request and
64 MB messages (requests are split), nlist 1..65536, nprobe 1..nlist.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from ...errors import ArtifactError, BackendError, InputError
from ...progress import Progress
from .base import Candidates, Drift, Entries, IndexBackend, IndexParams

TYPES = ("BIN_FLAT", "BIN_IVF_FLAT")
MAX_K = 16384  # Milvus 2.3: top-k and nq per request, and offset + limit of a query
MAX_NQ = 16384
MAX_HITS = 1 << 21  # queries x limit per search request: about 14 MB of results, under the 64 MB message cap
RANGE_NQ = 64  # queries per range-search request (each may return up to MAX_K hits)
INSERT_BYTES = 8 << 20  # rows per insert request, by size
DELETE_IDS = 4096  # keys per delete request (an `in` list)
KEY_WINDOW = 1 << 16  # keys per listing query (a key range holds at most that many rows)
NLIST_MAX = 65536
DEFAULT_NPROBE = 8
MIN_INDEXED_ROWS = 1024  # Milvus's queryNode.segment.minSegmentNumRowsToEnableIndex: smaller segments stay raw
HANDOFF_WAIT_S = 120.0
VARCHAR_MAX = 65535
CONNECT_TIMEOUT_S = 15.0
RPC_TIMEOUT_S = 300.0
DESCRIPTOR_VERSION = 1
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
_OPTIONS = ("uri", "collection", "nlist", "replace_collection")


def _pymilvus() -> Any:
    try:
        import pymilvus
    except ImportError:
        raise BackendError("the milvus index backend needs pymilvus: pip install 's5vh[milvus]'") from None
    # pymilvus logs every failed call to the console; the core never prints, its errors come back as exceptions
    logging.getLogger("pymilvus").setLevel(logging.CRITICAL + 1)
    return pymilvus


def _message(e: BaseException) -> str:
    """One line from a pymilvus or gRPC exception."""
    msg = getattr(e, "message", None)
    if not msg and callable(getattr(e, "details", None)):
        try:
            msg = e.details()
        except Exception:  # noqa: BLE001 - a gRPC error without details
            msg = None
    msg = str(msg or e or type(e).__name__)
    msg = " ".join(msg.split())
    return msg if len(msg) <= 300 else msg[:297] + "..."


def check_uri(uri: Any) -> str:
    if not isinstance(uri, str) or not uri:
        raise InputError("the milvus backend needs --uri, the server's address (e.g. http://127.0.0.1:19530)")
    if not re.match(r"^(https?|tcp|grpcs?)://[^\s/]+", uri):
        raise InputError(f"--uri {uri!r}: expected a Milvus server address such as http://127.0.0.1:19530 "
                         "(Milvus Lite files are not supported: they refuse or limit binary vectors)")
    return uri


def check_collection(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise InputError("the milvus backend needs --collection, the collection to hold the codes")
    if not _NAME_RE.match(name):
        raise InputError(f"--collection {name!r}: Milvus names are letters, digits and underscores, not starting "
                         "with a digit, at most 255 characters")
    return name


def _connect(uri: str, where: str | None = None) -> Any:
    pm = _pymilvus()
    try:
        return pm.MilvusClient(uri=uri, token=os.environ.get("S5VH_MILVUS_TOKEN", ""), timeout=CONNECT_TIMEOUT_S)
    except Exception as e:  # noqa: BLE001 - any failure to connect is one line
        raise BackendError(f"{where + ': ' if where else ''}cannot reach Milvus at {uri} ({_message(e)})") from None


def _text(s: str, what: str) -> str:
    """A str Milvus accepts as VARCHAR: valid UTF-8 (undecodable bytes escaped), at most 65535 bytes."""
    raw = s.encode("utf-8", "surrogateescape")
    if len(raw) > VARCHAR_MAX:
        raise InputError(f"{what} {s[:60]!r}... is longer than the {VARCHAR_MAX} bytes Milvus stores")
    try:
        raw.decode("utf-8")
        return s
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace")


def _json_safe(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v if isinstance(v, (str, int, float, bool)) or v is None else str(v)


def parse_descriptor(raw: bytes | None) -> dict[str, Any] | None:
    """The descriptor in a local index file, or None when the bytes are not one."""
    if not raw or not raw.lstrip().startswith(b"{"):
        return None
    try:
        d = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(d, dict) or d.get("s5vh_milvus_index") != DESCRIPTOR_VERSION:
        return None
    return d


def _key_column(rows: Any) -> list[int]:
    """The keys of a query result. Iterating a pymilvus result decodes every lazy column (the codes) row by
    row; primitive columns are already in the list's own items, read without that."""
    items = list.__iter__(rows) if isinstance(rows, list) else iter(rows)
    try:
        return [int(r["key"]) for r in items]
    except (KeyError, TypeError):
        return [int(r["key"]) for r in rows]


def _code_column(rows: Any, width: int) -> np.ndarray:
    """The binary codes of a query result, one uint8 row per result row.

    pymilvus decodes a vector per row on access (about 0.1 ms each, seconds for a large index); the response's
    binary-vector column is one contiguous buffer in row order, read directly when it is there."""
    for fd in getattr(rows, "_lazy_field_data", None) or ():
        raw = getattr(getattr(fd, "vectors", None), "binary_vector", b"")
        if getattr(fd, "field_name", "") == "code" and len(raw) == len(rows) * width:
            return np.frombuffer(raw, dtype=np.uint8).reshape(-1, width)
    out = [r["code"] for r in rows]
    return np.frombuffer(b"".join(bytes(c[0] if isinstance(c, list) else c) for c in out),
                         dtype=np.uint8).reshape(-1, width)


class MilvusBackend(IndexBackend):
    name = "milvus"
    default_type = "BIN_FLAT"
    max_k = MAX_K

    def __init__(self, index_type: str, bits: int, params: IndexParams, desc: dict[str, Any], client: Any,
                 uri: str) -> None:
        super().__init__(index_type, bits, params)
        self.desc = desc
        self.uri = uri
        self.collection: str = desc["collection"]
        self.nlist: int | None = desc.get("nlist")
        self.client = client
        self._exists = True
        self._bound = 0  # one above every key this index may hold (the metadata's next_key)
        self._count = 0  # rows held below _bound
        self.columns = True  # insert column-wise through pymilvus's ORM while it has one (see _column_writer)
        self._orm_alias: str | None = None

    # ---- plumbing ---------------------------------------------------------------------------------------
    def _where(self) -> str:
        return f"milvus {self.uri} collection {self.collection}"

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", RPC_TIMEOUT_S)
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - pymilvus and grpc raise many types; each becomes one line
            msg = _message(e)
            if re.search(r"\b(topk|nq|nprobe|limit)\b.*(invalid|range)", msg, re.IGNORECASE):
                raise InputError(f"{self._where()}: {what}: {msg}") from None
            raise BackendError(f"{self._where()}: {what} failed: {msg}") from None

    def _count_rows(self, expr: str, strong: bool = True) -> int:
        """Rows matching ``expr``. Strong waits for the next time tick (about 200 ms) so that every write
        acknowledged before the call is counted; later reads in the same sequence need not wait again."""
        res = self._call("count", self.client.query, self.collection, filter=expr, output_fields=["count(*)"],
                         consistency_level="Strong" if strong else "Bounded")
        return int(res[0]["count(*)"]) if res else 0

    def _refresh_count(self) -> None:
        self._count = self._count_rows(f"key < {self._bound}") if self._exists else 0

    def _search_params(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        p: dict[str, Any] = dict(extra or {})
        if self.index_type == "BIN_IVF_FLAT":
            p["nprobe"] = int(self.params.nprobe or min(DEFAULT_NPROBE, self.nlist or 1))
        return {"metric_type": "HAMMING", "params": p}

    # ---- construction and persistence -----------------------------------------------------------------
    @classmethod
    def check_type(cls, index_type: str, bits: int, n: int | None = None) -> None:
        if index_type not in TYPES:
            raise InputError(f"unknown milvus index type {index_type!r}; use BIN_FLAT (exact) or BIN_IVF_FLAT "
                             "(with --nlist)")
        if bits % 8 or not 8 <= bits <= 32768:
            raise InputError(f"milvus binary vectors need a multiple of 8 bits up to 32768, got {bits}")

    @classmethod
    def _check_options(cls, index_type: str, options: dict[str, Any], n: int) -> tuple[str, str, int | None]:
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise InputError(f"the milvus backend does not take {', '.join(unknown)}")
        uri, name = check_uri(options.get("uri")), check_collection(options.get("collection"))
        nlist = options.get("nlist")
        if index_type == "BIN_IVF_FLAT":
            if nlist is None:
                raise InputError("BIN_IVF_FLAT needs --nlist, the number of inverted lists (about sqrt(N))")
            if isinstance(nlist, bool) or not isinstance(nlist, (int, np.integer)) or not 1 <= nlist <= NLIST_MAX:
                raise InputError(f"--nlist must be between 1 and {NLIST_MAX}, got {nlist}")
            if n < nlist:
                raise InputError(f"BIN_IVF_FLAT with --nlist {nlist} needs at least {nlist} codes to train, got {n}; "
                                 "use a smaller nlist (about sqrt(N)) or BIN_FLAT")
            return uri, name, int(nlist)
        if nlist is not None:
            raise InputError(f"--nlist applies to BIN_IVF_FLAT, not {index_type}")
        return uri, name, None

    @classmethod
    def build(cls, index_type: str, bits: int, entries: Entries, params: IndexParams, options: dict[str, Any],
              provenance: dict[str, Any], previous: bytes | None, progress: Progress) -> MilvusBackend:
        cls.check_type(index_type, bits)
        uri, name, nlist = cls._check_options(index_type, options, entries.n)
        desc = {"s5vh_milvus_index": DESCRIPTOR_VERSION, "uri": uri, "collection": name, "uid": uuid.uuid4().hex,
                "type": index_type, "nlist": nlist, "bits": bits,
                "provenance": {k: _json_safe(v) for k, v in sorted(provenance.items())}}
        if index_type == "BIN_IVF_FLAT" and params.nprobe is None:
            params = params.merged(IndexParams(nprobe=min(DEFAULT_NPROBE, nlist or 1)))
        b = cls(index_type, bits, params, desc, _connect(uri), uri)
        b.check_params(params)
        b.apply_params(params)
        b._claim(previous, bool(options.get("replace_collection")), progress)
        b._create()
        b._bound = int(entries.keys.max()) + 1 if entries.n else 0
        b._insert(entries, progress, "milvus insert")
        b._seal(entries.n, progress)
        b._refresh_count()
        if b._count != entries.n:
            raise BackendError(f"{b._where()}: holds {b._count} rows after inserting {entries.n}")
        return b

    def _claim(self, previous: bytes | None, replace: bool, progress: Progress) -> None:
        """Make room for a new collection: drop one that this build replaces, refuse anything else."""
        c = self.client
        if not self._call("check collection", c.has_collection, self.collection):
            return
        theirs = self._label()
        if theirs is None:
            raise InputError(f"{self._where()}: exists and was not made by s5vh; choose another --collection")
        prev = parse_descriptor(previous)
        rebuilding = prev is not None and prev.get("collection") == self.collection and prev.get("uid") == theirs.get("uid")
        if not (rebuilding or replace):
            raise InputError(f"{self._where()}: already holds another s5vh index (uid {str(theirs.get('uid'))[:12]}); "
                             "choose another --collection, build over that index's own file, or add "
                             "--replace-collection")
        progress.log(f"dropping the old {self.collection} collection")
        self._call("drop collection", c.drop_collection, self.collection)

    def _label(self) -> dict[str, Any] | None:
        """The s5vh description of the collection (None when it is not an s5vh collection)."""
        info = self._call("describe collection", self.client.describe_collection, self.collection)
        try:
            d = json.loads(info.get("description") or "")
        except ValueError:
            return None
        if not isinstance(d, dict) or d.get("s5vh") != "index":
            return None
        d["_fields"] = {f["name"]: f for f in info.get("fields", [])}
        return d

    def _create(self) -> None:
        pm = _pymilvus()
        label = {"s5vh": "index", "uid": self.desc["uid"], "type": self.index_type, "nlist": self.nlist,
                 **self.desc["provenance"]}
        schema = pm.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                               description=json.dumps(label, sort_keys=True))
        schema.add_field("key", pm.DataType.INT64, is_primary=True)
        schema.add_field("code", pm.DataType.BINARY_VECTOR, dim=self.bits)
        schema.add_field("id", pm.DataType.VARCHAR, max_length=VARCHAR_MAX)
        schema.add_field("path", pm.DataType.VARCHAR, max_length=VARCHAR_MAX)
        ip = self.client.prepare_index_params()
        ip.add_index(field_name="code", index_name="code", index_type=self.index_type, metric_type="HAMMING",
                     params={"nlist": self.nlist} if self.nlist else {})
        # created with its index and loaded, so it answers searches from the first insert on
        self._call("create collection", self.client.create_collection, self.collection, schema=schema,
                   index_params=ip, consistency_level="Strong")
        self._exists = True

    def _insert(self, entries: Entries, progress: Progress, task: str, upsert: bool = False) -> None:
        n = entries.n
        if n == 0:
            return
        writer = self._column_writer(upsert)
        op = self.client.upsert if upsert else self.client.insert
        progress.start(task, total=n)
        try:
            codes = np.ascontiguousarray(entries.codes, dtype=np.uint8)
            start, size = 0, 0
            ids: list[str] = []
            paths: list[str] = []
            for i in range(n):
                ids.append(_text(entries.ids[i], "id"))
                paths.append(_text(entries.paths[i], "path"))
                size += codes.shape[1] + len(ids[-1]) + len(paths[-1]) + 32
                if size < INSERT_BYTES and i < n - 1:
                    continue
                keys = [int(k) for k in entries.keys[start:i + 1]]
                vecs = [c.tobytes() for c in codes[start:i + 1]]
                if writer is not None:
                    self._call(task, writer, [keys, vecs, ids, paths])
                else:
                    self._call(task, op, self.collection, [{"key": k, "code": v, "id": a, "path": b}
                                                           for k, v, a, b in zip(keys, vecs, ids, paths, strict=True)])
                progress.advance(i + 1 - start)
                start, size, ids, paths = i + 1, 0, [], []
        finally:
            progress.finish()

    def _column_writer(self, upsert: bool) -> Callable[..., Any] | None:
        """pymilvus's column-wise insert, when this pymilvus has it (None: insert rows).

        MilvusClient only takes rows, which pymilvus converts one by one: about 12,000 rows/s here against
        95,000 for the same data given as columns through the ORM Collection (which pymilvus plans to drop)."""
        if not self.columns:
            return None
        pm = _pymilvus()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the ORM's deprecation notices; rows remain the fallback
                if self._orm_alias is None:
                    alias = f"s5vh-{uuid.uuid4().hex[:12]}"
                    pm.connections.connect(alias, uri=self.uri, token=os.environ.get("S5VH_MILVUS_TOKEN", ""),
                                           timeout=CONNECT_TIMEOUT_S)
                    self._orm_alias = alias
                method = getattr(pm.Collection(self.collection, using=self._orm_alias), "upsert" if upsert else "insert")
        except Exception:  # noqa: BLE001 - no ORM in this pymilvus, or it refused: insert rows instead
            self.columns = False
            return None

        def write(columns: list[list[Any]], **kwargs: Any) -> Any:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return method(columns, **kwargs)

        return write

    def _seal(self, rows: int, progress: Progress) -> None:
        """After a build: flush (the rows become sealed segments, which Milvus indexes), wait for the index, then
        make the query node serve the indexed segments instead of the growing ones it holds the rows in.

        It switches on its own only some 10-20 s later; until then BIN_IVF_FLAT searches are exact (a recall
        measured then would be wrong) and BIN_FLAT ones slow (measured 72 queries/s on 100k growing rows). Only
        for a new collection: the release makes it unsearchable for a few seconds. Below Milvus's indexing
        threshold segments stay raw anyway, and so small a collection is searched fast as it is."""
        if rows < MIN_INDEXED_ROWS:
            return
        self._call("flush", self.client.flush, self.collection)
        progress.log(f"milvus: building the {self.index_type} index")
        while True:
            info = self._call("describe index", self.client.describe_index, self.collection, "code")
            state = str(info.get("state", ""))
            if "Failed" in state:
                raise BackendError(f"{self._where()}: building the index failed: "
                                   f"{info.get('index_state_fail_reason') or state}")
            if int(info.get("pending_index_rows", 0) or 0) == 0:
                break
            time.sleep(0.2)
        self._call("release collection", self.client.release_collection, self.collection)
        self._call("load collection", self.client.load_collection, self.collection)
        deadline = time.monotonic() + HANDOFF_WAIT_S
        while time.monotonic() < deadline:
            segs = self._call("list segments", self.client.list_loaded_segments, self.collection)
            # a sealed BIN_FLAT segment is searched from its raw data and lists no index
            if sum(int(sg.num_rows) for sg in segs) >= rows and all(
                    sg.index_name or sg.num_rows < MIN_INDEXED_ROWS or self.index_type == "BIN_FLAT" for sg in segs):
                return
            time.sleep(0.5)
        progress.log(f"milvus: the query node does not serve the indexed segments after {HANDOFF_WAIT_S:.0f} s; "
                     "searches stay exact on the rest until it does")

    @classmethod
    def from_bytes(cls, raw: bytes, index_type: str, bits: int, params: IndexParams, options: dict[str, Any],
                   where: str) -> MilvusBackend:
        desc = parse_descriptor(raw)
        if desc is None:
            raise ArtifactError(f"{where}: not an s5vh Milvus index descriptor")
        if desc.get("type") != index_type or desc.get("bits") != bits:
            raise ArtifactError(f"{where}: the descriptor names a {desc.get('type')} index of {desc.get('bits')}-bit "
                                f"codes, the metadata {index_type} of {bits}")
        try:
            check_collection(desc.get("collection"))
            check_uri(desc.get("uri"))
        except InputError as e:
            raise ArtifactError(f"{where}: damaged Milvus index descriptor ({e})") from None
        nlist = desc.get("nlist")
        if (index_type == "BIN_IVF_FLAT") != (isinstance(nlist, int) and 1 <= nlist <= NLIST_MAX):
            raise ArtifactError(f"{where}: damaged Milvus index descriptor (nlist {nlist!r})")
        uri = check_uri(os.environ.get("S5VH_MILVUS_URI") or desc["uri"])
        b = cls(index_type, bits, params, desc, _connect(uri, where), uri)
        b._attach(where)
        return b

    def _attach(self, where: str) -> None:
        if not self._call("check collection", self.client.has_collection, self.collection):
            self._exists = False  # drift() reports everything missing; repair() recreates it
            return
        label = self._label()
        if label is None or label.get("uid") != self.desc["uid"]:
            what = "was not made by s5vh" if label is None else \
                f"holds another index (uid {str(label.get('uid'))[:12]}, this one names {self.desc['uid'][:12]})"
            raise ArtifactError(f"{where}: {self._where()} {what}; rebuild with `s5vh index ... --backend milvus`")
        code = label["_fields"].get("code", {})
        dim = (code.get("params") or {}).get("dim")
        if dim is not None and int(dim) != self.bits:
            raise ArtifactError(f"{where}: {self._where()} holds {dim}-bit codes, the metadata {self.bits}-bit")
        self._call("load collection", self.client.load_collection, self.collection)

    def to_bytes(self) -> bytes:
        return (json.dumps(self.desc, sort_keys=True, indent=1) + "\n").encode()

    def options(self) -> dict[str, Any]:
        return {"uri": self.desc["uri"], "collection": self.collection, "nlist": self.nlist, "uid": self.desc["uid"]}

    def close(self) -> None:
        if self._orm_alias is not None:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    _pymilvus().connections.disconnect(self._orm_alias)
            except Exception:  # noqa: BLE001 - closing a dead connection is not an error
                pass
            self._orm_alias = None
        if self.client is not None:
            try:
                self.client.close()
            except Exception:  # noqa: BLE001 - closing a dead connection is not an error
                pass
            self.client = None

    # ---- contents ---------------------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return self._count

    @property
    def exact(self) -> bool:
        return self.index_type == "BIN_FLAT"

    def add(self, entries: Entries, progress: Progress) -> None:
        if entries.n == 0:
            return
        self._bound = max(self._bound, int(entries.keys.max()) + 1)
        self._insert(entries, progress, "milvus insert")
        self._refresh_count()

    def remove(self, keys: np.ndarray, kept: Entries, progress: Progress) -> None:
        self._delete_keys(np.asarray(keys, dtype=np.int64))
        self._refresh_count()

    def _delete_keys(self, keys: np.ndarray) -> None:
        for s in range(0, keys.size, DELETE_IDS):
            self._call("delete", self.client.delete, self.collection, ids=[int(k) for k in keys[s:s + DELETE_IDS]])

    def _server_rows(self, below: int, with_codes: bool) -> tuple[np.ndarray, np.ndarray]:
        """Every key held below ``below`` (sorted, unique) and, when asked, their codes (uint8 rows)."""
        keys: list[int] = []
        codes: list[np.ndarray] = []
        width = self.bits // 8
        fields = ["key", "code"] if with_codes else ["key"]
        for lo in range(0, below, KEY_WINDOW):
            hi = min(below, lo + KEY_WINDOW)
            # Bounded: every caller has just made a Strong count, see _search
            rows = self._call("list keys", self.client.query, self.collection, filter=f"key >= {lo} and key < {hi}",
                              output_fields=fields, consistency_level="Bounded")
            keys.extend(_key_column(rows))
            if with_codes:
                codes.append(_code_column(rows, width))
        k = np.asarray(keys, dtype=np.int64)
        c = np.concatenate(codes) if codes else np.empty((0, width), np.uint8)
        k, first = np.unique(k, return_index=True)
        return k, (c[first] if with_codes else c)

    def drift(self, table: Entries, next_key: int, full: bool = False) -> Drift | None:
        self._bound = int(next_key)
        if not self._exists:
            return Drift(missing=np.asarray(table.keys, dtype=np.int64), reason="collection missing")
        self._refresh_count()
        above = self._count_rows(f"key >= {self._bound}", strong=False)
        if above == 0 and self._count == table.n and not full:
            return None
        held, codes = self._server_rows(self._bound, with_codes=full)
        d = Drift(extra=np.setdiff1d(held, table.keys), missing=np.setdiff1d(table.keys, held), unlisted_above=above)
        if full:  # a key whose stored code differs from the metadata's is re-written
            both, mine, theirs = np.intersect1d(table.keys, held, assume_unique=True, return_indices=True)
            differ = np.any(np.asarray(table.codes)[mine] != codes[theirs], axis=1)
            d.missing = np.union1d(d.missing, both[differ])
        if self._count != held.size:  # a key stored twice (an insert repeated by hand): rewrite it once
            d.reason = d.reason or "repeated keys"
        return d if d else None

    def repair(self, drift: Drift, table: Entries, next_key: int, progress: Progress) -> None:
        self._bound = int(next_key)
        if not self._exists:
            self._create()
            self._insert(table, progress, "milvus repair (re-inserting every entry)")
            self._seal(table.n, progress)
        else:
            if drift.unlisted_above:
                self._call("delete", self.client.delete, self.collection, filter=f"key >= {self._bound}")
            if drift.extra.size:
                self._delete_keys(drift.extra)
            missing = drift.missing
            if drift.reason == "repeated keys":
                missing = np.asarray(table.keys, dtype=np.int64)
                self._call("delete", self.client.delete, self.collection, filter=f"key < {self._bound}")
            if missing.size:
                # upsert: a row that is there with another code is replaced, not doubled
                self._insert(table.of_keys(missing), progress, "milvus repair", upsert=not drift.reason)
        self._refresh_count()

    # ---- search -----------------------------------------------------------------------------------------
    def _filter(self, key_below: int | None, lo: int | None = None) -> str:
        parts = []
        if lo is not None:
            parts.append(f"key >= {int(lo)}")
        if key_below is not None:
            parts.append(f"key < {int(key_below)}")
        return " and ".join(parts)

    def _search(self, queries: np.ndarray, limit: int, expr: str, extra: dict[str, Any] | None = None) -> list[Any]:
        # Bounded, not Strong: a Strong request waits for the next time tick (about 200 ms each). Every open and
        # every write here ends with a Strong count, after which the query node has consumed everything written
        # before it, and what it has consumed only grows; so a Bounded search still sees every committed write.
        return self._call("search", self.client.search, self.collection, data=[q.tobytes() for q in queries],
                          anns_field="code", limit=int(limit), filter=expr, output_fields=[],
                          search_params=self._search_params(extra), consistency_level="Bounded")

    @staticmethod
    def _hits(hits: Any) -> tuple[np.ndarray, np.ndarray]:
        ids = getattr(hits, "ids", None)
        dist = getattr(hits, "distances", None)
        if ids is None or dist is None:
            ids = [h["id"] for h in hits]
            dist = [h["distance"] for h in hits]
        d = np.rint(np.asarray(dist, dtype=np.float64)).astype(np.int32)
        k = np.asarray(ids, dtype=np.int64)
        order = np.argsort(d, kind="stable")
        return d[order], k[order]

    def search(self, queries: np.ndarray, k: int, key_below: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        if not 1 <= k <= MAX_K:
            raise InputError(f"--topk {k}: Milvus returns between 1 and {MAX_K} results per query")
        if not self._exists:
            return (np.full((queries.shape[0], k), np.iinfo(np.int32).max, dtype=np.int32),
                    np.full((queries.shape[0], k), -1, dtype=np.int64))
        # A filter makes Milvus scan with a bitset (measured up to 2x slower). The usual bound is the metadata's
        # next_key, above which the server holds nothing unless a writer is at work (or died): search without it
        # and repeat, filtered, only the queries whose answer holds such a key. When the k nearest of all rows
        # lie below the bound, they are the k nearest of the rows below it.
        late = key_below is not None and key_below >= self._bound
        dist, keys = self._search_all(queries, k, "" if late else self._filter(key_below))
        if late:
            redo = np.flatnonzero((keys >= key_below).any(axis=1))
            if redo.size:
                dist[redo], keys[redo] = self._search_all(queries[redo], k, self._filter(key_below))
        return dist, keys

    def _search_all(self, queries: np.ndarray, k: int, expr: str) -> tuple[np.ndarray, np.ndarray]:
        nq = queries.shape[0]
        dist = np.full((nq, k), np.iinfo(np.int32).max, dtype=np.int32)
        keys = np.full((nq, k), -1, dtype=np.int64)
        step = max(1, min(MAX_NQ, MAX_HITS // k))
        for s in range(0, nq, step):
            for i, hits in enumerate(self._search(queries[s:s + step], k, expr)):
                d, lb = self._hits(hits)
                dist[s + i, :d.size] = d
                keys[s + i, :lb.size] = lb
        return dist, keys

    def range_search(self, queries: np.ndarray, radius: int, key_below: int | None = None) -> list[Candidates]:
        if not self._exists:
            return [(np.empty(0, np.int32), np.empty(0, np.int64)) for _ in range(queries.shape[0])]
        hi = self._bound if key_below is None else int(key_below)
        band = {"radius": int(radius) + 1}  # Milvus keeps range_filter <= d < radius for HAMMING
        late = hi >= self._bound  # unfiltered, then drop keys at or above the bound (see search)
        out: list[Candidates] = []
        for s in range(0, queries.shape[0], RANGE_NQ):
            chunk = queries[s:s + RANGE_NQ]
            for i, hits in enumerate(self._search(chunk, MAX_K, "" if late else self._filter(hi), band)):
                d, lb = self._hits(hits)
                if d.size >= MAX_K:  # the limit cut the answer: split the key range until each part fits
                    d, lb = self._range_split(chunk[i], band, 0, hi)
                elif late:
                    d, lb = d[lb < hi], lb[lb < hi]
                out.append((d, lb))
        return out

    def _range_split(self, q: np.ndarray, band: dict[str, Any], lo: int, hi: int) -> Candidates:
        mid = (lo + hi) // 2
        parts = []
        for a, b in ((lo, mid), (mid, hi)):
            if a >= b:
                continue
            d, lb = self._hits(self._search(q[None], MAX_K, self._filter(b, a), band)[0])
            if d.size >= MAX_K and b - a > 1:
                d, lb = self._range_split(q, band, a, b)
            parts.append((d, lb))
        return (np.concatenate([p[0] for p in parts]) if parts else np.empty(0, np.int32),
                np.concatenate([p[1] for p in parts]) if parts else np.empty(0, np.int64))

    # ---- parameters ---------------------------------------------------------------------------------------
    def check_params(self, params: IndexParams) -> None:
        p = params
        for name, v, low in (("--nprobe", p.nprobe, 1), ("--ef-search", p.ef_search, 1), ("--nflip", p.nflip, 0)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low):
                raise InputError(f"{name} must be an integer of at least {low}, got {v}")
        if self.index_type == "BIN_IVF_FLAT" and p.nprobe is not None and p.nprobe > (self.nlist or 1):
            raise InputError(f"--nprobe must be between 1 and the index's {self.nlist} lists, got {p.nprobe}")

    def apply_params(self, params: IndexParams) -> None:
        if self.index_type == "BIN_IVF_FLAT":
            self.params = IndexParams(nprobe=int(params.nprobe or min(DEFAULT_NPROBE, self.nlist or 1)))
        else:
            self.params = IndexParams()

    def info(self) -> dict[str, Any]:
        return {"backend": self.name, "uri": self.uri, "collection": self.collection}
