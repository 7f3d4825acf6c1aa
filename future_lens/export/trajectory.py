"""A token's trajectory as an SVG chart: its probability as the first predicted token across layers; and the
trajectory an offline file can show without a model, read from the grid's stored top-k (`stored_trajectory`).

Top: a line chart over the grid's layers, one thin grey line per position and the chosen position's line drawn
bold, with its rank at every layer written under the axis. Below: a heat strip, one row per position and one column
per layer, shaded with the grid's own colour scale (percentages written where they reach 10%). Pure data in, SVG
text out; token text goes through the same marks and XML escaping as the grid figure (future_lens/export/svg.py).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

from future_lens.export import palette
from future_lens.export.errors import FieldError
from future_lens.export.selection import Selection
from future_lens.export.svg import ADVANCE, MONO, SANS, SVG_NS, _el, _num, sans_width
from future_lens.export.text import clip, pieces, plain, shown, width
from future_lens.lens.grid import Cell, Grid
from future_lens.lens.track import Track, TrackedToken

MARGIN = 12.0
PLOT_H = 150.0
STRIP_ROW = 16.0
MIN_COLUMN = 22.0
LABEL_CHARS = 14  # token characters in a heat-strip row label
GREY_LINE = "#c3cad4"
AXIS = "#8792a0"
LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)  # gridlines, as shares of the y axis's top
#: The y axis ends at the first of these at or above the token's highest probability, so small ones still show.
AXIS_TOPS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
PLOT_MIN_W = 360.0


class TrajectoryError(FieldError):
    """A token that was not tracked, or a position outside the text; `field` names the parameter."""


@dataclass(frozen=True)
class ChartBox:
    """Where the chart's parts go."""

    left: float  # x of the first layer column
    column: float  # width of one layer column
    top_prob: float  # the probability at the y axis's top
    plot_top: float
    strip_top: float
    width: float
    height: float


def tracked_token(track: Track, token_id: int) -> TrackedToken:
    """The tracked token with id `token_id` (TrajectoryError when it was not tracked)."""
    for token in track.tokens:
        if token.id == token_id:
            return token
    raise TrajectoryError("token", f"token id {token_id} was not tracked (tracked: {[t.id for t in track.tokens]})")


def axis_top(token: TrackedToken) -> float:
    """The y axis's top: the first of `AXIS_TOPS` at or above the token's highest probability anywhere."""
    highest = max(prob for row in token.probs for prob in row)
    return next(top for top in AXIS_TOPS if top >= highest)


def _box(grid: Grid, track: Track, token: TrackedToken) -> ChartBox:
    labels = [width(shown(t.text)[:LABEL_CHARS]) * ADVANCE + 26 for t in grid.tokens]
    left = MARGIN + max(70.0, *labels)
    column = max(MIN_COLUMN, sans_width(str(max(track.layers)), 8) + 6, PLOT_MIN_W / len(track.layers))
    plot_top = MARGIN + 3 * 14 + 8
    strip_top = plot_top + PLOT_H + 46
    legend = 10 * 24.0 + 60
    width_ = max(left + column * len(track.layers) + MARGIN, MARGIN + legend, MARGIN + sans_width(_title(grid), 11))
    height = strip_top + STRIP_ROW * track.positions + 52
    return ChartBox(left, column, axis_top(token), plot_top, strip_top, float(round(width_)), float(round(height)))


def _title(grid: Grid) -> str:
    method = {"future": "Future lens", "logit": "Logit lens", "fixed": "Fixed prompt"}.get(grid.method, grid.method)
    return f"{method} · {plain(grid.model.id)} · probability as the first predicted token, by layer"


def _x(box: ChartBox, index: int) -> float:
    return box.left + box.column * (index + 0.5)


def _y(box: ChartBox, prob: float) -> float:
    return box.plot_top + PLOT_H * (1 - prob / box.top_prob)


def _draw_caption(svg: ET.Element, grid: Grid, token: TrackedToken, position: int) -> None:
    y = MARGIN + 11
    _el(
        svg,
        "text",
        f"Trajectory of “{shown(token.text)}” (id {token.id})",
        x=MARGIN,
        y=y,
        font_size=13,
        font_weight="bold",
        fill=palette.INK,
    )
    _el(svg, "text", _title(grid), x=MARGIN, y=y + 15, font_size=10, fill=palette.MUTED)
    at = f"bold line and ranks: position {position} {shown(grid.tokens[position].text)}; grey lines: the others"
    _el(svg, "text", at, x=MARGIN, y=y + 29, font_size=10, fill=palette.MUTED)


