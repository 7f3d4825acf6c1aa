"""A grid as one self-contained HTML file: the page's own stylesheet and popover script inlined, the data inline.

One source for both: the file inlines the page's `static/lens.css`, `static/cells.css` and `static/lens.js` as they
are at export time, plus a small offline addition (`export/static/offline.css`, `offline.js`) for what the file
needs beyond the page: its header and footer, positions of a selection in the popover title, and trajectories read
from the stored top-k (the page's Track asks the server; the file has none). The page's files are found through
`future_lens/export/page/` (links to `future_lens/server/static/` in a source checkout, copies in an installed wheel).

The file makes no request of any kind (its Content-Security-Policy allows only its own style and script, by hash),
so it opens offline, from an e-mail attachment or a supplementary-material folder, and keeps hover, click and
keyboard popovers. Token text is escaped by Jinja's autoescaping and, in the data, by `tojson`.

Under the model row, as on the page, the depth row shows the grid's `prediction_depth` (future_lens/lens/depth.py)
for each exported column: always the whole grid's, computed over all its layers even when the file shows some.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup, escape

from future_lens.export import palette
from future_lens.export.selection import Selection
from future_lens.export.svg import caption
from future_lens.export.text import pieces
from future_lens.export.trajectory import stored_tracks
from future_lens.lens.depth import depth_definition as prediction_depth_definition
from future_lens.lens.display import WHITESPACE_MARKS, visible_whitespace
from future_lens.lens.grid import Grid, TokenProb

#: The page's files the offline file inlines, in order (static/ of the source checkout).
PAGE_STYLES = ("lens.css", "cells.css")
PAGE_SCRIPTS = ("lens.js",)
#: The offline file's additions (future_lens/export/static/), after the page's.
OFFLINE_STYLE = "offline.css"
OFFLINE_SCRIPT = "offline.js"


class MissingPageAssetError(FileNotFoundError):
    """A page file the offline export inlines could not be found."""


def marked(text: str) -> Markup:
    """Token text as HTML, whitespace and control characters shown as dimmed marks (`.ws`), as on the page."""
    return Markup("").join(
        Markup('<span class="ws">{}</span>').format(piece.text) if piece.mark else escape(piece.text)
        for piece in pieces(text)
    )


def _asset(name: str) -> str:
    return resources.files("future_lens.export").joinpath("static").joinpath(name).read_text(encoding="utf-8")


def page_asset(name: str) -> str:
    """The text of the page's static file `name` (one of PAGE_STYLES / PAGE_SCRIPTS), as shipped in the package."""
    packaged = resources.files("future_lens.export").joinpath("page").joinpath(name)
    if not packaged.is_file():
        raise MissingPageAssetError(
            f"the page's static/{name} is missing from the package (future_lens/export/page/): reinstall future-lens"
        )
    return packaged.read_text(encoding="utf-8")


def _inline_safe(source: str, tag: str) -> str:
    """`source` unchanged, after checking it cannot end its own `<style>`/`<script>` element early."""
    if f"</{tag}" in source.lower():
        raise ValueError(f"a stylesheet or script to inline contains </{tag}")
    return source


@cache
def css() -> str:
    """The file's whole stylesheet: the page's, then the offline additions."""
    parts = [page_asset(name) for name in PAGE_STYLES] + [_asset(OFFLINE_STYLE)]
    return _inline_safe("\n".join(part.rstrip("\n") + "\n" for part in parts), "style")


@cache
def script() -> str:
    """The file's whole script: the page's popover script, then the offline additions."""
    parts = [page_asset(name) for name in PAGE_SCRIPTS] + [_asset(OFFLINE_SCRIPT)]
    return _inline_safe("\n".join(part.rstrip("\n") + "\n" for part in parts), "script")


def _hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


@cache
def content_security_policy() -> str:
    """Nothing but the file's own style and script (by hash): no request leaves it, no injected script runs."""
    return (
        f"default-src 'none'; style-src {_hash(css())}; script-src {_hash(script())}; "
        "base-uri 'none'; form-action 'none'"
    )


@dataclass(frozen=True)
class CellView:
    texts: list[str]
    bucket: int
    match: bool
    agree: list[bool]  # per token: equal to the model's own continuation there

    @property
    def n_agree(self) -> int:
        return sum(self.agree)


@dataclass(frozen=True)
class RowView:
    layer: int
    borrowed: int | None
    cells: list[CellView]


@dataclass(frozen=True)
class DepthCellView:
    """One column's prediction depth as the depth row shows it (as on the page, server/web/render.py): `text` ("17"
    or "–"), what a screen reader says for it, and its tooltip."""

    text: str
    spoken: str
    title: str
    depth: int | None = None


@dataclass(frozen=True)
class DepthRowView:
    """The depth row under the file's grid (the grid's `prediction_depth`) and its definition."""

    cells: list[DepthCellView]
    definition: str


