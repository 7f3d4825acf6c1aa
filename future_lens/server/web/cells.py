"""Per-cell extras of a stored grid: token trajectories (`/g/{id}/track.json`, `/g/{id}/track.svg`) and the code
behind a cell (`/g/{id}/code.py`). Trajectories are recomputed on the inference worker from the stored request,
with the lens that computed the grid (a grid whose lens changed since, e.g. retrained prompts, gets 409)."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from future_lens.export.snippet import SnippetError, cell_snippet, model_recipe
from future_lens.export.trajectory import TrajectoryError, trajectory_svg
from future_lens.lens.track import Track
from future_lens.server.store import is_grid_id
from future_lens.server.web.errors import ErrorBody, error_response
from future_lens.server.web.keeper import GridKeeper, KeptGrid, StaleGridError, keeper_of
from future_lens.server.web.ratelimit import SPENDS_MODEL_TIME
from future_lens.service import InvalidRequestError, PlannedGrid, parse_request

router = APIRouter()

NOT_FOUND = {404: {"model": ErrorBody, "description": "no grid with this id"}}
BAD = {422: {"model": ErrorBody, "description": "a parameter cannot be used: `field` names it"}}
STALE = {409: {"model": ErrorBody, "description": "the lens that computed this grid is no longer served"}}
TokensQuery = Annotated[list[int], Query(description="token ids to track (repeat the parameter for several)")]


def replan(keeper: GridKeeper, kept: KeptGrid, track: list[int] | None = None) -> PlannedGrid:
    """The stored grid's request planned again on this server, checked to mean exactly the stored computation."""
    stored = kept.request
    fields = {name: stored.get(name) for name in ("text", "method", "layers", "n_future", "top_k", "prompt")}
    planned = keeper.service.plan(parse_request(**{k: v for k, v in fields.items() if v is not None}, track=track))
    if json.loads(json.dumps(planned.canonical())) != stored:
        raise StaleGridError("this grid was computed with a model or prompts this server no longer serves")
    return planned


async def compute_track(keeper: GridKeeper, planned: PlannedGrid, grid_id: str, token_ids: list[int]) -> Track:
    """The trajectories of `token_ids` through a planned grid, computed on the inference worker."""
    key = ("track", grid_id, tuple(token_ids))
    ticket = keeper.worker.submit(key, lambda: keeper.service.track(planned, token_ids))
    return await asyncio.to_thread(ticket.result, keeper.worker.default_timeout_s)


async def stored_track(request: Request, grid_id: str, token_ids: list[int]) -> tuple[KeptGrid, Track] | Response:
    """The stored grid and its trajectories of `token_ids`, or the error response."""
    keeper = keeper_of(request)
    kept = keeper.lookup(grid_id) if is_grid_id(grid_id) else None
    if kept is None:
        return error_response(404, "id", f"no stored grid has the id {grid_id!r}")
    try:
        planned = await asyncio.to_thread(replan, keeper, kept, token_ids)  # artifacts may be read: not on the loop
    except StaleGridError as error:
        return error_response(409, "id", str(error))
    except InvalidRequestError as error:
        field = "token" if error.field == "track" else error.field
        return error_response(422, field, error.message)
    return kept, await compute_track(keeper, planned, kept.id, token_ids)


@router.get(
    "/g/{grid_id}/track.json",
    dependencies=[SPENDS_MODEL_TIME],
    summary="Trajectories of tokens through a stored grid",
    response_model=Track,
    responses={**NOT_FOUND, **BAD, **STALE},
)
async def track_json(request: Request, grid_id: str, token: TokensQuery) -> Response:
    """For each token id: its probability as the first predicted token, and its rank, at every layer and position
    of the grid (the `track` object of `POST /lens`, see docs/grid-format.md)."""
    found = await stored_track(request, grid_id, token)
    if isinstance(found, Response):
        return found
    return Response(found[1].model_dump_json(), media_type="application/json")


@router.get(
    "/g/{grid_id}/track.svg",
    dependencies=[SPENDS_MODEL_TIME],
    summary="A token's trajectory as an SVG chart",
    response_class=Response,
    responses={200: {"content": {"image/svg+xml": {}}}, **NOT_FOUND, **BAD, **STALE},
)
async def track_svg(
    request: Request,
    grid_id: str,
    token: Annotated[int, Query(description="the token id to track")],
    position: Annotated[int, Query(description="the position whose line and ranks are highlighted")] = 0,
) -> Response:
    """Probability across layers at every position (lines and a heat strip), and at `position` the token's rank."""
    found = await stored_track(request, grid_id, [token])
    if isinstance(found, Response):
        return found
    kept, track = found
    try:
        svg = trajectory_svg(kept.grid, track, token, position)
    except TrajectoryError as error:
        return error_response(422, error.field, error.message)
    headers = {"Content-Security-Policy": "default-src 'none'", "Content-Disposition": "inline"}
    return Response(svg, media_type="image/svg+xml", headers=headers)


@router.get(
    "/g/{grid_id}/code.py",
    summary="The code behind a cell",
    response_class=Response,
    responses={200: {"content": {"text/x-python": {}}}, **NOT_FOUND, **BAD},
)
def cell_code(
    request: Request,
    grid_id: str,
    layer: Annotated[int, Query(description="the cell's layer (block index, one of the grid's rows)")],
    position: Annotated[int, Query(description="the cell's token position")],
) -> Response:
    """A runnable script (transformers + nnsight, no project code) that recomputes the cell and prints its tokens."""
    keeper = keeper_of(request)
    kept = keeper.lookup(grid_id) if is_grid_id(grid_id) else None
    if kept is None:
        return error_response(404, "id", f"no stored grid has the id {grid_id!r}")
    if kept.grid.model.fingerprint != keeper.service.model.fingerprint:
        return error_response(409, "id", "this grid was computed on a model this server no longer serves")
    try:
        code = cell_snippet(kept.grid, str(kept.request["text"]), layer, position, model_recipe(keeper.service.model))
    except SnippetError as error:
        return error_response(422, error.field, error.message)
    headers = {"Content-Disposition": f'inline; filename="future-lens-{kept.id}-{layer}-{position}.py"'}
    return Response(code, media_type="text/x-python; charset=utf-8", headers=headers)
