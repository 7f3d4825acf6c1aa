"""The HTML pages: `/` (form + grid), `POST /grid` (htmx fragment), `/g/{id}` (stored grid), `/about`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from sse_starlette import EventSourceResponse, ServerSentEvent

from future_lens import defaults
from future_lens.lens.grid import SCHEMA, Grid
from future_lens.lens.layers import strided_layers
from future_lens.lens.lenses import PAPER_FIXED_PROMPT
from future_lens.server.store import is_grid_id
from future_lens.server.web.keeper import GridKeeper, KeptGrid, keeper_of, permalink_path
from future_lens.server.web.ratelimit import SPENDS_MODEL_TIME
from future_lens.server.web.render import GridView, grid_view, infer_stride, row_view
from future_lens.server.web.reports import PLOTS, load_eval_report, plot_path, served_calibration
from future_lens.server.web.streaming import StreamEvent, StreamHead, StreamRow, follow, start_stream, stream_failure
from future_lens.server.worker import QueueFullError
from future_lens.service import GridRequest, InvalidRequestError, method_labels, parse_request

router = APIRouter(include_in_schema=False)

EXAMPLE_TEXT = "Marty McFly from"
DEFAULT_STRIDE = 2
#: Sent with every page: no inline script or style, nothing from other origins.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class FormState:
    """What the form shows: the last submitted values, or the defaults."""

    text: str = EXAMPLE_TEXT
    method: str = defaults.METHOD
    n_future: str = str(defaults.N_FUTURE)
    stride: str = str(DEFAULT_STRIDE)
    prompt: str = PAPER_FIXED_PROMPT


@dataclass(frozen=True)
class FutureAvailability:
    available: bool
    reason: str = ""


def future_availability(keeper: GridKeeper) -> FutureAvailability:
    """Whether the future lens can run (trained prompts that fit the model) and, if not, why (checked once, when
    the service was made: no artifact is read here)."""
    problem = keeper.service.problem("future")
    return FutureAvailability(problem is None, problem or "")


def render_html(request: Request, template: str, **context: object) -> str:
    """A template rendered with the common context."""
    state = request.app.state
    keeper = keeper_of(request)
    return state.templates.get_template(template).render(
        asset_version=state.asset_version,
        model=keeper.service.model,
        limits=keeper.service.limits,
        n_layers=keeper.service.model.adapter.n_layers,
        methods=keeper.service.available_methods(),
        method_labels=method_labels(),
        schema=SCHEMA,
        **context,
    )


def render(request: Request, template: str, status: int = 200, **context: object) -> HTMLResponse:
    """Render a template with the common context and the page's security headers."""
    html = render_html(request, template, **context)
    headers = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Referrer-Policy": "same-origin"}
    return HTMLResponse(html, status_code=status, headers=headers)


def kept_view(kept: KeptGrid, reports_dir: Path) -> GridView:
    """A kept grid ready to render, its legend saying how often cells of each shade were right (if measured)."""
    grid = kept.grid
    model = grid.model
    calibration = served_calibration(reports_dir, model.id, model.fingerprint, grid.method, grid.prompt)
    return grid_view(grid, kept.id, permalink_path(kept.id), kept.cached, calibration)


def page_context(
    request: Request, keeper: GridKeeper, form: FormState, kept: KeptGrid | None = None
) -> dict[str, object]:
    """Context of the main page: the form (the future lens only offered when it can run) and maybe a grid."""
    future = future_availability(keeper)
    if not future.available and form.method == "future" and kept is None:
        form = replace(form, method="logit")
    view = kept_view(kept, request.app.state.reports_dir) if kept else None
    return {"form": form, "future": future, "view": view}


def form_request(keeper: GridKeeper, form: FormState) -> GridRequest:
    """The grid request a form submission means; errors name the form's fields (`stride`, not `layers`)."""
    n_layers = keeper.service.model.adapter.n_layers
    if len(form.stride) > len(str(n_layers)) + 8:  # checked before int() reads it (no stride has more digits)
        raise InvalidRequestError("stride", f"layer stride must be a whole number between 1 and {n_layers}")
    try:
        stride = int(form.stride)
    except ValueError:
        raise InvalidRequestError("stride", "layer stride must be a whole number") from None
    if not 1 <= stride <= n_layers:
        raise InvalidRequestError("stride", f"layer stride must be between 1 and {n_layers}")
    layers = strided_layers(n_layers, stride)
    prompt = form.prompt if form.method == "fixed" else None
    return parse_request(text=form.text, method=form.method, n_future=form.n_future, layers=layers, prompt=prompt)


@router.get("/", response_class=HTMLResponse)
def index(request: Request) -> HTMLResponse:
    """The page: a form pre-filled with an example."""
    return render(request, "index.html", **page_context(request, keeper_of(request), FormState()))


