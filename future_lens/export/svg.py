"""A grid as a vector figure (SVG): the page's colour scale, match marks, borrowed-row greys and legend.

Text uses generic font families (a monospace one for tokens), so any viewer renders it and the PNG export renders
it with the fonts it ships. Token widths are computed for a monospace font's usual 0.6 em advance; a cell longer
than `max_chars` characters (default `MAX_COLUMNS`) ends in `…`, and every cell's `<title>` holds its full text and
probabilities. Fewer characters per cell make narrower columns: a figure one column wide wants few tokens and few
characters (at 3.3 in, 11 px text prints at 6 pt or more while the figure is at most 440 units wide).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from future_lens.export import palette
from future_lens.export.selection import Selection
from future_lens.export.text import Piece, clip, pieces, plain, shown, truncate, width
from future_lens.lens.grid import Cell, Grid
from future_lens.lens.registry import lens_label

SVG_NS = "http://www.w3.org/2000/svg"
MONO = "'DejaVu Sans Mono', Menlo, Consolas, 'Liberation Mono', monospace"
SANS = "'DejaVu Sans', 'Helvetica Neue', Arial, 'Liberation Sans', sans-serif"
FONT = 11.0  # cell text, px
ADVANCE = 0.6 * FONT  # a monospace character's width
SMALL = 8.5
SANS_ADVANCE = 0.6  # a generous average width of a sans-serif character, in em (only sizes the canvas)
PAD = 5.0
GAP = 4.0  # between the tokens of a cell, where a hairline separates them
ROW_H = 18.0
HEAD_H = 30.0
MARGIN = 10.0
MIN_CELL_W = 40.0
MIN_LAYER_W = 46.0
MATCH_BAR = 3.0
CORNER_ROOM = 4.0  # more room on the right of a matching cell, clear of its corner mark (the page's padding too)
MAX_COLUMNS = 20  # characters shown per cell by default (the page's cells are about as wide)
MIN_CHARS, MAX_CHARS = 4, 80  # the range a caller may choose from
SWATCH_W, SWATCH_H = 24.0, 13.0

Tokens = list[list[Piece]]


def _num(value: float) -> str:
    """A coordinate without needless digits."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _el(parent: ET.Element, tag: str, text: str | None = None, **attributes: object) -> ET.Element:
    """A child element; `font_size=` becomes `font-size`, numbers are formatted compactly."""
    element = ET.SubElement(parent, tag)
    for name, value in attributes.items():
        if value is not None:
            element.set(name.rstrip("_").replace("_", "-"), _num(value) if isinstance(value, float) else str(value))
    element.text = text
    return element


def sans_width(text: str, size: float) -> float:
    """An upper estimate of the width of sans-serif `text` at `size` px."""
    return len(text) * size * SANS_ADVANCE


def cell_tokens(texts: list[str], columns: int = MAX_COLUMNS) -> Tokens:
    """The tokens of a cell as runs, cut with `…` once the cell passes `columns` characters."""
    runs = [pieces(text) for text in texts]
    if sum(width(shown(text)) for text in texts) <= columns:
        return runs
    kept: Tokens = []
    room = columns
    for token in runs:
        token_width = width("".join(piece.text for piece in token))
        if token_width < room:
            kept.append(token)
            room -= token_width
            continue
        kept.append(truncate(token, room))
        break
    return kept


def tokens_width(tokens: Tokens) -> float:
    """Drawn width of a cell's tokens (monospace characters plus the gaps between tokens)."""
    columns = sum(width(piece.text) for token in tokens for piece in token)
    return columns * ADVANCE + GAP * max(0, len(tokens) - 1)


@dataclass(frozen=True)
class Layout:
    """Where everything goes: column x positions and widths, the layer column, the figure's size."""

    layer_w: float
    column_x: list[float]
    column_w: list[float]
    grid_w: float
    grid_h: float
    top: float
    width: float
    height: float
    max_chars: int


