"""Comparing two stored grids: `POST /compare` (grid A + another form → grid B), `/compare/{a}/{b}` (side by side or
DIFF, no recompute) and `/compare/{a}/{b}.json` (the diff document, `future-lens.diff/1`).

The view lives in the URL: `?view=side|diff&t=<threshold>&layers=<spec>` and `#cell=<pane>:<row>,<column>` (pane
`a`, `b` or `diff`) for the selected cell, so a link opens the view its author saw, popover included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from future_lens.lens.diff import (
    DEFAULT_THRESHOLD,
    CellDiff,
    ColumnPair,
    GridDiff,
    check_threshold,
    diff_grids,
    select_rows,
)
from future_lens.lens.grid import Grid
from future_lens.lens.layers import LayerSpecError, parse_layers, quoted
from future_lens.lens.registry import lens_label
from future_lens.server.store import is_grid_id
from future_lens.server.web.errors import ErrorBody, error_response
from future_lens.server.web.keeper import KeptGrid, keeper_of, permalink_path
from future_lens.server.web.pages import SubmittedForm, form_request, render
from future_lens.server.web.ratelimit import SPENDS_MODEL_TIME
from future_lens.server.web.render import GridView, grid_view
from future_lens.service import InvalidRequestError

router = APIRouter()

View = Literal["side", "diff"]


@dataclass(frozen=True)
class CompareState:
    """What the URL's query says about a comparison view (the fragment, `#cell=…`, stays in the browser)."""

    view: View = "diff"
    threshold: float = DEFAULT_THRESHOLD
    layers: str = ""  # a layer spec (`0-10`, `::3`, …); empty: every layer both grids have

    def query(self, **changes: object) -> str:
        """This state (with `changes`) as a query string, defaults left out."""
        values = {"view": self.view, "t": f"{self.threshold:g}", "layers": self.layers}
        values.update({key: str(value) for key, value in changes.items()})
        defaults = {"view": "diff", "t": f"{DEFAULT_THRESHOLD:g}", "layers": ""}
        kept = {key: value for key, value in values.items() if value != defaults[key]}
        return "?" + urlencode(kept) if kept else ""


def compare_path(id_a: str, id_b: str) -> str:
    return f"/compare/{id_a}/{id_b}"


#: The longest `t` read as a number (`0.05`, `1e-3`, …); longer ones are refused unread.
MAX_THRESHOLD_CHARS = 40


def parse_state(view: str, threshold: str | None, layers: str | None) -> CompareState:
    """The query's state; `InvalidRequestError` naming `view`, `t` or `layers` when one is malformed."""
    if view not in ("side", "diff"):
        raise InvalidRequestError("view", "view must be 'side' or 'diff'")
    value = DEFAULT_THRESHOLD
    if threshold is not None and len(threshold) > MAX_THRESHOLD_CHARS:  # before float() reads it
        raise InvalidRequestError("t", f"t (threshold) has {len(threshold)} characters: give a number between 0 and 1")
    if threshold not in (None, ""):
        try:
            value = check_threshold(float(threshold))
        except ValueError:
            raise InvalidRequestError("t", "t (threshold) must be a number between 0 and 1") from None
    return CompareState(view=view, threshold=value, layers=(layers or "").strip())  # type: ignore[arg-type]


def layer_subset(spec: str, grid: Grid) -> list[int] | None:
    """The block indices a layer spec selects (None: no spec, every layer)."""
    if not spec:
        return None
    try:
        return parse_layers(spec, grid.model.n_layers)
    except LayerSpecError as error:
        raise InvalidRequestError("layers", str(error)) from None


@dataclass(frozen=True)
class Compared:
    """Two stored grids and their diff under one state."""

    a: KeptGrid
    b: KeptGrid
    state: CompareState
    diff: GridDiff
    subset: list[int] | None

    @property
    def permalink(self) -> str:
        return compare_path(self.a.id, self.b.id)


def compare(a: KeptGrid, b: KeptGrid, state: CompareState) -> Compared:
    subset = layer_subset(state.layers, a.grid)
    return Compared(a, b, state, diff_grids(a.grid, b.grid, state.threshold, subset), subset)


def lookup_pair(request: Request, id_a: str, id_b: str) -> tuple[KeptGrid, KeptGrid] | str:
    """Both stored grids, or the field (`a` or `b`) whose id is not stored."""
    keeper = keeper_of(request)
    kept = {}
    for field, grid_id in (("a", id_a), ("b", id_b)):
        found = keeper.lookup(grid_id) if is_grid_id(grid_id) else None
        if found is None:
            return field
        kept[field] = found
    return kept["a"], kept["b"]


# ---------- the page ----------


@dataclass(frozen=True)
class DiffCellView:
    """One cell of the DIFF table (`diff` None: a position only one text has)."""

    a: list[str]
    b: list[str]
    diff: CellDiff | None
    row_a: int
    row_b: int

    @property
    def delta_points(self) -> str:
        """The first token's probability change in percentage points, signed (`+12`, `−3`, `±0`)."""
        if self.diff is None:
            return ""
        points = round(self.diff.prob_delta * 100)
        return "±0" if points == 0 else f"{points:+d}".replace("-", "−")


@dataclass(frozen=True)
class DiffRowView:
    layer: int
    cells: list[DiffCellView]


