"""A grid as one self-contained HTML file: inline CSS, a small inline script for the popover, the data inline.

It makes no request of any kind (its Content-Security-Policy allows only its own style and script, by hash), so it
opens offline, from an e-mail attachment or a supplementary-material folder, and keeps hover, click and keyboard
popovers. Token text is escaped by Jinja's autoescaping and, in the data, by `tojson`.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup, escape

from app.export import palette
from app.export.selection import Selection
from app.export.svg import caption
from app.export.text import pieces
from app.lens.display import WHITESPACE_MARKS
from app.lens.grid import Grid


def marked(text: str) -> Markup:
    """Token text as HTML, whitespace and control characters shown as dimmed marks (`.ws`), as on the page."""
    return Markup("").join(
        Markup('<span class="ws">{}</span>').format(piece.text) if piece.mark else escape(piece.text)
        for piece in pieces(text)
    )


def palette_css() -> str:
    """The shade rules, from the one palette: `.pN` backgrounds, white text on dark shades, greys when borrowed."""
    rules = []
    for bucket, (blue, grey) in enumerate(zip(palette.SHADES, palette.BORROWED_SHADES, strict=True)):
        ink = f" color: {palette.ON_DARK};" if bucket >= palette.DARK_FROM else ""
        rules.append(f".p{bucket} {{ background: {blue};{ink} }}")
        rules.append(f"tr.borrowed td.cell.p{bucket} {{ background: {grey}; }}")
    return "\n".join(rules) + "\n"


def _asset(name: str) -> str:
    return resources.files("app.export").joinpath("static").joinpath(name).read_text(encoding="utf-8")


@cache
def css() -> str:
    """The file's whole stylesheet."""
    return _asset("offline.css") + palette_css()


@cache
def script() -> str:
    """The file's whole script."""
    return _asset("offline.js")


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
    dark: bool
    match: bool


@dataclass(frozen=True)
class RowView:
    layer: int
    borrowed: int | None
    cells: list[CellView]


def _rows(grid: Grid, selection: Selection) -> list[RowView]:
    rows = []
    for r in selection.rows:
        prompt_layer = grid.prompt_layers[r] if grid.prompt_layers is not None else None
        cells = []
        for c in selection.columns:
            cell = grid.cells[r][c]
            match = bool(cell.tokens) and cell.tokens[0].id == grid.next_tokens[c].id
            texts = [token.text for token in cell.tokens]
            cells.append(CellView(texts, palette.prob_bucket(cell.mean_prob), palette.is_dark(cell.mean_prob), match))
        rows.append(RowView(grid.layers[r], prompt_layer if prompt_layer != grid.layers[r] else None, cells))
    return rows


def popover_data(grid: Grid, selection: Selection) -> dict[str, object]:
    """What the script shows in a popover, for the selected rows and columns (raw texts: it marks them itself)."""

    def pairs(tokens: list) -> list[list[object]]:
        return [[token.text, round(token.prob, 5)] for token in tokens]

    rows, columns = selection.rows, selection.columns
    return {
        "marks": WHITESPACE_MARKS,
        "layers": [grid.layers[r] for r in rows],
        "prompt_layers": [grid.prompt_layers[r] for r in rows] if grid.prompt_layers is not None else None,
        "positions": list(columns),
        "tokens": [grid.tokens[c].text for c in columns],
        "next": pairs([grid.next_tokens[c] for c in columns]),
        "cells": [
            [
                {"t": pairs(cell.tokens), "k": pairs(cell.topk), "m": round(cell.mean_prob, 5)}
                for cell in (grid.cells[r][c] for c in columns)
            ]
            for r in rows
        ],
    }


@cache
def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("app.export", "templates"),
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
    return (
        _environment()
        .get_template("offline.html")
        .render(
            grid=grid,
            grid_id=grid_id,
            caption=caption(grid, sel),
            rows=rows,
            columns=list(sel.columns),
            borrowed=any(row.borrowed is not None for row in rows),
            data=popover_data(grid, sel),
            csp=content_security_policy(),
            css=Markup(css()),
            js=Markup(script()),
        )
    )
