"""Turning grids into what the templates show: visible whitespace, probability buckets, match marks, popover data.

Everything here returns plain data or escaped `Markup`; the templates autoescape the rest, so no token text ever
reaches the page as HTML.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup, escape

from future_lens.export.palette import EMPTY_TOKEN_MARK, percent, prob_bucket
from future_lens.lens.depth import depth_definition
from future_lens.lens.display import (
    ORDINARY_WHITESPACE,
    WHITESPACE_MARKS,
    code_point_name,
    is_code_mark,
    named_characters,
    visible_whitespace,
)
from future_lens.lens.grid import Cell, Grid, TokenProb
from future_lens.lens.layers import strided_layers
from future_lens.lens.registry import UnknownLensError, lens_spec
from future_lens.server.web.reports import CALIBRATION_N, Calibration, reversal_note

#: A shade's measured share of right cells is shown only when at least this many held-out cells had that shade.
MIN_BIN_CELLS = 20


def marked_text(text: str) -> Markup:
    """Token text as HTML with invisible characters made visible (`·` `↵` `⇥` `⍽` `⟨U+200B⟩`, lens/display.py)
    and the marks wrapped for dimmer styling; a mark other than ordinary whitespace (`.odd`: boxed) is titled with
    its code point."""
    if not text:
        return Markup('<span class="ws" title="empty token">{}</span>').format(EMPTY_TOKEN_MARK)
    parts = []
    for char in text:
        mark = WHITESPACE_MARKS.get(char)
        if not mark:
            parts.append(escape(char))
        elif char in ORDINARY_WHITESPACE:
            parts.append(Markup('<span class="ws">{}</span>').format(mark))
        else:
            kind = "ws odd cp" if is_code_mark(mark) else "ws odd"
            parts.append(Markup('<span class="{}" title="{}">{}</span>').format(kind, code_point_name(char), mark))
    return Markup("").join(parts)


@dataclass(frozen=True)
class ShadeShare:
    """One shade's measured share of right cells on held-out text (`text` is "–" when too few cells had it)."""

    text: str
    description: str


@dataclass(frozen=True)
class LegendCalibration:
    """The legend's second row under the colour scale, from the served model's evaluation report."""

    shares: list[ShadeShare]
    sentence: str
    reversed_note: str | None = None  # when higher shades were right less often than lower ones


def shade_share(low: float, high: float, count: int, accuracy: float | None) -> ShadeShare:
    """A bin as legend text: `37%`, or `–` below MIN_BIN_CELLS cells."""
    shade = f"cells shaded {low * 100:.0f}–{high * 100:.0f}%"
    if accuracy is None or count < MIN_BIN_CELLS:
        return ShadeShare("–", f"{shade}: only {count} held-out cells, too few to say")
    return ShadeShare(f"{accuracy * 100:.0f}%", f"{shade}: right {accuracy * 100:.0f}% of the time ({count} cells)")


def legend_calibration(calibration: Calibration | None, n_future: int) -> LegendCalibration | None:
    """Per shade, how often held-out cells of that shade were right, and one sentence saying what was measured."""
    if calibration is None:
        return None
    shares = [shade_share(b.low, b.high, b.count, b.accuracy) for b in calibration.bins]
    too_few = f"– means fewer than {MIN_BIN_CELLS} cells had that shade."
    if calibration.measure == "first_token":
        sentence = (
            f"Second row: of {calibration.n} held-out cells (dev split, all evaluated layers), the share of each "
            f"shade whose token was the model's actual next token; {too_few}"
        )
    else:
        sentence = (
            f"Second row: of {calibration.n} held-out cells (dev split, all evaluated layers, N = {CALIBRATION_N} "
            f"tokens each), the share of each shade's tokens that were the model's own continuation; {too_few}"
        )
        if n_future != CALIBRATION_N:
            sentence += f" This grid has N = {n_future}, so its shades average over a different number of tokens."
    return LegendCalibration(shares, sentence, reversal_note(calibration, MIN_BIN_CELLS))


