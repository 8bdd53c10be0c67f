"""The library: what the index holds, and the writes (add, remove, sync). Each answers the CLI's document.

Writes go through ``ServerState.writing``: one at a time, by the API functions that replace the index files
atomically under the index's lock (as the CLI does), then the server's searcher is swapped for the new index.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from ... import api
from ..deps import CLIJSON, get_state, require_token
from ..models import (
    AddDocument,
    AddRequest,
    Error,
    IndexInfo,
    RemoveDocument,
    RemoveRequest,
    SyncDocument,
    SyncRequest,
)
from ..state import ServerState

router = APIRouter(prefix="/api", tags=["library"], dependencies=[Depends(require_token)],
                   responses={400: {"model": Error}, 401: {"model": Error}, 403: {"model": Error},
                              404: {"model": Error}})


@router.get("/index", response_class=CLIJSON, responses={200: {"model": IndexInfo}})
def index_info(state: ServerState = Depends(get_state)) -> CLIJSON:
    """What the index holds and where it came from (`s5vh index info --json`)."""
    with state.reading() as s:
        return CLIJSON(s.index.info())


@router.post("/index/add", response_class=CLIJSON, responses={200: {"model": AddDocument}})
def index_add(req: AddRequest, state: ServerState = Depends(get_state)) -> CLIJSON:
    """Add a codes file (under the server's roots) once per video (`s5vh index add --json`)."""
    codes = state.roots.resolve(req.codes, "codes", kind="file")
    with state.writing():
        h, report = api.add(state.index_path, codes, on_existing=req.on_existing)
    return CLIJSON(api.add_summary(h, report))


@router.post("/index/remove", response_class=CLIJSON, responses={200: {"model": RemoveDocument}})
def index_remove(req: RemoveRequest, state: ServerState = Depends(get_state)) -> CLIJSON:
    """Remove entries by key, id or indexed path; every name must exist (`s5vh index remove --json`)."""
    with state.writing():
        h, gone = api.remove(state.index_path, keys=req.keys, ids=req.ids, paths=req.paths)
    return CLIJSON(api.remove_summary(h, gone))


@router.post("/sync", response_class=CLIJSON, responses={200: {"model": SyncDocument}})
def sync(req: SyncRequest, state: ServerState = Depends(get_state)) -> CLIJSON:
    """Bring the index up to date with a folder under the server's roots (`s5vh sync --json`)."""
    folder = state.roots.resolve(req.folder, "folder", kind="dir")
    with state.writing():
        # decode in this process: forking worker processes out of a threaded server is not safe
        rep = api.sync(folder, state.index_path, model_path=state.model_path, weights=state.weights,
                       device=state.device, ssm_backend=state.ssm_backend, workers=0, dry_run=req.dry_run)
    return CLIJSON(rep.as_dict())
