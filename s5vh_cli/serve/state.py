"""What the server loads once and shares between requests, and the rule that orders them.

One ``api.Searcher`` holds the index, the model and (through ``extract_clips``) the backbone. Queries share it
under a read lock; a write (add, remove, sync) runs the API function, which takes the index's file lock and
replaces the index files atomically exactly as the CLI does, then swaps in the reopened index under the
write lock. A query therefore sees the index entirely before or entirely after a write. The index files are
also watched: a write made by another process (`s5vh index add` beside the server) is picked up at the next
request.
"""

from __future__ import annotations

import contextlib
import copy
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .. import api
from ..config import ServeConfig
from ..progress import NULL, Progress
from .security import Roots


class RWLock:
    """Many readers or one writer; a waiting writer goes before readers that arrive after it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def _stamp(index: Path) -> tuple:
    """What changes when the index files are replaced (inode, size and mtime of both)."""
    out = []
    for p in (index, api.meta_path(index)):
        try:
            st = os.stat(p)
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


class Metrics:
    """Counts and recent latencies per endpoint (the last 2,048 of each), for /api/metrics."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self.count: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.lat: dict[str, deque] = {}

    def record(self, route: str, seconds: float, status: int) -> None:
        with self._lock:
            self.count[route] = self.count.get(route, 0) + 1
            if status >= 400:
                self.errors[route] = self.errors.get(route, 0) + 1
            self.lat.setdefault(route, deque(maxlen=2048)).append(seconds)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            routes = {}
            for r, n in sorted(self.count.items()):
                xs = sorted(self.lat.get(r, ()))
                routes[r] = {"requests": n, "errors": self.errors.get(r, 0), "p50_ms": _pct(xs, 0.5),
                             "p99_ms": _pct(xs, 0.99)}
        return {"uptime_s": round(time.time() - self.started, 3), "routes": routes, "memory": memory()}


def _pct(xs: list[float], f: float) -> float | None:
    return round(xs[min(len(xs) - 1, int(f * len(xs)))] * 1000, 3) if xs else None


def memory() -> dict[str, int | None]:
    """Resident memory of this process now and at its peak, in bytes (Linux /proc; None elsewhere)."""
    out: dict[str, int | None] = {"rss_bytes": None, "peak_rss_bytes": None}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss_bytes"] = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                out["peak_rss_bytes"] = int(line.split()[1]) * 1024
    return out


class ServerState:
    """The loaded searcher, the locks that order requests, and small caches (thumbnails, dedup results)."""

    def __init__(self, index: str | os.PathLike, cfg: ServeConfig, *, model_path: str | None = None,
                 device: str = "auto", ssm_backend: str = "auto", batch_size: int = 32, weights: str | None = None,
                 params: api.IndexParams | None = None, runtime: str = "auto", precision: str = "auto",
                 progress: Progress | None = None) -> None:
        self.cfg = cfg
        self.index_path = Path(index)
        self.model_path, self.device, self.ssm_backend, self.weights = model_path, device, ssm_backend, weights
        self.batch_size = batch_size
        self.roots = Roots(cfg.roots)
        self.progress = progress or NULL
        self.lock = RWLock()
        self.write_mutex = threading.Lock()  # one write at a time (the index's file lock also holds others off)
        self._reload_mutex = threading.Lock()
        # clips are decoded and embedded on these threads only: waiting requests hold no thread, and the
        # backbone's per-thread scratch memory (oneDNN, malloc arenas) stays with a fixed few threads
        self.clip_pool = ThreadPoolExecutor(max_workers=cfg.clip_workers, thread_name_prefix="s5vh-clip")
        self.metrics = Metrics()
        self.reloads = 0
        self.searcher = api.Searcher(self.index_path, model_path=model_path, device=device, ssm_backend=ssm_backend,
                                     batch_size=batch_size, weights=weights, params=params, runtime=runtime,
                                     precision=precision, progress=self.progress)
        self._stamp = _stamp(self.index_path)
        self._thumbs: OrderedDict[tuple[int, int], list[bytes]] = OrderedDict()
        self._thumb_lock = threading.Lock()
        self._dedup: dict[tuple[str, int | None], Any] = {}
        self.model_error: str | None = None
        self.searcher.index.row_of()  # built now, not on the first query

    async def on_clip_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on a clip thread; the caller's coroutine waits without holding a thread."""
        import asyncio

        return await asyncio.wrap_future(self.clip_pool.submit(fn, *args))

    # ---------------------------------------------------------------------------------------------- reads
    @contextlib.contextmanager
    def reading(self) -> Iterator[api.Searcher]:
        """The searcher, current with the index files, held against writes while the caller uses it."""
        if _stamp(self.index_path) != self._stamp:
            self.reload()
        with self.lock.read():
            yield self.searcher

    def reload(self) -> None:
        """Open the index files again beside the current searcher (queries go on with it meanwhile), then swap
        the new one in under the write lock; the loaded model carries over."""
        with self._reload_mutex:
            stamp = _stamp(self.index_path)
            if stamp == self._stamp:
                return
            fresh = copy.copy(self.searcher)  # reopen() replaces its index and model cache, not the old ones
            fresh.reopen()
            fresh.index.row_of()
            with self.lock.write():
                self.searcher = fresh
                self._stamp = stamp
                self._dedup.clear()
                self.reloads += 1

    # --------------------------------------------------------------------------------------------- writes
    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Run one write (an API call that replaces the index files atomically), then swap in its result."""
        with self.write_mutex:
            try:
                yield
            finally:
                self.reload()

    # ----------------------------------------------------------------------------------------- small caches
    def thumbnails(self, key: int, count: int) -> tuple[dict[str, Any], list[bytes]]:
        from ..video import thumbnails

        with self.reading() as s:
            h = s.index
            row = h.row_of().get(int(key))
            if row is None:
                from .security import NotFound

                raise NotFound(f"key {key}: not in the index")
            entry = {"key": int(key), "id": h.ids[row], "path": h.paths[row]}
        ck = (int(key), count)
        with self._thumb_lock:
            if ck in self._thumbs:
                self._thumbs.move_to_end(ck)
                return entry, self._thumbs[ck]
        from ..errors import S5VHError

        try:
            jpgs = thumbnails(entry["path"], count=count) if entry["path"] else []
        except S5VHError:
            jpgs = []
        with self._thumb_lock:
            self._thumbs[ck] = jpgs
            while len(self._thumbs) > self.cfg.thumbnail_cache:
                self._thumbs.popitem(last=False)
        return entry, jpgs

    def dedup(self, radius: int | None):
        with self.reading() as s:
            key = (s.index.index_sha256, radius)
            if key not in self._dedup:
                if len(self._dedup) >= 8:
                    self._dedup.clear()
                self._dedup[key] = api.dedup(s.index, radius=radius)
            return self._dedup[key]