def _column_widths(
    grid: Grid, selection: Selection, texts: dict[tuple[int, int], Tokens], max_chars: int
) -> list[float]:
    widths = []
    for c in selection.columns:
        head = tokens_width([clip(pieces(grid.tokens[c].text), max_chars)])
        next_token = grid.next_tokens[c]
        following = tokens_width([clip(pieces(next_token.text), max_chars)])
        following += 4 + sans_width(palette.percent(next_token.prob), SMALL)
        cells = [tokens_width(texts[r, c]) + MATCH_BAR + CORNER_ROOM * _matches(grid, r, c) for r in selection.rows]
        widths.append(max(MIN_CELL_W, head, following, *cells) + 2 * PAD)
    return widths


def _borrowed(grid: Grid, row: int) -> int | None:
    """The layer whose prompt computed `row` when it is not the row's own layer."""
    if grid.prompt_layers is None or grid.prompt_layers[row] == grid.layers[row]:
        return None
    return grid.prompt_layers[row]


def _layer_width(grid: Grid, selection: Selection) -> float:
    labels = [
        sans_width(str(grid.layers[r]), 10) + (sans_width(f"prompt from layer {b}", 7.5) + 6 if b is not None else 0)
        for r in selection.rows
        for b in [_borrowed(grid, r)]
    ]
    return max(MIN_LAYER_W, *(label + 2 * PAD for label in labels))


def _legend_size(grid: Grid, selection: Selection) -> tuple[float, float]:
    lines = [sans_width(_legend_label(grid), 9), 10 * SWATCH_W + 30, 30 + sans_width(MATCH_TEXT, 9)]
    height = 16 + SWATCH_H + 8 + 16
    if any(_borrowed(grid, r) is not None for r in selection.rows):
        lines.append(sans_width("prompt from layer k", 7.5) + 16 + sans_width(BORROWED_TEXT, 9))
        height += 16
    return max(lines), height


def layout(grid: Grid, selection: Selection, texts: dict[tuple[int, int], Tokens], max_chars: int) -> Layout:
    """Sizes from the content: each column as wide as its widest cell (cut at `max_chars` characters)."""
    widths = _column_widths(grid, selection, texts, max_chars)
    layer_w = _layer_width(grid, selection)
    xs, x = [], MARGIN + layer_w
    for column_width in widths:
        xs.append(x)
        x += column_width
    grid_w = layer_w + sum(widths)
    grid_h = HEAD_H + ROW_H * (len(selection.rows) + 1)
    legend_w, legend_h = _legend_size(grid, selection)
    top = MARGIN + 13 * len(caption_lines(grid, selection)) + 6
    return Layout(
        layer_w,
        xs,
        widths,
        grid_w,
        grid_h,
        top,
        width=float(math.ceil(2 * MARGIN + max(grid_w, legend_w))),  # whole units: whole pixels at scale 1
        height=float(math.ceil(top + grid_h + 14 + legend_h + MARGIN)),
        max_chars=max_chars,
    )


MATCH_TEXT = "first token = the model's actual next token"
BORROWED_TEXT = "grey row: no trained prompt of its own; used layer k's"


def _legend_label(grid: Grid) -> str:
    return "probability of the predicted token" if grid.n_future == 1 else "mean probability of the N tokens"


def _token_text(parent: ET.Element, token: list[Piece], x: float, y: float, dark: bool, bold: bool = False) -> None:
    """One token's runs as a `<text>`, marks dimmed as on the page."""
    text = _el(parent, "text", x=x, y=y, font_weight="bold" if bold else None)
    mark_fill = palette.MARK_ON_DARK if dark else palette.MARK
    for piece in token:
        _el(text, "tspan", piece.text, fill=mark_fill if piece.mark else None)


def _draw_tokens(parent: ET.Element, tokens: Tokens, x: float, y: float, dark: bool, bold: bool = False) -> float:
    """The tokens of a cell from `x` on, with a hairline between tokens; returns where they end."""
    baseline = y + ROW_H / 2 + FONT * 0.35
    for index, token in enumerate(tokens):
        if index:
            rule = palette.ON_DARK if dark else palette.INK
            _el(
                parent,
                "line",
                x1=x - GAP / 2,
                x2=x - GAP / 2,
                y1=y + 4,
                y2=y + ROW_H - 4,
                stroke=rule,
                stroke_opacity="0.3" if dark else "0.18",
                stroke_width="0.8",
            )
        _token_text(parent, token, x, baseline, dark, bold)
        x += sum(width(piece.text) for piece in token) * ADVANCE + GAP
    return x - GAP


