"""What the server lets in: the API token, the size of a request body, and the files a request may name.

Paths in requests are confined to the configured roots: a path is refused when it has a ``..`` component, a
NUL, or a backslash, or when its real path (every symlink resolved) is not inside a root's real path. Relative
paths are taken relative to the first root. Nothing is URL-decoded here: a query string is decoded once by the
HTTP layer, and ``%2e%2e%2f`` in a JSON body is a file name with percent signs, which then does not exist.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from ..errors import InputError


class PathRefused(InputError):
    """A request named a file outside the server's roots (HTTP 403)."""


class NotFound(InputError):
    """A request named something that does not exist (HTTP 404)."""


class Unauthorized(InputError):
    """A request without the API token (HTTP 401)."""


class TooLarge(InputError):
    """A request body over the upload limit (HTTP 413)."""


class Roots:
    """The folders whose files requests may name."""

    def __init__(self, roots: tuple[str, ...] | list[str]) -> None:
        self.given = [str(r) for r in roots]
        self.real = [os.path.realpath(r) for r in roots]

    def resolve(self, raw: str, what: str = "path", kind: str = "any") -> Path:
        """The real path of ``raw`` if it lies inside a root, else PathRefused; NotFound when it does not exist.

        ``kind``: "file", "dir" or "any".
        """
        if not self.real:
            raise PathRefused(f"{what}: this server takes no paths (start it with --root DIR)")
        if not isinstance(raw, str) or not raw or "\x00" in raw or "\\" in raw:
            raise PathRefused(f"{what}: not an acceptable path")
        parts = raw.split("/")
        if ".." in parts:
            raise PathRefused(f"{what}: '..' is not allowed in paths")
        cand = raw if os.path.isabs(raw) else os.path.join(self.real[0], raw)
        real = os.path.realpath(cand)
        if not any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in self.real):
            raise PathRefused(f"{what}: {raw} is outside the server's roots")
        if not os.path.exists(real):
            raise NotFound(f"{what}: {raw}: no such file or folder")
        if kind == "file" and not os.path.isfile(real):
            raise InputError(f"{what}: {raw}: not a file")
        if kind == "dir" and not os.path.isdir(real):
            raise InputError(f"{what}: {raw}: not a folder")
        return Path(real)


def token_ok(expected: str, header: str | None) -> bool:
    """``Authorization: Bearer TOKEN`` matches (compared in constant time); always true without a token."""
    if not expected:
        return True
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[7:].strip().encode(), expected.encode())


class BodyLimit:
    """ASGI middleware: refuse a request whose body is over ``limit`` bytes with 413, by its Content-Length at
    once, and by counting what arrives when it has none (chunked) or lies."""

    def __init__(self, app, limit: int) -> None:  # noqa: ANN001 - an ASGI app
        self.app, self.limit = app, int(limit)

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001 - ASGI
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    n = int(value)
                except ValueError:
                    n = -1
                if n < 0 or n > self.limit:
                    await _reply(send, 413 if n > self.limit else 400,
                                 f"request body of {n} bytes is over the limit of {self.limit} bytes"
                                 if n > self.limit else "bad Content-Length")
                    return
        seen = 0
        started = False

        async def counted():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise TooLarge(f"request body is over the limit of {self.limit} bytes")
            return msg

        async def watch(msg):
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, counted, watch)
        except TooLarge as e:
            if not started:
                await _reply(send, 413, str(e))


async def _reply(send, status: int, message: str) -> None:  # noqa: ANN001 - ASGI
    import json

    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
