"""The JSON API: `POST /lens`, `GET /lens?text=...`, `GET /g/{id}.json`, `GET /healthz`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import Response
from pydantic import Field

from app.lens.grid import Grid
from app.service import GridRequest, Method, parse_request
from app.store import is_grid_id
from app.web.errors import ErrorBody, error_response
from app.web.keeper import KeptGrid, keeper_of

router = APIRouter()

LENS_EXAMPLES = {
    "future": {
        "summary": "Future lens: learned soft prompts, 4 tokens, every 3rd layer",
        "value": {"text": "Marty McFly from", "method": "future", "n_future": 4, "layers": "::3"},
    },
    "logit": {
        "summary": "Logit lens: the next token only, all layers",
        "value": {"text": "The Eiffel Tower is in the city of", "method": "logit", "top_k": 10},
    },
    "fixed": {
        "summary": "Fixed prompt (the paper's baseline) on chosen layers",
        "value": {
            "text": "Marty McFly from",
            "method": "fixed",
            "prompt": 'Hello! Could you please tell me more about "',
            "layers": [0, 10, 20, 29],
            "n_future": 3,
        },
    },
}
ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    422: {"model": ErrorBody, "description": "invalid request: `field` names the offending field"},
    413: {"model": ErrorBody, "description": "the request body is larger than the configured limit"},
    429: {"model": ErrorBody, "description": "this client started too many grids (rate limit, when configured)"},
    503: {"model": ErrorBody, "description": "too many grids are waiting: retry after `Retry-After` seconds"},
    504: {"model": ErrorBody, "description": "the grid was not computed within the server's deadline"},
}


class GridDocument(Grid):
    """A grid as the web API returns it: the `future-lens.grid/2` document plus its permalink."""

    id: str = Field(description="the permalink id")
    permalink: str = Field(description="path of the grid's page, `/g/{id}`; its JSON is at `/g/{id}.json`")


def grid_response(kept: KeptGrid) -> Response:
    """The stored document, byte for byte, so a permalink serves exactly what its author received."""
    return Response(
        content=kept.document_json,
        media_type="application/json",
        headers={"X-Future-Lens-Cache": "hit" if kept.cached else "miss"},
    )


@router.post(
    "/lens",
    summary="Compute (or fetch) a grid",
    response_model=None,
    responses={200: {"model": GridDocument, "description": "the grid document"}, **ERROR_RESPONSES},
)
async def post_lens(request: Request, body: Annotated[GridRequest, Body(openapi_examples=LENS_EXAMPLES)]) -> Response:
    """The grid of `text`: one row per layer, one column per token, N predicted tokens per cell.

    Identical requests (same model, weights, prompts and normalised parameters) are served from the store.
    """
    return grid_response(await keeper_of(request).get_or_compute_async(body, request.is_disconnected))


@router.get(
    "/lens",
    summary="Compute (or fetch) a grid from query parameters",
    response_model=None,
    responses={200: {"model": GridDocument, "description": "the grid document"}, **ERROR_RESPONSES},
)
async def get_lens(
    request: Request,
    text: Annotated[str, Query(description="the input text", examples=["Marty McFly from"])],
    method: Annotated[Method, Query(description="future, logit or fixed")] = "future",
    n_future: Annotated[int, Query(description="tokens decoded per cell")] = 4,
    layers: Annotated[str | None, Query(description="all, 0-29, 0,5,10, ::3 ...", examples=["::3"])] = None,
    top_k: Annotated[int, Query(description="alternatives listed for each cell's first token")] = 5,
    prompt: Annotated[str | None, Query(description="fixed method only: the prompt text")] = None,
    model: Annotated[str | None, Query(description="must name the served model if given")] = None,
) -> Response:
    """Same as `POST /lens`, for a browser address bar or `curl 'http://host/lens?text=...'`."""
    grid_request = parse_request(
        text=text, method=method, n_future=n_future, layers=layers, top_k=top_k, prompt=prompt, model=model
    )
    return grid_response(await keeper_of(request).get_or_compute_async(grid_request, request.is_disconnected))


@router.get(
    "/g/{grid_id}.json",
    summary="A stored grid's JSON",
    response_model=None,
    responses={200: {"model": GridDocument}, 404: {"model": ErrorBody, "description": "no grid with this id"}},
)
def stored_grid_json(request: Request, grid_id: str) -> Response:
    """Exactly the document `POST /lens` returned when the grid was first computed (never recomputed)."""
    kept = keeper_of(request).lookup(grid_id) if is_grid_id(grid_id) else None
    if kept is None:
        return error_response(404, "id", f"no stored grid has the id {grid_id!r}")
    return grid_response(kept)


@router.get("/healthz", summary="What this server serves")
def healthz(request: Request) -> dict[str, object]:
    """Model id, weights fingerprint, device, dtype and the layers that have a trained soft prompt."""
    service = keeper_of(request).service
    model = service.model
    prompts = service.soft_prompts
    return {
        "status": "ok",
        "model": model.id,
        "fingerprint": model.fingerprint,
        "quantization": model.quantization,
        "device": str(model.device),
        "dtype": model.dtype_name,
        "prompt_layers": sorted(prompts.prompts) if prompts else [],
    }