def depth_definition(grid: Grid, selection: Selection) -> str:
    """The depth row's definition (`lens.depth.depth_definition`) and, when the file shows some of the grid's layers,
    that it is still the whole grid's."""
    words = prediction_depth_definition(grid.layers, grid.model.n_layers)
    if len(selection.rows) < len(grid.layers):
        words += f"; the whole grid's depth: this file shows {len(selection.rows)} of its {len(grid.layers)} layers"
    return words


def depth_row(grid: Grid, selection: Selection) -> DepthRowView | None:
    """The depth row of the selected columns (the grid's `prediction_depth`), or None when the grid has none."""
    depths = grid.prediction_depth
    if depths is None or not grid.cells:
        return None
    cells = []
    for column in selection.columns:
        after = f"after token {column} {visible_whitespace(grid.tokens[column].text)}"
        own = visible_whitespace(grid.next_tokens[column].text)
        depth = depths[column]
        if depth is not None:
            title = f"{after}: from layer {depth} on, every layer of the grid reads the model's own next token {own}"
            cells.append(DepthCellView(str(depth), f"layer {depth}", title, depth))
            continue
        last = grid.cells[-1][column].tokens
        read = visible_whitespace(last[0].text) if last else "nothing"
        title = f"{after}: no depth, the grid's last layer ({grid.layers[-1]}) reads {read}, not the model's {own}"
        cells.append(DepthCellView("–", "none", title))
    return DepthRowView(cells, depth_definition(grid, selection))


def continuation(grid: Grid) -> list[list[TokenProb]]:
    """The model's own greedy tokens after each position (only the next token for grids without continuations)."""
    return grid.continuations if grid.continuations is not None else [[token] for token in grid.next_tokens]


def _rows(grid: Grid, selection: Selection) -> list[RowView]:
    own = continuation(grid)
    rows = []
    for r in selection.rows:
        prompt_layer = grid.prompt_layers[r] if grid.prompt_layers is not None else None
        cells = []
        for c in selection.columns:
            cell = grid.cells[r][c]
            match = bool(cell.tokens) and cell.tokens[0].id == grid.next_tokens[c].id
            ids = [token.id for token in own[c]]
            agree = [step < len(ids) and token.id == ids[step] for step, token in enumerate(cell.tokens)]
            texts = [token.text for token in cell.tokens]
            cells.append(CellView(texts, palette.prob_bucket(cell.mean_prob), match, agree))
        rows.append(RowView(grid.layers[r], prompt_layer if prompt_layer != grid.layers[r] else None, cells))
    return rows


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def popover_data(grid: Grid, selection: Selection) -> dict[str, object]:
    """What the page's popover script reads (the page's data island, for the selected rows and columns: raw texts,
    it marks them itself), with the selection's token positions and, per column, the stored top-k trajectories."""

    def pairs(tokens: list[TokenProb]) -> list[list[object]]:
        return [[token.text, round(token.prob, 5)] for token in tokens]

    rows, columns = selection.rows, selection.columns
    own = continuation(grid)
    return {
        "marks": WHITESPACE_MARKS,
        "method": grid.method,
        "layers": [grid.layers[r] for r in rows],
        "prompt_layers": [grid.prompt_layers[r] for r in rows] if grid.prompt_layers is not None else None,
        "positions": list(columns),
        "tokens": [grid.tokens[c].text for c in columns],
        "next": pairs([grid.next_tokens[c] for c in columns]),
        "cont": [pairs(own[c]) for c in columns],
        "cells": [
            [
                {
                    "t": pairs(cell.tokens),
                    "k": pairs(cell.topk),
                    "ki": [token.id for token in cell.topk],
                    "m": round(cell.mean_prob, 5),
                    "s": [cell.next_rank, _rounded(cell.entropy), _rounded(cell.kl)],
                }
                for cell in (grid.cells[r][c] for c in columns)
            ]
            for r in rows
        ],
        "track": stored_tracks(grid, selection),
    }


@cache
def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("future_lens.export", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["marked"] = marked
    env.filters["percent"] = palette.percent
    return env


def grid_html(grid: Grid, selection: Selection | None = None, grid_id: str | None = None) -> str:
    """The grid (or the selected rows and columns) as a standalone HTML document; `grid_id` names its permalink."""
    sel = selection or Selection.whole(grid)
    rows = _rows(grid, sel)
    own = continuation(grid)
    return (
        _environment()
        .get_template("offline.html")
        .render(
            grid=grid,
            grid_id=grid_id,
            caption=caption(grid, sel),
            rows=rows,
            columns=list(sel.columns),
            continuation=[own[c] for c in sel.columns],
            borrowed=any(row.borrowed is not None for row in rows),
            depth=depth_row(grid, sel),
            data=popover_data(grid, sel),
            csp=content_security_policy(),
            css=Markup(css()),
            js=Markup(script()),
        )
    )