def _cell_title(grid: Grid, row: int, column: int, cell: Cell, match: bool) -> str:
    predicted = " | ".join(f"{shown(t.text)} {palette.percent(t.prob)}" for t in cell.tokens)
    where = f"layer {grid.layers[row]}, after token {column} {shown(grid.tokens[column].text)}"
    verdict = "; first token = the model's actual next token" if match else ""
    return f"{where}: {predicted} (mean {palette.percent(cell.mean_prob)}){verdict}"


def _matches(grid: Grid, row: int, column: int) -> bool:
    cell = grid.cells[row][column]
    return bool(cell.tokens) and cell.tokens[0].id == grid.next_tokens[column].id


def _match_mark(parent: ET.Element, x: float, y: float, w: float, h: float) -> None:
    """The page's mark of a match: an orange bar on the left and a corner triangle."""
    _el(parent, "rect", x=x, y=y, width=MATCH_BAR, height=h, fill=palette.MATCH)
    corner = min(9.0, h * 0.6)
    _el(parent, "path", d=f"M{_num(x + w - corner)} {_num(y)}h{_num(corner)}v{_num(corner)}z", fill=palette.MATCH)


def _draw_cells(svg: ET.Element, grid: Grid, sel: Selection, box: Layout, texts: dict[tuple[int, int], Tokens]) -> None:
    for i, r in enumerate(sel.rows):
        y = box.top + HEAD_H + i * ROW_H
        borrowed = _borrowed(grid, r) is not None
        for j, c in enumerate(sel.columns):
            cell, x, w = grid.cells[r][c], box.column_x[j], box.column_w[j]
            match = _matches(grid, r, c)
            dark = palette.is_dark(cell.mean_prob)
            group = _el(
                svg,
                "g",
                class_="cell",
                data_layer=grid.layers[r],
                data_position=c,
                fill=palette.ON_DARK if dark else palette.INK,
            )
            _el(group, "title", _cell_title(grid, r, c, cell, match))
            _el(group, "rect", x=x, y=y, width=w, height=ROW_H, fill=palette.shade(cell.mean_prob, borrowed))
            if match:
                _match_mark(group, x, y, w, ROW_H)
            _draw_tokens(group, texts[r, c], x + PAD + (MATCH_BAR if match else 0), y, dark)


def _draw_heads(svg: ET.Element, grid: Grid, sel: Selection, box: Layout) -> None:
    left, top = MARGIN, box.top
    _el(svg, "rect", x=left, y=top, width=box.grid_w, height=HEAD_H, fill=palette.HEAD_BG)
    _el(
        svg,
        "text",
        "token →",
        x=left + box.layer_w - PAD,
        y=top + 11,
        text_anchor="end",
        font_size=8,
        fill=palette.MUTED,
    )
    _el(svg, "text", "layer ↓", x=left + PAD, y=top + HEAD_H - 6, font_size=8, fill=palette.MUTED)
    for j, c in enumerate(sel.columns):
        x = box.column_x[j] + PAD
        _el(svg, "text", str(c), x=x, y=top + 10, font_size=8, fill="#8792a0")
        head = _el(svg, "g", font_family=MONO, font_size=FONT, fill=palette.INK)
        _token_text(head, clip(pieces(grid.tokens[c].text), box.max_chars), x, top + HEAD_H - 7, False, True)
    for i, r in enumerate(sel.rows):
        y = top + HEAD_H + i * ROW_H
        borrowed = _borrowed(grid, r)
        fill = palette.BORROWED_HEAD_BG if borrowed is not None else palette.HEAD_BG
        _el(svg, "rect", x=left, y=y, width=box.layer_w, height=ROW_H, fill=fill)
        right = left + box.layer_w - PAD
        _el(
            svg,
            "text",
            str(grid.layers[r]),
            x=right,
            y=y + ROW_H / 2 + 3.5,
            text_anchor="end",
            font_size=10,
            font_weight="bold",
            fill="#3b4754",
        )
        if borrowed is not None:
            _el(
                svg,
                "text",
                f"prompt from layer {borrowed}",
                x=right - sans_width(str(grid.layers[r]), 10) - 4,
                y=y + ROW_H / 2 + 3,
                text_anchor="end",
                font_size=7.5,
                fill="#505050",
            )