@dataclass(frozen=True)
class CellView:
    tokens: list[str]
    bucket: int
    match: bool
    mean_prob: float
    agree: list[bool] = field(default_factory=list)  # per token: equal to the model's own continuation there

    @property
    def n_agree(self) -> int:
        return sum(self.agree)


@dataclass(frozen=True)
class RowView:
    layer: int
    prompt_layer: int | None
    cells: list[CellView]
    pending: bool = False  # a streamed grid's row not computed yet

    @property
    def borrowed(self) -> bool:
        """True when this layer's cells used another layer's trained prompt (future lens only)."""
        return self.prompt_layer is not None and self.prompt_layer != self.layer


@dataclass(frozen=True)
class DepthCellView:
    """One column's prediction depth as the depth row shows it: `text` ("17", "–", or "…" while rows are being
    computed), what a screen reader says for it, and its tooltip."""

    text: str
    spoken: str
    title: str
    pending: bool = False
    depth: int | None = None


@dataclass(frozen=True)
class DepthRowView:
    """The depth row under a grid (the grid's `prediction_depth`, future_lens/lens/depth.py) and its definition."""

    cells: list[DepthCellView]
    definition: str


@dataclass(frozen=True)
class GridView:
    """One grid, ready for `_grid.html`."""

    grid: Grid
    id: str
    permalink: str
    cached: bool
    rows: list[RowView]
    calibration: LegendCalibration | None = None
    depth: DepthRowView | None = None  # None: this grid has no prediction depth (its lens reads no next token)

    @property
    def borrowed_rows(self) -> list[RowView]:
        """Rows computed with another layer's trained prompt."""
        return [row for row in self.rows if row.borrowed]

    @property
    def continuation(self) -> list[list[TokenProb]]:
        """The bottom row: the model's own continuation after each token."""
        return model_continuation(self.grid)

    @property
    def n_rows(self) -> int:
        return len(self.rows)

    @property
    def n_columns(self) -> int:
        return len(self.grid.tokens)

    def popover_data(self) -> dict[str, object]:
        """Compact data the page script needs for popovers: raw texts (it marks invisible characters itself, with
        `marks`, the one table of lens/display.py), probs, and `names`: the code point and Unicode name of every
        marked character other than ordinary whitespace in this grid's texts."""
        grid = self.grid
        return {
            "marks": WHITESPACE_MARKS,
            "names": named_characters(grid_texts(grid)),
            "method": grid.method,
            "layers": grid.layers,
            "prompt_layers": grid.prompt_layers,
            "tokens": [token.text for token in grid.tokens],
            "next": [[token.text, round(token.prob, 5)] for token in grid.next_tokens],
            "cont": [[[token.text, round(token.prob, 5)] for token in row] for row in model_continuation(grid)],
            "cells": [
                [
                    {
                        "t": [[token.text, round(token.prob, 5)] for token in cell.tokens],
                        "k": [[token.text, round(token.prob, 5)] for token in cell.topk],
                        "m": round(cell.mean_prob, 5),
                        "s": [cell.next_rank, _rounded(cell.entropy), _rounded(cell.kl)],
                    }
                    for cell in row
                ]
                for row in grid.cells
            ],
        }


def grid_texts(grid: Grid) -> Iterator[str]:
    """Every token text a grid shows: inputs, the model's own tokens, and each cell's tokens and alternatives."""
    yield from (token.text for token in grid.tokens)
    for row in model_continuation(grid):
        yield from (token.text for token in row)
    for cells in grid.cells:
        for cell in cells:
            yield from (token.text for token in cell.tokens)
            yield from (token.text for token in cell.topk)


