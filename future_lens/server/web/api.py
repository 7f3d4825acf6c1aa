"""The JSON API: `POST /lens`, `GET /lens?text=...`, `GET /g/{id}.json` (and its exports `.svg`, `.png`, `.csv`,
`.html`), `GET /healthz`."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import Field

from future_lens import defaults
from future_lens.export import MEDIA_TYPES, PngSizeError, SelectionError, export, select
from future_lens.export.html import content_security_policy
from future_lens.export.png import MAX_SCALE, MIN_SCALE
from future_lens.export.svg import MAX_CHARS, MAX_COLUMNS, MIN_CHARS
from future_lens.lens.grid import Grid
from future_lens.lens.track import Track
from future_lens.server.store import is_grid_id
from future_lens.server.web.cells import compute_track, replan
from future_lens.server.web.errors import ErrorBody, error_response
from future_lens.server.web.keeper import GridKeeper, KeptGrid, keeper_of
from future_lens.server.web.ratelimit import SPENDS_MODEL_TIME
from future_lens.server.web.streaming import NDJSON, ndjson_lines, start_stream, wants_ndjson
from future_lens.service import GridRequest, InvalidRequestError, method_schema, parse_request

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


STREAMED_200: dict[str, object] = {
    "description": "the grid document; with `Accept: application/x-ndjson`, the streamed grid (NDJSON)",
    "content": {
        NDJSON: {
            "schema": {"type": "string"},
            "example": '{"kind":"head","rows_total":16,"grid":{...}}\n{"kind":"row","row":0,"layer":0,...}\n'
            '... one line per row ...\n{"schema":"future-lens.grid/3",...,"id":"...","permalink":"/g/..."}\n',
        }
    },
}


class GridDocument(Grid):
    """A grid as the web API returns it: the grid document (its `schema` names the format's version) plus its
    permalink."""

    id: str = Field(description="the permalink id")
    permalink: str = Field(description="path of the grid's page, `/g/{id}`; its JSON is at `/g/{id}.json`")


class TrackedGridDocument(GridDocument):
    """The grid document; with `track` in the request, its trajectories too (never stored with the permalink)."""

    track: Track | None = Field(None, description="present when the request listed `track` token ids")


async def tracked_grid_response(keeper: GridKeeper, kept: KeptGrid, token_ids: list[int]) -> Response:
    """The stored document plus the `track` object of `token_ids`, computed on the worker."""
    planned = await asyncio.to_thread(replan, keeper, kept, token_ids)  # artifacts may be read: not on the loop
    track = await compute_track(keeper, planned, kept.id, token_ids)
    document = {**json.loads(kept.document_json), "track": track.model_dump(mode="json")}
    content = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    headers = {"X-Future-Lens-Cache": "hit" if kept.cached else "miss"}
    return Response(content=content, media_type="application/json", headers=headers)


def grid_response(kept: KeptGrid) -> Response:
    """The stored document, byte for byte, so a permalink serves exactly what its author received."""
    return Response(
        content=kept.document_json,
        media_type="application/json",
        headers={"X-Future-Lens-Cache": "hit" if kept.cached else "miss"},
    )


@router.post(
    "/lens",
    dependencies=[SPENDS_MODEL_TIME],
    summary="Compute (or fetch) a grid",
    response_model=None,
    responses={200: {**STREAMED_200, "model": TrackedGridDocument}, **ERROR_RESPONSES},
)
async def post_lens(request: Request, body: Annotated[GridRequest, Body(openapi_examples=LENS_EXAMPLES)]) -> Response:
    """The grid of `text`: one row per layer, one column per token, N predicted tokens per cell.

    Identical requests (same model, weights, prompts and normalised parameters) are served from the store. With
    `track` (token ids) the response also has a `track` object: each token's probability and rank at every cell.

    With `Accept: application/x-ndjson` the grid streams as it is computed: one JSON line for its frame (`head`),
    one per row (`row`; the middle row first), then the final document, equal to
    `GET /g/{id}.json` (docs/grid-format.md, "Streaming"). Closing the connection stops the computation.
    """
    keeper = keeper_of(request)
    if wants_ndjson(request.headers.get("accept")):
        if body.track:
            raise InvalidRequestError("track", "track is not streamed: ask without Accept: application/x-ndjson")
        started = await asyncio.to_thread(start_stream, keeper, body)
        lines = ndjson_lines(started, keeper.worker.default_timeout_s)
        return StreamingResponse(lines, media_type=NDJSON, headers={"X-Accel-Buffering": "no"})
    kept = await keeper.get_or_compute_async(body, request.is_disconnected)
    if not body.track:
        return grid_response(kept)
    return await tracked_grid_response(keeper, kept, body.track)


@router.get(
    "/lens",
    dependencies=[SPENDS_MODEL_TIME],
    summary="Compute (or fetch) a grid from query parameters",
    response_model=None,
    responses={200: {"model": GridDocument, "description": "the grid document"}, **ERROR_RESPONSES},
)
async def get_lens(
    request: Request,
    text: Annotated[str, Query(description="the input text", examples=["Marty McFly from"])],
    method: Annotated[str, Query(json_schema_extra=method_schema)] = defaults.METHOD,
    n_future: Annotated[int, Query(description="tokens decoded per cell")] = defaults.N_FUTURE,
    layers: Annotated[str | None, Query(description="all, 0-29, 0,5,10, ::3 ...", examples=["::3"])] = None,
    top_k: Annotated[int, Query(description="alternatives listed for each cell's first token")] = defaults.TOP_K,
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


LayersQuery = Annotated[
    str | None,
    Query(description="the grid's layers to export: 0-10, ::3, 0,5,10 ... (default: all)", examples=["0-10"]),
]
TokensQuery = Annotated[
    str | None,
    Query(description="token positions to export: 2:8 (2 to 7), 2-7, -4: ... (default: all)", examples=["2:8"]),
]
CharsQuery = Annotated[
    int, Query(ge=MIN_CHARS, le=MAX_CHARS, description="characters drawn per cell before `…` (fewer: narrower columns)")
]
#: What an exported file may load: nothing (the HTML file: its own inline style and script, by hash).
EXPORT_CSP = "default-src 'none'"


def export_responses(media_type: str) -> dict[int | str, dict[str, object]]:
    """OpenAPI responses of an export route: the file, 404 for an unknown id, 422 for a bad option."""
    return {
        200: {"content": {media_type: {}}, "description": "the exported grid"},
        404: {"model": ErrorBody, "description": "no grid with this id"},
        422: {"model": ErrorBody, "description": "`layers`, `tokens`, `scale` or `chars` cannot be used"},
    }


def export_response(
    request: Request,
    grid_id: str,
    fmt: str,
    layers: str | None,
    tokens: str | None,
    scale: float = 2.0,
    chars: int = MAX_COLUMNS,
) -> Response:
    """The stored grid (never recomputed) as `fmt`, restricted to `layers` and `tokens`."""
    kept = keeper_of(request).lookup(grid_id) if is_grid_id(grid_id) else None
    if kept is None:
        return error_response(404, "id", f"no stored grid has the id {grid_id!r}")
    grid = kept.grid
    try:
        exported = export(grid, fmt, select(grid, layers, tokens), scale, kept.id, chars)
    except SelectionError as error:
        return error_response(422, error.field, error.message)
    except PngSizeError as error:
        return error_response(422, "scale", str(error))
    disposition = "attachment" if fmt in ("csv", "html") else "inline"
    headers = {
        "Content-Disposition": f'{disposition}; filename="future-lens-{kept.id}.{fmt}"',
        "Content-Security-Policy": content_security_policy() if fmt == "html" else EXPORT_CSP,
    }
    return Response(exported.content, media_type=exported.media_type, headers=headers)


@router.get(
    "/g/{grid_id}.svg",
    summary="A stored grid as an SVG figure",
    response_class=Response,
    responses=export_responses(MEDIA_TYPES["svg"]),
)
def stored_grid_svg(
    request: Request,
    grid_id: str,
    layers: LayersQuery = None,
    tokens: TokensQuery = None,
    chars: CharsQuery = MAX_COLUMNS,
) -> Response:
    """A vector figure of the grid (or a layer/token range): the page's colours, match marks and legend."""
    return export_response(request, grid_id, "svg", layers, tokens, chars=chars)


@router.get(
    "/g/{grid_id}.png",
    summary="A stored grid as a PNG image",
    response_class=Response,
    responses=export_responses(MEDIA_TYPES["png"]),
)
def stored_grid_png(
    request: Request,
    grid_id: str,
    layers: LayersQuery = None,
    tokens: TokensQuery = None,
    scale: Annotated[float, Query(ge=MIN_SCALE, le=MAX_SCALE, description="pixels per SVG unit")] = 2.0,
    chars: CharsQuery = MAX_COLUMNS,
) -> Response:
    """The SVG figure rendered at `scale` (resvg, with fonts shipped in the package)."""
    return export_response(request, grid_id, "png", layers, tokens, scale, chars)


@router.get(
    "/g/{grid_id}.csv",
    summary="A stored grid as long-format CSV",
    response_class=Response,
    responses=export_responses(MEDIA_TYPES["csv"]),
)
def stored_grid_csv(request: Request, grid_id: str, layers: LayersQuery = None, tokens: TokensQuery = None) -> Response:
    """One row per predicted token (kind `predicted`, k = step) and per alternative (kind `topk`, k = rank),
    with the cell's layer, position, input token, actual next token, `mean_prob` and `first_matches_next`."""
    return export_response(request, grid_id, "csv", layers, tokens)


@router.get(
    "/g/{grid_id}.html",
    summary="A stored grid as a standalone offline HTML file",
    response_class=Response,
    responses=export_responses(MEDIA_TYPES["html"]),
)
def stored_grid_html(
    request: Request, grid_id: str, layers: LayersQuery = None, tokens: TokensQuery = None
) -> Response:
    """One file with inline style, script and data: opens offline and keeps the popovers; loads nothing."""
    return export_response(request, grid_id, "html", layers, tokens)


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
