"""A grid as a PNG: the SVG figure rasterised by resvg (a Rust SVG renderer; the `resvg-py` wheel needs no system
library), with the DejaVu fonts that matplotlib ships, so text renders the same on a machine without any fonts.
The machine's own fonts are only a fallback, for characters DejaVu lacks (CJK, `␍`)."""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

from future_lens.export.selection import Selection
from future_lens.export.svg import MAX_COLUMNS, grid_svg
from future_lens.lens.grid import Grid

MIN_SCALE, MAX_SCALE = 0.25, 8.0
MAX_PIXELS = 40_000_000  # about 160 MB of RGBA while rendering
FONT_FILES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf")


class PngSizeError(ValueError):
    """A scale outside MIN_SCALE..MAX_SCALE, or a PNG that would have more than MAX_PIXELS pixels."""


@cache
def font_files() -> list[str]:
    """DejaVu Sans and Sans Mono (regular and bold) from matplotlib's own data folder."""
    import matplotlib  # only for its data folder: imported when the first PNG is made

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return [str(folder / name) for name in FONT_FILES if (folder / name).is_file()]


def svg_size(svg: str) -> tuple[float, float]:
    """The `width` and `height` of an SVG written by `grid_svg`."""
    head = svg[: svg.index(">", svg.index("<svg")) + 1]
    values = {}
    for name in ("width", "height"):
        start = head.index(f' {name}="') + len(name) + 3
        values[name] = float(head[start : head.index('"', start)])
    return values["width"], values["height"]


def png_size(svg: str, scale: float) -> tuple[int, int]:
    """Pixel size of the PNG of `svg` at `scale`: resvg rounds the SVG's size, then the scaled size, half up."""
    svg_width, svg_height = svg_size(svg)
    return math.floor(round(svg_width) * scale + 0.5), math.floor(round(svg_height) * scale + 0.5)


def check_scale(scale: float) -> None:
    """Refuse a scale that is not a number between MIN_SCALE and MAX_SCALE."""
    if not (math.isfinite(scale) and MIN_SCALE <= scale <= MAX_SCALE):
        raise PngSizeError(f"scale must be between {MIN_SCALE:g} and {MAX_SCALE:g}, not {scale!r}")


def svg_png(svg: str, scale: float = 2.0) -> bytes:
    """Rasterise an SVG at `scale` pixels per SVG unit on white."""
    check_scale(scale)
    width, height = png_size(svg, scale)
    if width * height > MAX_PIXELS:
        raise PngSizeError(
            f"the PNG would be {width}×{height} pixels, over the limit of {MAX_PIXELS / 1e6:g} million: "
            "choose a smaller scale or fewer layers/tokens"
        )
    try:
        import resvg_py  # the `export` extra
    except ImportError:
        raise ImportError("PNG export needs the export extra: pip install 'future-lens[export]'") from None
    return bytes(
        resvg_py.svg_to_bytes(
            svg_string=svg,
            zoom=scale,
            background="#ffffff",
            skip_system_fonts=False,
            font_files=font_files(),
            font_family="DejaVu Sans",
            sans_serif_family="DejaVu Sans",
            monospace_family="DejaVu Sans Mono",
        )
    )


def grid_png(grid: Grid, selection: Selection | None = None, scale: float = 2.0, max_chars: int = MAX_COLUMNS) -> bytes:
    """The grid's SVG figure (at most `max_chars` characters per cell) as a PNG at `scale`."""
    return svg_png(grid_svg(grid, selection, max_chars), scale)