def grid_view(
    grid: Grid, grid_id: str, permalink: str, cached: bool, calibration: Calibration | None = None
) -> GridView:
    """Rows of cells with their shade and whether the first predicted token is the model's actual next token;
    `calibration` (the served model's measured one for this grid's method) adds the legend's second row. Rows
    without cells (a streamed grid's rows still being computed) are pending."""
    rows = [row_view(grid, index, row) for index, row in enumerate(grid.cells)]
    calibrated = legend_calibration(calibration, grid.n_future)
    return GridView(grid, grid_id, permalink, cached, rows, calibrated, depth_row(grid))


def reads_next_token(method: str) -> bool:
    """Whether the registered lens `method` reads the next token first (False for a method not registered now)."""
    try:
        return lens_spec(method).reads_next_token
    except UnknownLensError:
        return False


def depth_row(grid: Grid) -> DepthRowView | None:
    """The depth row of `grid`: its `prediction_depth` per column; pending cells while a streamed grid's rows are
    computed (when its lens reads the next token); None when the grid has no depth."""
    depths = grid.prediction_depth
    pending = any(not row for row in grid.cells)
    if depths is None and not (pending and grid.cells and reads_next_token(grid.method)):
        return None
    cells = []
    for column, token in enumerate(grid.tokens):
        after = f"after token {column} {visible_whitespace(token.text)}"
        own = visible_whitespace(grid.next_tokens[column].text)
        if depths is None:
            cells.append(DepthCellView("…", "computing", f"{after}: computed once every row is", pending=True))
            continue
        depth = depths[column]
        if depth is not None:
            title = f"{after}: from layer {depth} on, every layer shown reads the model's own next token {own}"
            cells.append(DepthCellView(str(depth), f"layer {depth}", title, depth=depth))
            continue
        last = grid.cells[-1][column].tokens
        read = visible_whitespace(last[0].text) if last else "nothing"
        title = f"{after}: no depth, the grid's last layer ({grid.layers[-1]}) reads {read}, not the model's {own}"
        cells.append(DepthCellView("–", "none", title))
    return DepthRowView(cells, depth_definition(grid.layers, grid.model.n_layers))


def model_continuation(grid: Grid) -> list[list[TokenProb]]:
    """The model's own greedy tokens after each position: `continuations`, or only the next token (grid/1, /2)."""
    return grid.continuations if grid.continuations is not None else [[token] for token in grid.next_tokens]


def row_view(grid: Grid, index: int, cells: list[Cell]) -> RowView:
    """Row `index` of `grid` with these cells: each cell's shade, first-token match and, token by token, whether it
    agrees with the model's own continuation at that position."""
    continuation = model_continuation(grid)
    views = []
    for column, cell in enumerate(cells):
        own = [token.id for token in continuation[column]]
        agree = [step < len(own) and token.id == own[step] for step, token in enumerate(cell.tokens)]
        views.append(
            CellView(
                tokens=[token.text for token in cell.tokens],
                bucket=prob_bucket(cell.mean_prob),
                match=bool(cell.tokens) and cell.tokens[0].id == grid.next_tokens[column].id,
                mean_prob=cell.mean_prob,
                agree=agree,
            )
        )
    prompt_layer = grid.prompt_layers[index] if grid.prompt_layers else None
    return RowView(grid.layers[index], prompt_layer, views, pending=not cells)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def infer_stride(layers: list[int], n_layers: int) -> int | None:
    """The layer stride that selects exactly `layers` (None when no stride does)."""
    for stride in range(1, n_layers + 1):
        if strided_layers(n_layers, stride) == layers:
            return stride
    return None


def asset_version(static_dir: Path) -> str:
    """A short hash of the static files, appended to their URLs so browsers refetch them after a change."""
    digest = hashlib.sha256()
    for path in sorted(static_dir.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def template_environment(templates_dir: Path) -> Environment:
    """Jinja with autoescaping always on (also for templates whose name does not end in .html)."""
    env = Environment(
        loader=FileSystemLoader(templates_dir),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["marked"] = marked_text
    env.filters["percent"] = percent
    return env