def _draw_next(svg: ET.Element, grid: Grid, sel: Selection, box: Layout) -> None:
    y = box.top + HEAD_H + len(sel.rows) * ROW_H
    _el(svg, "rect", x=MARGIN, y=y, width=box.grid_w, height=ROW_H, fill=palette.NEXT_BG)
    _el(svg, "rect", x=MARGIN, y=y, width=box.layer_w, height=ROW_H, fill=palette.NEXT_HEAD_BG)
    _el(
        svg,
        "text",
        "next",
        x=MARGIN + box.layer_w - PAD,
        y=y + ROW_H / 2 + 3.5,
        text_anchor="end",
        font_size=10,
        font_weight="bold",
        fill="#3b4754",
    )
    for j, c in enumerate(sel.columns):
        token = grid.next_tokens[c]
        group = _el(svg, "g", class_="next", data_position=c, fill=palette.INK)
        said = f"after token {c}: the model's own next token {shown(token.text)} ({palette.percent(token.prob)})"
        _el(group, "title", said)
        mono = _el(group, "g", font_family=MONO, font_size=FONT)
        end = _draw_tokens(mono, [clip(pieces(token.text), box.max_chars)], box.column_x[j] + PAD, y, False, True)
        _el(
            group,
            "text",
            palette.percent(token.prob),
            x=end + 4,
            y=y + ROW_H / 2 + 3,
            font_size=SMALL,
            fill=palette.MUTED,
        )


def _draw_rules(svg: ET.Element, sel: Selection, box: Layout) -> None:
    """Cell borders, and the heavier rules under the header, above the `next` row and right of the layers."""
    left, top = MARGIN, box.top
    bottom, right = top + box.grid_h, MARGIN + box.grid_w
    rules = _el(svg, "g", stroke=palette.CELL_RULE, stroke_width="1")
    for x in [*box.column_x[1:], right]:
        _el(rules, "line", x1=x, x2=x, y1=top, y2=bottom)
    for i in range(1, len(sel.rows)):
        y = top + HEAD_H + i * ROW_H
        _el(rules, "line", x1=left, x2=right, y1=y, y2=y)
    heavy = _el(svg, "g", stroke=palette.HEAD_RULE, stroke_width="1.5", fill="none")
    _el(heavy, "line", x1=left, x2=right, y1=top + HEAD_H, y2=top + HEAD_H)
    _el(heavy, "line", x1=left, x2=right, y1=bottom - ROW_H, y2=bottom - ROW_H)
    _el(heavy, "line", x1=left + box.layer_w, x2=left + box.layer_w, y1=top, y2=bottom)
    _el(heavy, "rect", x=left, y=top, width=box.grid_w, height=box.grid_h)


def _draw_legend(svg: ET.Element, grid: Grid, sel: Selection, box: Layout) -> None:
    """The page's legend: the 10 shades from 0 to 100%, the match mark and, if any, the borrowed-row grey."""
    legend = _el(svg, "g", class_="legend", font_size=9, fill=palette.MUTED)
    x, y = MARGIN, box.top + box.grid_h + 14
    _el(legend, "text", _legend_label(grid), x=x, y=y + 9)
    y += 14
    for bucket, colour in enumerate(palette.SHADES):
        sx = x + bucket * SWATCH_W
        _el(legend, "rect", x=sx, y=y, width=SWATCH_W, height=SWATCH_H, fill=colour)
        ink = palette.ON_DARK if bucket >= palette.DARK_FROM else palette.INK
        _el(legend, "text", str(bucket * 10), x=sx + 2, y=y + 9.5, font_size=7.5, fill=ink)
    _el(legend, "text", "100%", x=x + 10 * SWATCH_W + 3, y=y + 9.5, font_size=7.5)
    y += SWATCH_H + 8
    _el(
        legend,
        "rect",
        x=x,
        y=y,
        width=22,
        height=SWATCH_H,
        fill=palette.SHADES[0],
        stroke=palette.HEAD_RULE,
        stroke_width="0.6",
    )
    _match_mark(legend, x, y, 22, SWATCH_H)
    _el(legend, "text", MATCH_TEXT, x=x + 28, y=y + 10)
    if any(_borrowed(grid, r) is not None for r in sel.rows):
        y += 16
        chip = sans_width("prompt from layer k", 7.5) + 8
        _el(legend, "rect", x=x, y=y, width=chip, height=SWATCH_H, rx="2", fill=palette.BORROWED_HEAD_BG)
        _el(legend, "text", "prompt from layer k", x=x + 4, y=y + 9.5, font_size=7.5, fill="#3d3d3d")
        _el(legend, "text", BORROWED_TEXT, x=x + chip + 6, y=y + 10)