def diff_rows(compared: Compared) -> list[DiffRowView]:
    a, b, diff = compared.a.grid, compared.b.grid, compared.diff
    rows = []
    for pair, cells in zip(diff.rows, diff.cells, strict=True):
        views = []
        for column, cell in zip(diff.columns, cells, strict=True):
            t = column.position
            tokens_a = [token.text for token in a.cells[pair.a][t].tokens] if t < len(a.tokens) else []
            tokens_b = [token.text for token in b.cells[pair.b][t].tokens] if t < len(b.tokens) else []
            views.append(DiffCellView(tokens_a, tokens_b, cell, pair.a, pair.b))
        rows.append(DiffRowView(pair.layer, views))
    return rows


def describe(grid: Grid) -> str:
    """A grid in a few words: method, N, rows × tokens (and the fixed prompt's presence)."""
    method = lens_label(grid.method)
    return f"{method} · N = {grid.n_future} · {len(grid.layers)} layers × {len(grid.tokens)} tokens"


def pane_view(kept: KeptGrid, subset: list[int] | None) -> GridView:
    grid = kept.grid if subset is None else select_rows(kept.grid, subset)
    return grid_view(grid, kept.id, permalink_path(kept.id), True)


def text_of(kept: KeptGrid) -> str:
    return str(kept.request.get("text", "".join(token.text for token in kept.grid.tokens)))


def compare_page(request: Request, compared: Compared) -> HTMLResponse:
    a, b, state = compared.a, compared.b, compared.state
    return render(
        request,
        "compare.html",
        compared=compared,
        state=state,
        columns=compared.diff.columns,
        rows=diff_rows(compared),
        view_a=pane_view(a, compared.subset),
        view_b=pane_view(b, compared.subset),
        data_a=pane_view(a, None).popover_data() if state.view == "diff" else None,  # rows as in diff.rows[i].a
        data_b=pane_view(b, None).popover_data() if state.view == "diff" else None,
        text_a=text_of(a),
        text_b=text_of(b),
        describe=describe,
        column_label=column_label,
        links={
            "side": compared.permalink + state.query(view="side"),
            "diff": compared.permalink + state.query(view="diff"),
            "swap": compare_path(b.id, a.id) + state.query(),
            "json": compared.permalink + ".json" + state.query(view="diff"),
        },
    )


def column_label(column: ColumnPair) -> str:
    """Why a DIFF column looks as it does: `same token`, `A: x · B: y`, `only in A`."""
    if column.a is None:
        return "only in B"
    if column.b is None:
        return "only in A"
    return "same token" if column.same_token else "tokens differ"


def problem_page(request: Request, status: int, field: str, message: str) -> HTMLResponse:
    return render(request, "compare_error.html", status=status, error={"field": field, "message": message})


@router.get(
    "/compare/{id_a}/{id_b}.json",
    summary="The diff of two stored grids",
    response_model=None,
    responses={404: {"model": ErrorBody, "description": "no grid with id_a or id_b"}, 422: {"model": ErrorBody}},
)
def compare_json(
    request: Request,
    id_a: str,
    id_b: str,
    t: Annotated[
        str | None, Query(description="threshold: |Δ first-token probability| that marks a cell (0..1)")
    ] = None,
    layers: Annotated[str | None, Query(description="only these layers: 0-10, ::3, 0,5,10 …")] = None,
) -> Response:
    """Grid `id_a` against grid `id_b` cell by cell (`future-lens.diff/1`, docs/grid-format.md); no recompute:
    both are read from the store (404 naming `a` or `b` when one is not there)."""
    found = lookup_pair(request, id_a, id_b)
    if isinstance(found, str):
        missing = id_a if found == "a" else id_b
        return error_response(404, found, f"no stored grid has the id {missing!r}")
    try:
        compared = compare(*found, parse_state("diff", t, layers))
    except InvalidRequestError as error:
        return error_response(422, error.field, error.message)
    body = compared.diff.model_dump(mode="json", by_alias=True)
    ids = {"a": compared.a.id, "b": compared.b.id}
    links = {"permalink": compared.permalink, "grids": {k: permalink_path(v) for k, v in ids.items()}}
    return JSONResponse({**body, **links, "n_differ": compared.diff.n_differ})


@router.get("/compare/{id_a}/{id_b}", response_class=HTMLResponse, include_in_schema=False)
def compare_view(
    request: Request, id_a: str, id_b: str, view: str = "diff", t: str | None = None, layers: str | None = None
) -> HTMLResponse:
    """Two stored grids side by side or as a DIFF, exactly as stored (no recomputation)."""
    found = lookup_pair(request, id_a, id_b)
    if isinstance(found, str):
        missing = id_a if found == "a" else id_b
        return render(request, "not_found.html", status=404, grid_id=missing)
    try:
        compared = compare(*found, parse_state(view, t, layers))
    except InvalidRequestError as error:
        return problem_page(request, 422, error.field, error.message)
    return compare_page(request, compared)


@router.post("/compare", include_in_schema=False, dependencies=[SPENDS_MODEL_TIME])
def submit_compare(
    request: Request,
    form: SubmittedForm,
    a: Annotated[str, Form()] = "",
) -> Response:
    """ "Compare with…" from a grid: computes (or finds) grid B from the form, then opens `/compare/{a}/{b}`."""
    keeper = keeper_of(request)
    kept_a = keeper.lookup(a) if is_grid_id(a) else None
    if kept_a is None:
        return problem_page(request, 404, "a", f"no stored grid has the id {quoted(a)} to compare with")
    try:
        kept_b = keeper.get_or_compute(form_request(keeper, form))
    except InvalidRequestError as error:
        return problem_page(request, 422, "stride" if error.field == "layers" else error.field, error.message)
    return RedirectResponse(compare_path(kept_a.id, kept_b.id), status_code=303)