def submitted_form(
    text: Annotated[str, Form()] = "",
    method: Annotated[str, Form()] = defaults.METHOD,
    n_future: Annotated[str, Form()] = str(defaults.N_FUTURE),
    stride: Annotated[str, Form()] = str(DEFAULT_STRIDE),
    prompt: Annotated[str, Form()] = PAPER_FIXED_PROMPT,
) -> FormState:
    """The grid form as posted (the page's form and "Compare with…" share it); checked later by `form_request`."""
    return FormState(text=text, method=method, n_future=n_future, stride=stride, prompt=prompt)


SubmittedForm = Annotated[FormState, Depends(submitted_form)]


@router.post("/grid", response_class=HTMLResponse, dependencies=[SPENDS_MODEL_TIME])
def submit_grid(request: Request, form: SubmittedForm) -> Response:
    """The form's target. htmx gets the grid fragment (and the permalink pushed to the address bar);
    a plain form post is redirected to the permalink page. Invalid input: 422 with the message inline."""
    keeper = keeper_of(request)
    is_htmx = request.headers.get("HX-Request") == "true"
    try:
        kept = keeper.get_or_compute(form_request(keeper, form))
    except InvalidRequestError as error:
        field = "stride" if error.field == "layers" else error.field
        problem = {"field": field, "message": error.message}
        if is_htmx:
            return render(request, "_error.html", status=422, error=problem)
        return render(request, "index.html", status=422, error=problem, **page_context(request, keeper, form))
    if not is_htmx:
        return RedirectResponse(pushed_permalink(kept, form, keeper.service.limits.max_n_future), status_code=303)
    response = render(request, "_result.html", **page_context(request, keeper, form, kept))
    response.headers["HX-Push-Url"] = pushed_permalink(kept, form, keeper.service.limits.max_n_future)
    return response


def stream_event(request: Request, event: StreamEvent, form: FormState, head: GridView | None) -> ServerSentEvent:
    """One Server-Sent Event of a streamed grid, as HTML the page swaps in (rendered here, so escaped here)."""
    if isinstance(event, StreamHead):
        view = kept_view_of(request, event.grid)
        html = render_html(request, "_streaming.html", view=view, total=event.rows_total, done=0)
        return ServerSentEvent(json.dumps({"html": html, "total": event.rows_total}), event="head")
    if isinstance(event, StreamRow):
        grid, row = head.grid, event.row
        view = row_view(grid, row.index, row.cells)
        macro = request.app.state.templates.get_template("_row.html").module.grid_row
        cells = grid.model_copy(update={"cells": [row.cells], "layers": [row.layer]})  # this row alone
        payload = {
            "r": row.index,
            "html": str(macro(view, row.index, len(grid.tokens), grid.n_future)),
            "cells": GridView(cells, "", "", False, []).popover_data()["cells"][0],
            "done": event.rows_done,
            "total": event.rows_total,
        }
        return ServerSentEvent(json.dumps(payload), event="row")
    kept = event.kept
    html = render_html(request, "_result.html", **page_context(request, keeper_of(request), form, kept))
    max_n_future = keeper_of(request).service.limits.max_n_future
    return ServerSentEvent(
        json.dumps({"html": html, "permalink": pushed_permalink(kept, form, max_n_future)}), event="done"
    )


def failed_event(request: Request, field: str | None, message: str) -> ServerSentEvent:
    html = render_html(request, "_error.html", error={"field": field, "message": message})
    return ServerSentEvent(json.dumps({"html": html, "field": field}), event="failed")


def kept_view_of(request: Request, grid: Grid) -> GridView:
    """A grid being computed (no id yet) ready to render."""
    return grid_view(grid, "", "", False)


@router.get("/grid/stream", dependencies=[SPENDS_MODEL_TIME])
async def stream_grid(
    request: Request,
    text: str = "",
    method: str = defaults.METHOD,
    n_future: str = str(defaults.N_FUTURE),
    stride: str = str(DEFAULT_STRIDE),
    prompt: str = PAPER_FIXED_PROMPT,
) -> EventSourceResponse:
    """The form's grid as Server-Sent Events (`head`, one `row` per row, `done` with the stored grid's HTML and
    permalink, or `failed`). Closing the connection (the page, or its Cancel button) stops the computation."""
    keeper = keeper_of(request)
    form = FormState(text=text, method=method, n_future=n_future, stride=stride, prompt=prompt)
    headers = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Accel-Buffering": "no"}
    try:
        started = await asyncio.to_thread(start_stream, keeper, form_request(keeper, form))
    except InvalidRequestError as error:
        failed = failed_event(request, "stride" if error.field == "layers" else error.field, error.message)
        return EventSourceResponse(iter([failed]), headers=headers)
    except QueueFullError as error:
        return EventSourceResponse(iter([failed_event(request, None, str(error))]), headers=headers)

    async def events() -> AsyncIterator[ServerSentEvent]:
        head: GridView | None = None
        try:
            async for event in follow(started, keeper.worker.default_timeout_s):
                if isinstance(event, StreamHead):
                    head = kept_view_of(request, event.grid)
                yield stream_event(request, event, form, head)
        except Exception as error:  # any failure after the stream started ends it with a `failed` event
            message = stream_failure(error)[1]
            yield failed_event(request, None, message[:1].upper() + message[1:])

    return EventSourceResponse(events(), headers=headers, ping=15)


