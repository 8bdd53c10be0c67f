"""Queries: by an uploaded clip, by paths on the server, by features, by codes. Each answers the document of
`s5vh query --json`."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool

from ...errors import InputError
from ..deps import CLIJSON, get_state, require_token, topk_for
from ..models import CodesQuery, Error, FeaturesQuery, PathQuery, QueryDocument
from ..state import ServerState

router = APIRouter(prefix="/api/query", tags=["query"], dependencies=[Depends(require_token)],
                   responses={400: {"model": Error}, 401: {"model": Error}})
_DOC = {200: {"model": QueryDocument}}


@router.post("/clip", response_class=CLIJSON, responses={**_DOC, 413: {"model": Error}},
             openapi_extra={"requestBody": {"required": True, "content": {"application/octet-stream": {
                 "schema": {"type": "string", "format": "binary"}}}}})
async def query_clip(request: Request, name: str = Query("clip", max_length=255, description="The clip's file "
                                                         "name (shown as the query)."),
                     topk: int | None = Query(None, ge=1), radius: int | None = Query(None, ge=0),
                     state: ServerState = Depends(get_state)) -> CLIJSON:
    """Upload a video clip as the request body (any container OpenCV decodes); rank the index against it."""
    k = topk_for(topk, radius, state.cfg.topk)
    m = re.search(r"\.([A-Za-z0-9]{1,8})$", name)
    suffix = "." + m.group(1) if m else ".bin"
    with tempfile.TemporaryDirectory(prefix="s5vh-upload-") as tmp:
        path = Path(tmp) / ("upload" + suffix)
        size = 0
        with open(path, "wb") as f:
            async for chunk in request.stream():  # the BodyLimit middleware stops it at the upload limit
                size += len(chunk)
                f.write(chunk)
        if size == 0:
            raise InputError("the request body is empty: send the clip's bytes")
        doc = await state.on_clip_thread(_clip, state, str(path), os.path.basename(name), k, radius)
    return CLIJSON(doc)


def _clip(state: ServerState, path: str, name: str, k: int, radius: int | None) -> dict:
    with state.reading() as s:
        out = s.query([path], topk=k, radius=radius)
    for q in out.queries:  # the upload's temporary file is gone; the query is the name it was sent under
        q.name, q.id, q.path = name, name, ""
    return out.to_json()


@router.post("/paths", response_class=CLIJSON, responses={**_DOC, 403: {"model": Error}, 404: {"model": Error}})
async def query_paths(req: PathQuery, state: ServerState = Depends(get_state)) -> CLIJSON:
    """Query with files or folders on the server (videos, a features file, a codes file), inside its roots."""
    paths = [str(state.roots.resolve(p, "paths")) for p in req.paths]
    k = topk_for(req.topk, req.radius, state.cfg.topk)
    if req.radius is not None:
        _check_radius(state, req.radius)

    def run() -> dict:
        with state.reading() as s:
            return s.query(paths, topk=k, radius=req.radius, exclude_self=req.exclude_self).to_json()

    has_clips = any(not p.endswith(".h5") for p in paths)
    return CLIJSON(await (state.on_clip_thread(run) if has_clips else run_in_threadpool(run)))


@router.post("/codes", response_class=CLIJSON, responses=_DOC)
def query_codes(req: CodesQuery, state: ServerState = Depends(get_state)) -> CLIJSON:
    """Query with packed codes in hex (as `s5vh query --json` prints them); no model is involved."""
    try:
        rows = [bytes.fromhex(c) for c in req.codes]
    except ValueError:
        raise InputError("codes must be hexadecimal strings") from None
    if len({len(r) for r in rows}) != 1:
        raise InputError("codes must all have the same length")
    codes = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(len(rows), -1)
    k = topk_for(req.topk, req.radius, state.cfg.topk)
    with state.reading() as s:
        out = s.query_codes(codes, names=req.ids, topk=k, radius=req.radius, exclude_self=req.exclude_self)
    return CLIJSON(out.to_json())


@router.post("/features", response_class=CLIJSON, responses=_DOC)
def query_features(req: FeaturesQuery, state: ServerState = Depends(get_state)) -> CLIJSON:
    """Query with backbone features [videos][frames][dim]; they are encoded with the index's model."""
    try:
        feats = np.asarray(req.features, dtype=np.float32)
    except ValueError:
        raise InputError("features must be a [videos][frames][dim] array of numbers of one shape") from None
    k = topk_for(req.topk, req.radius, state.cfg.topk)
    with state.reading() as s:
        out = s.query_features(feats, names=req.ids, topk=k, radius=req.radius, exclude_self=req.exclude_self)
    return CLIJSON(out.to_json())


def _check_radius(state: ServerState, radius: int) -> None:
    bits = state.searcher.index.bits
    if radius > bits:  # before a clip is decoded
        raise InputError(f"--radius must be between 0 and {bits} (the code length), got {radius}")