def _draw_axes(svg: ET.Element, track: Track, box: ChartBox) -> None:
    right = box.left + box.column * len(track.layers)
    axes = _el(svg, "g", font_size=8.5, fill=AXIS)
    for level in LEVELS:
        y = _y(box, level * box.top_prob)
        _el(axes, "line", x1=box.left, x2=right, y1=y, y2=y, stroke=palette.CELL_RULE, stroke_width="1")
        _el(axes, "text", f"{level * box.top_prob * 100:g}%", x=box.left - 4, y=y + 3, text_anchor="end")
    base = box.plot_top + PLOT_H
    for i, layer in enumerate(track.layers):
        _el(axes, "text", str(layer), x=_x(box, i), y=base + 12, text_anchor="middle")
    _el(axes, "text", "layer", x=box.left - 4, y=base + 12, text_anchor="end", font_weight="bold")
    _el(axes, "text", "rank", x=box.left - 4, y=base + 26, text_anchor="end", font_weight="bold", fill=palette.MATCH)


def _polyline(parent: ET.Element, box: ChartBox, probs: list[float], **style: object) -> None:
    points = " ".join(f"{_num(_x(box, i))},{_num(_y(box, p))}" for i, p in enumerate(probs))
    _el(parent, "polyline", points=points, fill="none", **style)


def _draw_lines(svg: ET.Element, grid: Grid, track: Track, token: TrackedToken, position: int, box: ChartBox) -> None:
    rows = range(len(track.layers))
    others = _el(svg, "g", class_="others")
    for column in range(track.positions):
        if column != position:
            _polyline(others, box, [token.probs[r][column] for r in rows], stroke=GREY_LINE, stroke_width="1")
    chosen = _el(svg, "g", class_="chosen", fill=palette.MATCH)
    _polyline(chosen, box, [token.probs[r][position] for r in rows], stroke=palette.MATCH, stroke_width="2.2")
    base = box.plot_top + PLOT_H
    for r, layer in enumerate(track.layers):
        prob, rank = token.probs[r][position], token.ranks[r][position]
        dot = _el(chosen, "circle", cx=_x(box, r), cy=_y(box, prob), r="2.6")
        _el(dot, "title", f"layer {layer}: {palette.percent(prob)}, rank {rank}")
        _el(chosen, "text", _rank_text(rank), x=_x(box, r), y=base + 26, text_anchor="middle", font_size=8)


def _rank_text(rank: int) -> str:
    """A rank short enough for a narrow column: 7, 412, 3.1k, 48k."""
    if rank < 1000:
        return str(rank)
    return f"{rank / 1000:.1f}k" if rank < 10_000 else f"{rank // 1000}k"


def _draw_strip(svg: ET.Element, grid: Grid, track: Track, token: TrackedToken, position: int, box: ChartBox) -> None:
    _el(
        svg,
        "text",
        "every position (rows) × layer (columns)",
        x=MARGIN,
        y=box.strip_top - 6,
        font_size=9,
        fill=palette.MUTED,
    )
    for column in range(track.positions):
        y = box.strip_top + column * STRIP_ROW
        label = _el(svg, "g", font_family=MONO, font_size=10, fill=palette.INK if column == position else palette.MUTED)
        _el(label, "text", str(column), x=MARGIN, y=y + 11.5, font_family=SANS, font_size=8)
        text = "".join(piece.text for piece in clip(pieces(grid.tokens[column].text), LABEL_CHARS))
        _el(label, "text", text, x=MARGIN + 18, y=y + 11.5, font_weight="bold" if column == position else None)
        for r, layer in enumerate(track.layers):
            prob = token.probs[r][column]
            x = box.left + r * box.column
            cell = _el(svg, "g", class_="strip-cell", data_layer=layer, data_position=column)
            rank = token.ranks[r][column]
            _el(cell, "title", f"position {column}, layer {layer}: {palette.percent(prob)}, rank {rank}")
            _el(cell, "rect", x=x, y=y, width=box.column, height=STRIP_ROW, fill=palette.shade(prob))
            if prob >= 0.095:
                ink = palette.ON_DARK if palette.is_dark(prob) else palette.INK
                _el(
                    cell,
                    "text",
                    f"{prob:.0%}",
                    x=x + box.column / 2,
                    y=y + 11,
                    text_anchor="middle",
                    font_size=7.5,
                    fill=ink,
                )
    top, rows = box.strip_top + position * STRIP_ROW, len(track.layers)
    _el(
        svg,
        "rect",
        x=box.left,
        y=top,
        width=box.column * rows,
        height=STRIP_ROW,
        fill="none",
        stroke=palette.MATCH,
        stroke_width="1.5",
    )