def caption_lines(grid: Grid, selection: Selection) -> list[str]:
    """What the figure shows: method, model and N; the part of the grid; the fixed prompt if there is one."""
    method = lens_label(grid.method)
    rows, columns = len(selection.rows), len(selection.columns)
    part = f"{rows} layer{'s' if rows != 1 else ''} × {columns} token{'s' if columns != 1 else ''}"
    if columns < len(grid.tokens):
        first, last = selection.columns[0], selection.columns[-1]
        contiguous = list(selection.columns) == list(range(first, last + 1))
        shown_positions = f"{first}–{last}" if contiguous else ", ".join(map(str, selection.columns))
        part += f" (positions {shown_positions} of {len(grid.tokens)})"
    lines = [f"{method} · {plain(grid.model.id)} ({grid.model.dtype}) · N = {grid.n_future}", part]
    return lines + ([f"prompt: {shown(grid.prompt)}"] if grid.prompt is not None else [])


def caption(grid: Grid, selection: Selection) -> str:
    """The figure's caption on one line (without the prompt)."""
    return " · ".join(caption_lines(grid, selection)[:2])


def _draw_caption(svg: ET.Element, grid: Grid, sel: Selection, box: Layout) -> None:
    room = int((box.width - 2 * MARGIN) / (10 * SANS_ADVANCE))
    for index, line in enumerate(caption_lines(grid, sel)):
        _el(
            svg,
            "text",
            line if len(line) <= room else line[: room - 1] + "…",
            x=MARGIN,
            y=MARGIN + 9 + 13 * index,
            font_size=10 if index == 0 else 9,
            fill=palette.INK if index == 0 else palette.MUTED,
        )


def check_max_chars(max_chars: int) -> None:
    """Refuse a characters-per-cell limit outside MIN_CHARS..MAX_CHARS."""
    if not MIN_CHARS <= max_chars <= MAX_CHARS:
        raise ValueError(f"characters per cell must be between {MIN_CHARS} and {MAX_CHARS}, not {max_chars}")


def grid_svg(grid: Grid, selection: Selection | None = None, max_chars: int = MAX_COLUMNS) -> str:
    """The grid (or the selected rows and columns) as a standalone SVG document, at most `max_chars` characters
    drawn per cell. Raises ValueError for `max_chars` outside MIN_CHARS..MAX_CHARS."""
    check_max_chars(max_chars)
    sel = selection or Selection.whole(grid)
    texts = {
        (r, c): cell_tokens([t.text for t in grid.cells[r][c].tokens], max_chars) for r in sel.rows for c in sel.columns
    }
    box = layout(grid, sel, texts, max_chars)
    svg = ET.Element("svg", xmlns=SVG_NS, version="1.1", role="img")
    svg.set("width", _num(box.width))
    svg.set("height", _num(box.height))
    svg.set("viewBox", f"0 0 {_num(box.width)} {_num(box.height)}")
    svg.set("font-family", SANS)
    _el(svg, "title", "Future Lens grid: " + caption(grid, sel))
    _el(svg, "rect", x=0.0, y=0.0, width=box.width, height=box.height, fill="#ffffff")
    _draw_caption(svg, grid, sel, box)
    _draw_heads(svg, grid, sel, box)
    cells = _el(svg, "g", font_family=MONO, font_size=FONT)
    _draw_cells(cells, grid, sel, box, texts)
    _draw_next(svg, grid, sel, box)
    _draw_rules(svg, sel, box)
    _draw_legend(svg, grid, sel, box)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(svg, encoding="unicode") + "\n"
