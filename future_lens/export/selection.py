"""Which part of a grid an export shows: a layer range and a token range, in the grid's own terms.

`layers` uses the request's layer syntax (`0-10`, `::3`, `0,5,10`, `20:`) over the model's blocks and keeps the
grid's rows whose layer it names; `tokens` uses the same syntax over token positions (`2:8` is positions 2 to 7,
`2-7` the same, `-4:` the last four). Positions keep their numbers in every export.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from future_lens.export.errors import FieldError
from future_lens.lens.grid import Grid
from future_lens.lens.layers import LayerSpecError, max_spec_chars, parse_layers, quoted

#: Larger numbers are refused before parsing (`parse_layers` bounds ranges too; this keeps the message plain).
MAX_NUMBER = 100_000
SPEC_CHARACTERS = re.compile(r"(?:all|[0-9,:\- ])*")


class SelectionError(FieldError):
    """A layer or token range that cannot be read or selects nothing; `field` is `layers` or `tokens`."""


@dataclass(frozen=True)
class Selection:
    """Rows (indices into `grid.layers`) and columns (token positions) to export, in order."""

    rows: tuple[int, ...]
    columns: tuple[int, ...]

    @classmethod
    def whole(cls, grid: Grid) -> Selection:
        """Every row and column of `grid`."""
        return cls(tuple(range(len(grid.layers))), tuple(range(len(grid.tokens))))


def _rows(grid: Grid, spec: str) -> tuple[int, ...]:
    try:
        wanted = set(parse_layers(spec, grid.model.n_layers))
    except LayerSpecError as error:
        raise SelectionError("layers", str(error)) from None
    rows = tuple(index for index, layer in enumerate(grid.layers) if layer in wanted)
    if not rows:
        raise SelectionError("layers", f"{quoted(spec)} selects none of this grid's layers {grid.layers}")
    return rows


def _columns(grid: Grid, spec: str) -> tuple[int, ...]:
    last = len(grid.tokens) - 1
    try:
        return tuple(parse_layers(spec, len(grid.tokens)))
    except LayerSpecError:
        raise SelectionError(
            "tokens",
            f"{quoted(spec)} is not a token range of this grid (positions 0..{last}): use e.g. 2:8, 2-7 or 0,3",
        ) from None


def _check_characters(field: str, spec: str, n_items: int) -> None:
    """A spec no longer than `parse_layers` takes for `n_items` (checked first, so nothing below reads a huge one),
    only ASCII digits, `-`, `:`, `,`, spaces and `all`, and no number above MAX_NUMBER."""
    limit = max_spec_chars(n_items)
    if len(spec) > limit:
        raise SelectionError(field, f"{field} has {len(spec)} characters; the limit is {limit}")
    if not SPEC_CHARACTERS.fullmatch(spec):
        raise SelectionError(field, f"{quoted(spec)}: use digits with - : and , (e.g. 0-10, 2:8, ::3, 0,5)")
    if any(
        len(number.lstrip("0")) > len(str(MAX_NUMBER)) or int(number) > MAX_NUMBER
        for number in re.findall("[0-9]+", spec)
    ):
        raise SelectionError(field, f"{quoted(spec)} names a number above {MAX_NUMBER}")


def select(grid: Grid, layers: str | None = None, tokens: str | None = None) -> Selection:
    """The rows and columns that `layers` and `tokens` name (None or empty: all); raises `SelectionError`."""
    whole = Selection.whole(grid)
    for field, spec, n_items in (("layers", layers, grid.model.n_layers), ("tokens", tokens, len(grid.tokens))):
        _check_characters(field, spec or "", n_items)
    rows = _rows(grid, layers) if layers and layers.strip() else whole.rows
    columns = _columns(grid, tokens) if tokens and tokens.strip() else whole.columns
    return Selection(rows, columns)
