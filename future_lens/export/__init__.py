"""Exports of a grid: SVG figure, PNG, long-format CSV (and back), standalone offline HTML.

Pure functions of a `Grid` (the stored document parsed back) and a `Selection` of its rows and columns; no web
code. The web API (`/g/{id}.svg` ...) and the CLI (`future-lens grid ... --format svg -o FILE`) call `export`.
"""

from __future__ import annotations

from dataclasses import dataclass

from future_lens.export.csv import GridCsvError, csv_metadata, grid_csv, grid_from_csv, read_grid_csv
from future_lens.export.html import grid_html
from future_lens.export.png import PngSizeError, grid_png, svg_png
from future_lens.export.selection import Selection, SelectionError, select
from future_lens.export.svg import MAX_COLUMNS, grid_svg
from future_lens.lens.grid import Grid

MEDIA_TYPES = {
    "svg": "image/svg+xml",
    "png": "image/png",
    "csv": "text/csv; charset=utf-8",
    "html": "text/html; charset=utf-8",
}
FORMATS = tuple(MEDIA_TYPES)


@dataclass(frozen=True)
class Exported:
    """An export's bytes and its media type."""

    content: bytes
    media_type: str


def export(
    grid: Grid,
    fmt: str,
    selection: Selection | None = None,
    scale: float = 2.0,
    grid_id: str | None = None,
    max_chars: int = MAX_COLUMNS,
) -> Exported:
    """`grid` as `fmt` (svg, png, csv or html). `scale`: the PNG's pixels per SVG unit; `max_chars`: characters drawn
    per cell in the SVG and PNG; `grid_id`: the permalink id the HTML file mentions. Raises `PngSizeError` for a PNG
    too large, `ValueError` for an unknown format or a `max_chars` out of range."""
    if fmt == "svg":
        content = grid_svg(grid, selection, max_chars).encode()
    elif fmt == "png":
        content = grid_png(grid, selection, scale, max_chars)
    elif fmt == "csv":
        content = grid_csv(grid, selection).encode()
    elif fmt == "html":
        content = grid_html(grid, selection, grid_id).encode()
    else:
        raise ValueError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    return Exported(content, MEDIA_TYPES[fmt])


__all__ = [
    "FORMATS",
    "MEDIA_TYPES",
    "Exported",
    "GridCsvError",
    "PngSizeError",
    "Selection",
    "SelectionError",
    "csv_metadata",
    "export",
    "grid_csv",
    "grid_from_csv",
    "grid_html",
    "grid_png",
    "grid_svg",
    "read_grid_csv",
    "select",
    "svg_png",
]
