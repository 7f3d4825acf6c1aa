"""Comparing two grids cell by cell: which cells read differently, aligned by layer and token position.

Pure data (no web code, no model): `diff_grids(a, b, threshold)` works on two `Grid`s, e.g. two stored documents
read back with `Grid.model_validate`. Schema `future-lens.diff/1` is documented in docs/grid-format.md.

Alignment:
- rows: by block index. Only layers both grids have are compared, in increasing order; the others are listed in
  `a_only_layers` / `b_only_layers`.
- columns: by token position from the start of the text (position t of A against position t of B), whatever the
  tokens are: texts that differ in one word line up word for word as long as the word before it has the same number
  of tokens. Positions beyond the shorter text are unmatched: their `cells` entries are `null`.
- a cell differs when its phrase differs (any of the first min(N_A, N_B) predicted token ids) or when the
  probability of its first predicted token changes by more than `threshold` (absolute, 0..1).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from pydantic import BaseModel, Field

from future_lens.lens.grid import Cell, Grid, TokenText

DIFF_SCHEMA = "future-lens.diff/1"
#: The page's default: a first-token probability change of more than 10 points marks a cell.
DEFAULT_THRESHOLD = 0.1


class RowPair(BaseModel):
    """One compared layer and its row index in each grid."""

    layer: int
    a: int
    b: int


class ColumnPair(BaseModel):
    """One token position: the input token of each grid there (`null` past the end of that grid's text)."""

    position: int
    a: TokenText | None
    b: TokenText | None

    @property
    def matched(self) -> bool:
        return self.a is not None and self.b is not None

    @property
    def same_token(self) -> bool:
        return self.a is not None and self.b is not None and self.a.id == self.b.id


class CellDiff(BaseModel):
    """How the cells of one layer and position differ."""

    steps_differ: list[int] = Field(description="predicted-token steps (0-based) whose token ids differ")
    prob_a: float = Field(description="probability of A's first predicted token")
    prob_b: float = Field(description="probability of B's first predicted token")
    prob_delta: float = Field(description="prob_b - prob_a")
    differs: bool = Field(description="the phrase differs, or |prob_delta| > threshold")

    @property
    def phrase_differs(self) -> bool:
        return bool(self.steps_differ)


class GridDiff(BaseModel):
    """Two grids aligned: `cells[i][t]` compares row `rows[i]` at position `columns[t]` (`null`: unmatched)."""

    model_config = {"populate_by_name": True, "serialize_by_alias": True}

    schema_id: str = Field(default=DIFF_SCHEMA, alias="schema")
    threshold: float
    compared_steps: int = Field(description="min(n_future of A, n_future of B): the phrase steps compared")
    rows: list[RowPair]
    columns: list[ColumnPair]
    a_only_layers: list[int]
    b_only_layers: list[int]
    cells: list[list[CellDiff | None]]

    @property
    def n_differ(self) -> int:
        return sum(1 for row in self.cells for cell in row if cell is not None and cell.differs)

    def differing(self) -> list[tuple[int, int]]:
        """(row index, position) of every differing cell."""
        return [(r, t) for r, row in enumerate(self.cells) for t, cell in enumerate(row) if cell and cell.differs]


def diff_cells(a: Cell, b: Cell, threshold: float, steps: int) -> CellDiff:
    """Two cells of one layer and position compared over their first `steps` predicted tokens."""
    differ = [step for step in range(steps) if a.tokens[step].id != b.tokens[step].id]
    prob_a, prob_b = a.tokens[0].prob, b.tokens[0].prob
    delta = prob_b - prob_a
    return CellDiff(
        steps_differ=differ,
        prob_a=prob_a,
        prob_b=prob_b,
        prob_delta=delta,
        differs=bool(differ) or abs(delta) > threshold,
    )


def aligned_rows(a: Grid, b: Grid, layers: Collection[int] | None = None) -> list[RowPair]:
    """The layers both grids have (and `layers` lists, if given), increasing, with their row in each grid."""
    row_b = {layer: row for row, layer in enumerate(b.layers)}
    pairs = [RowPair(layer=layer, a=row, b=row_b[layer]) for row, layer in enumerate(a.layers) if layer in row_b]
    return sorted((p for p in pairs if layers is None or p.layer in layers), key=lambda p: p.layer)


def aligned_columns(a: Grid, b: Grid) -> list[ColumnPair]:
    """Positions 0 .. the longer text's last token, each with the token of each grid there (if any)."""
    width = max(len(a.tokens), len(b.tokens))
    return [
        ColumnPair(
            position=t,
            a=a.tokens[t] if t < len(a.tokens) else None,
            b=b.tokens[t] if t < len(b.tokens) else None,
        )
        for t in range(width)
    ]


def check_threshold(threshold: float) -> float:
    """The threshold if it is a probability difference (0..1); otherwise ValueError."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be between 0 and 1 (a probability difference), not {threshold}")
    return threshold


def diff_grids(
    a: Grid, b: Grid, threshold: float = DEFAULT_THRESHOLD, layers: Collection[int] | None = None
) -> GridDiff:
    """Grid A against grid B, aligned as the module says; `layers` keeps only those block indices."""
    check_threshold(threshold)
    steps = min(a.n_future, b.n_future)
    rows = aligned_rows(a, b, layers)
    columns = aligned_columns(a, b)
    cells = [
        [
            diff_cells(a.cells[pair.a][column.position], b.cells[pair.b][column.position], threshold, steps)
            if column.matched
            else None
            for column in columns
        ]
        for pair in rows
    ]
    return GridDiff(
        threshold=threshold,
        compared_steps=steps,
        rows=rows,
        columns=columns,
        a_only_layers=sorted(set(a.layers) - set(b.layers)),
        b_only_layers=sorted(set(b.layers) - set(a.layers)),
        cells=cells,
    )


def select_rows(grid: Grid, layers: Sequence[int] | Collection[int]) -> Grid:
    """The grid with only the rows of the listed block indices (in the grid's order)."""
    keep = [row for row, layer in enumerate(grid.layers) if layer in layers]
    prompt_layers = grid.prompt_layers
    return grid.model_copy(
        update={
            "layers": [grid.layers[row] for row in keep],
            "cells": [grid.cells[row] for row in keep],
            "prompt_layers": [prompt_layers[row] for row in keep] if prompt_layers else prompt_layers,
        }
    )
