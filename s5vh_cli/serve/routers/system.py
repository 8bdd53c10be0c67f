"""The server itself: health, metrics, keyframes of indexed videos, and the page."""

from __future__ import annotations

import base64
import time
from importlib import resources

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import HTMLResponse

from ... import __version__
from ..deps import CLIJSON, get_state, require_token
from ..models import Error, Health, Thumbnails
from ..state import ServerState

router = APIRouter(prefix="/api", tags=["server"], dependencies=[Depends(require_token)],
                   responses={401: {"model": Error}})
page = APIRouter(include_in_schema=False)


@router.get("/health", response_class=CLIJSON, responses={200: {"model": Health}})
def health(state: ServerState = Depends(get_state)) -> CLIJSON:
    """Alive, and what it serves."""
    with state.reading() as s:
        h = s.index
        return CLIJSON({"status": "ok", "version": __version__, "index": str(h.path), "count": h.n, "bits": h.bits,
                        "model_loaded": s._models.model is not None, "clip_queries": state.model_error is None,
                        "model_error": state.model_error, "uptime_s": round(time.time() - state.metrics.started, 3)})


@router.get("/metrics", response_class=CLIJSON)
def metrics(state: ServerState = Depends(get_state)) -> CLIJSON:
    """Requests, errors and p50/p99 latency per route (last 2,048 requests each); memory; index reloads."""
    return CLIJSON(state.metrics.snapshot() | {"index_reloads": state.reloads})


@router.get("/videos/{key}/thumbnails", response_class=CLIJSON, responses={200: {"model": Thumbnails},
                                                                             404: {"model": Error}})
def thumbnails(key: int = Path(..., ge=0), count: int = Query(3, ge=1, le=12),
               state: ServerState = Depends(get_state)) -> CLIJSON:
    """JPEG keyframes (base64) of an indexed video, spread over its length."""
    entry, jpgs = state.thumbnails(key, count)
    return CLIJSON(entry | {"thumbnails": [base64.b64encode(j).decode("ascii") for j in jpgs]})


def _static(name: str) -> str:
    return resources.files("s5vh_cli.serve").joinpath("static", name).read_text(encoding="utf-8")


@page.get("/", response_class=HTMLResponse)
def index_page() -> HTMLResponse:
    return HTMLResponse(_static("index.html"))
