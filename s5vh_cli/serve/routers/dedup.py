"""Duplicate groups (`s5vh dedup --json`) and the duplicate report page (`s5vh dedup --html`). The server
never moves or deletes files."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from ..deps import CLIJSON, get_state, require_token
from ..models import DedupDocument, Error
from ..state import ServerState

router = APIRouter(prefix="/api/dedup", tags=["duplicates"], dependencies=[Depends(require_token)],
                   responses={400: {"model": Error}, 401: {"model": Error}})


@router.get("", response_class=CLIJSON, responses={200: {"model": DedupDocument}})
def dedup(radius: int | None = Query(None, ge=0, description="Hamming distance that joins two videos "
                                     "[default: chosen from the library's distances]."),
          state: ServerState = Depends(get_state)) -> CLIJSON:
    """Groups of duplicates, each with its suggested keeper first."""
    return CLIJSON(state.dedup(radius).as_dict())


@router.get("/report", response_class=HTMLResponse)
async def report(radius: int | None = Query(None, ge=0), thumbs: int = Query(4, ge=0, le=12),
                 state: ServerState = Depends(get_state)) -> HTMLResponse:
    """The duplicate report page (self-contained HTML with keyframes), as `s5vh dedup --html` writes it."""
    from ...report import render_html

    def make() -> str:
        return render_html(state.dedup(radius), thumbs=thumbs)

    return HTMLResponse(await run_in_threadpool(make))
