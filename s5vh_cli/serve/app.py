"""The ASGI app: routers, error mapping, metrics and the body limit around them; and running it with uvicorn."""

from __future__ import annotations

import socket
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from .. import __version__
from ..errors import S5VHError
from .routers import dedup, library, query, system
from .security import BodyLimit, NotFound, PathRefused, TooLarge, Unauthorized
from .state import ServerState

_STATUS = ((Unauthorized, 401), (PathRefused, 403), (NotFound, 404), (TooLarge, 413))


def status_of(err: S5VHError) -> int:
    for cls, code in _STATUS:
        if isinstance(err, cls):
            return code
    return 400


def create_app(state: ServerState) -> Any:
    """The app serving ``state`` (an ASGI callable: FastAPI wrapped in the metrics and body-limit layers)."""
    app = FastAPI(title="s5vh", version=__version__,
                  description="Near-duplicate and semantic video search over one s5vh index. Responses are the "
                  "documents `s5vh ... --json` prints. Send `Authorization: Bearer TOKEN` when the server has a "
                  "token.")
    app.state.s5vh = state

    @app.exception_handler(S5VHError)
    async def _s5vh_error(request: Request, exc: S5VHError) -> JSONResponse:
        code = status_of(exc)
        headers = {"WWW-Authenticate": "Bearer"} if code == 401 else None
        return JSONResponse({"error": str(exc)}, status_code=code, headers=headers)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        msg = str(exc).splitlines()[0] if str(exc) else ""
        return JSONResponse({"error": f"internal error: {type(exc).__name__}: {msg}"}, status_code=500)

    for r in (query.router, library.router, dedup.router, system.router, system.page):
        app.include_router(r)
    return Timed(BodyLimit(app, int(state.cfg.max_upload_mb * 1024 * 1024)), state)


class Timed:
    """ASGI middleware: each request's latency and status into the server's metrics, by route template."""

    def __init__(self, app: Any, state: ServerState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001 - ASGI
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def watch(msg):
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, watch)
        finally:
            route = scope.get("route")
            name = f"{scope['method']} {getattr(route, 'path', None) or 'other'}"
            self.state.metrics.record(name, time.perf_counter() - t0, status)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free one); raises OSError when the address is taken or not ours."""
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted connections inherit it (Linux): a response written in two parts must not wait for the
    # client's delayed ACK (~40 ms per request with uvicorn's pure-Python h11 protocol)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(info[4])
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run(app: Any, sock: socket.socket, access_log: bool = False, http: str = "auto", loop: str = "auto") -> None:
    """Serve until SIGINT/SIGTERM (uvicorn, one process: the loaded index and model live in it).

    ``http``/``loop`` "auto" take httptools and uvloop when installed (the serve extra installs them), else
    the pure-Python h11 and asyncio; benchmarks/bench_serve.py --compare-stacks measures both."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=access_log, timeout_graceful_shutdown=5,
                            limit_concurrency=1024, backlog=2048, http=http, loop=loop)
    uvicorn.Server(config).run(sockets=[sock])