def _draw_legend(svg: ET.Element, box: ChartBox, positions: int) -> None:
    y = box.strip_top + STRIP_ROW * positions + 14
    legend = _el(svg, "g", font_size=7.5)
    for bucket, colour in enumerate(palette.SHADES):
        x = MARGIN + bucket * 24.0
        _el(legend, "rect", x=x, y=y, width=24.0, height=12.0, fill=colour)
        ink = palette.ON_DARK if bucket >= palette.DARK_FROM else palette.INK
        _el(legend, "text", str(bucket * 10), x=x + 2, y=y + 9, fill=ink)
    _el(legend, "text", "100% probability", x=MARGIN + 243, y=y + 9, fill=palette.MUTED)


def trajectory_svg(grid: Grid, track: Track, token_id: int, position: int) -> str:
    """The trajectory of tracked token `token_id` through `grid`'s cells (the track was computed on the grid's text
    and layers), with position `position`'s line and ranks highlighted, as a standalone SVG document."""
    token = tracked_token(track, token_id)
    if not 0 <= position < track.positions:
        raise TrajectoryError("position", f"position {position} is outside the text (0 to {track.positions - 1})")
    if track.positions != len(grid.tokens) or track.layers != grid.layers:
        raise ValueError("the track was not computed on this grid's text and layers")
    box = _box(grid, track, token)
    svg = ET.Element("svg", xmlns=SVG_NS, version="1.1", role="img")
    for name, value in (("width", box.width), ("height", box.height)):
        svg.set(name, _num(value))
    svg.set("viewBox", f"0 0 {_num(box.width)} {_num(box.height)}")
    svg.set("font-family", SANS)
    _el(svg, "title", f"Trajectory of {shown(token.text)} (id {token.id}): {_title(grid)}")
    _el(svg, "rect", x=0.0, y=0.0, width=box.width, height=box.height, fill="#ffffff")
    _draw_caption(svg, grid, token, position)
    _draw_axes(svg, track, box)
    _draw_lines(svg, grid, track, token, position, box)
    _draw_strip(svg, grid, track, token, position, box)
    _draw_legend(svg, box, track.positions)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(svg, encoding="unicode") + "\n"


# ---------- trajectories read from the stored top-k (no model: the offline HTML file) ----------


@dataclass(frozen=True)
class StoredPoint:
    """A token's probability in one cell as far as the cell's stored top-k tells: `prob` when the token is listed
    there, else None, and then only that it is below `floor`, the smallest probability the cell lists (p_k)."""

    layer: int
    prob: float | None
    floor: float | None  # None only for a cell that lists no top-k at all


def listed_prob(cell: Cell, token_id: int) -> float | None:
    """The probability of `token_id` in the cell's stored top-k (its first listing), None when it is not listed."""
    return next((token.prob for token in cell.topk if token.id == token_id), None)


def stored_trajectory(grid: Grid, token_id: int, position: int, rows: Sequence[int] | None = None) -> list[StoredPoint]:
    """Token `token_id` as the first predicted token at every layer (`rows`: indices into `grid.layers`, default
    all) of position `position`, read from each cell's stored top-k: exact where listed, `< floor` elsewhere."""
    if not 0 <= position < len(grid.tokens):
        raise TrajectoryError("position", f"position {position} is outside the text (0 to {len(grid.tokens) - 1})")
    points = []
    for r in range(len(grid.layers)) if rows is None else rows:
        cell = grid.cells[r][position]
        floor = min((token.prob for token in cell.topk), default=None)
        points.append(StoredPoint(grid.layers[r], listed_prob(cell, token_id), floor))
    return points


def stored_tracks(grid: Grid, selection: Selection) -> list[dict[str, list[list[float]]]]:
    """For the offline file, per selected column: every token listed in a selected cell's top-k there (by id, as
    text) -> `[[row, prob], ...]` for the selected rows (indices into the selection) where it is listed, in row
    order. A row missing from a token's list is one where it is below that cell's smallest listed probability."""
    tracks = []
    for c in selection.columns:
        column: dict[str, list[list[float]]] = {}
        for index, r in enumerate(selection.rows):
            seen = set()
            for token in grid.cells[r][c].topk:
                if token.id not in seen:
                    seen.add(token.id)
                    column.setdefault(str(token.id), []).append([index, round(token.prob, 5)])
        tracks.append(column)
    return tracks
