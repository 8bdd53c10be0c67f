"""What endpoints share: the server state, the token check, and the response that prints like the CLI."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from .security import Unauthorized, token_ok
from .state import ServerState


def get_state(request: Request) -> ServerState:
    return request.app.state.s5vh


def require_token(request: Request) -> None:
    """Every /api route: the API token, when the server has one."""
    state: ServerState = request.app.state.s5vh
    if not token_ok(state.cfg.token, request.headers.get("authorization")):
        raise Unauthorized("missing or wrong API token (send the header 'Authorization: Bearer TOKEN')")


class CLIJSON(Response):
    """A JSON document serialised exactly as the CLI's ``--json`` prints it (``commands._common.print_json``)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, default=str).encode("utf-8")


def topk_for(topk: int | None, radius: int | None, default: int) -> int:
    """The CLI's rule: top ``topk``; else everything within ``radius`` (0 = no cut); else the default."""
    if topk is not None:
        return topk
    return 0 if radius is not None else default