def submitted_n(value: str | None, max_n_future: int) -> int | None:
    """A form's or a permalink's N as a number, or None when it is not one the form accepts."""
    try:
        n_future = int(value or "")
    except ValueError:
        return None
    return n_future if 1 <= n_future <= max_n_future else None


def pushed_permalink(kept: KeptGrid, form: FormState, max_n_future: int) -> str:
    """The permalink the address bar gets after a submit: `/g/{id}`, plus `?n=` the submitted N when the stored
    request's N differs (next-token lenses store N = 1), so that reopening it refills the form as submitted."""
    path = permalink_path(kept.id)
    n_future = submitted_n(form.n_future, max_n_future)
    return path if n_future is None or n_future == kept.request.get("n_future") else f"{path}?n={n_future}"


def form_from_stored(kept: KeptGrid, n_layers: int, max_n_future: int, n: str | None = None) -> FormState:
    """The form as its author submitted it, as far as the stored canonical request tells; `n` (the permalink's
    `?n=`, when valid) is the submitted N, which the request of a next-token lens does not keep."""
    request = kept.request
    layers = [int(layer) for layer in request.get("layers", [])]
    stride = infer_stride(layers, n_layers)
    n_future = submitted_n(n, max_n_future) or request.get("n_future", defaults.N_FUTURE)
    return FormState(
        text=str(request.get("text", EXAMPLE_TEXT)),
        method=str(request.get("method", "future")),
        n_future=str(n_future),
        stride=str(stride or DEFAULT_STRIDE),
        prompt=str(request.get("prompt") or PAPER_FIXED_PROMPT),
    )


@router.get("/g/{grid_id}", response_class=HTMLResponse)
def stored_grid_page(request: Request, grid_id: str, n: str | None = None) -> HTMLResponse:
    """A stored grid as a full page, exactly as computed then (no recomputation); `?n=` refills the form's N."""
    keeper = keeper_of(request)
    kept = keeper.lookup(grid_id) if is_grid_id(grid_id) else None
    if kept is None:
        return render(request, "not_found.html", status=404, grid_id=grid_id)
    form = form_from_stored(kept, keeper.service.model.adapter.n_layers, keeper.service.limits.max_n_future, n)
    return render(request, "index.html", **page_context(request, keeper, form, kept))


@router.get("/about", response_class=HTMLResponse)
def about(request: Request) -> HTMLResponse:
    """What the grid means, the method, and the served model's evaluation report if there is one."""
    keeper = keeper_of(request)
    prompts = keeper.service.soft_prompts
    model = keeper.service.model
    report = load_eval_report(request.app.state.reports_dir, model.id, model.fingerprint)
    return render(
        request,
        "about.html",
        report=report,
        prompt_layers=sorted(prompts.prompts) if prompts else [],
        fixed_prompt=PAPER_FIXED_PROMPT,
        future=future_availability(keeper),
        plot_captions=PLOTS,
    )


def plot_response(request: Request, stem: str) -> Response:
    """The served model's plot `stem` (a fixed name: the path comes from the configuration, never the request)."""
    path = plot_path(request.app.state.reports_dir, keeper_of(request).service.model.id, stem)
    if path is None:
        return Response(f"no {stem} plot for this model yet", status_code=404, media_type="text/plain")
    return FileResponse(path, media_type="image/png")


@router.get("/about/eval.png")
def eval_plot(request: Request) -> Response:
    """Precision@1 against depth for every method."""
    return plot_response(request, "eval")


@router.get("/about/calibration.png")
def calibration_plot(request: Request) -> Response:
    """Reliability diagrams of the lenses' probabilities."""
    return plot_response(request, "calibration")


@router.get("/about/kl.png")
def kl_plot(request: Request) -> Response:
    """KL of the next-token readouts to the model, per layer."""
    return plot_response(request, "kl")


@router.get("/about/learning_curve.png")
def learning_curve_plot(request: Request) -> Response:
    """The learned prompts' held-out precision against training examples."""
    return plot_response(request, "learning_curve")
