"""A grid as a long-format CSV (one row per predicted token), and back.

Each cell gives `n_future` rows of kind `predicted` (`k` = step: 0 is the token right after `position`) and
`top_k` rows of kind `topk` (`k` = rank of the alternative for the first token). Every row repeats its cell's
layer, input token, the model's actual next token and the cell statistics (`mean_prob`, `first_matches_next`), and
its column's `prediction_depth` (the grid's `Grid.prediction_depth[position]`, over all the grid's layers; empty where
it is null; the column only for grids that have one).
Token text is raw (no visible-whitespace marks) and probabilities are written with every digit, so
`grid_from_csv` rebuilds the cells exactly; the grid-level fields a CSV row has no place for (model details,
context prefix, prompt, timings) come from the grid's JSON (`csv_metadata`).

Text a spreadsheet would run as a formula (starting with `=`, `+`, `-`, `@`, a tab or a carriage return: OWASP's
CSV injection list) is written with a `'` in front, as spreadsheets expect; so is text that already starts with `'`,
so reading removes exactly one leading `'` from every text field that has one (`escape_text`, `unescape_text`).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Mapping

from future_lens.export.selection import Selection
from future_lens.lens.grid import Grid

KINDS = ("predicted", "topk")
BASE_COLUMNS = (
    "model",
    "method",
    "layer",
    "prompt_layer",
    "position",
    "token_id",
    "token_text",
    "token_piece",
    "actual_next_id",
    "actual_next_text",
    "actual_next_piece",
    "actual_next_prob",
    "kind",
    "k",
    "predicted_id",
    "predicted_text",
    "predicted_piece",
    "probability",
    "mean_prob",
    "first_matches_next",
    "next_rank",
    "entropy",
    "kl",
    "prediction_depth",
)
PIECE_COLUMNS = ("token_piece", "actual_next_piece", "predicted_piece")
#: Cell statistics (grid/3): written when the grid has them; empty where a cell has none (`kl` of the logit lens).
STAT_COLUMNS = ("next_rank", "entropy", "kl")
#: The column's prediction depth (future_lens/lens/depth.py): written when the grid has `prediction_depth`.
DEPTH_COLUMN = "prediction_depth"
#: Grid fields a CSV does not carry: `grid_from_csv` takes them from the grid's JSON.
METADATA_FIELDS = ("schema", "model", "context_prefix", "prompt", "timings_ms", "continuations")
#: Columns of free text (token text and pieces, the model id): escaped against formula injection.
TEXT_COLUMNS = (
    "model",
    "token_text",
    "token_piece",
    "actual_next_text",
    "actual_next_piece",
    "predicted_text",
    "predicted_piece",
)
#: First characters that make a spreadsheet read a field as a formula (OWASP), and the escape character itself.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
ESCAPE = "'"


class GridCsvError(ValueError):
    """A CSV that is not a Future Lens grid export."""


def escape_text(text: str) -> str:
    """`text` as a CSV text field: `'` in front when it starts like a formula or with `'` (so no field is a formula,
    and `unescape_text` can tell an added `'` from a real one)."""
    return ESCAPE + text if text.startswith((*FORMULA_STARTS, ESCAPE)) else text


def unescape_text(field: str) -> str:
    """The text `escape_text` wrote as `field`."""
    return field.removeprefix(ESCAPE)


def has_pieces(grid: Grid) -> bool:
    """True when every token carries its vocabulary piece (grid/2); grid/1 documents have none."""
    tokens = [*grid.tokens, *grid.next_tokens, *(t for row in grid.cells for cell in row for t in cell.tokens)]
    return all(token.piece is not None for token in tokens)


def columns(grid: Grid) -> list[str]:
    """The CSV's header: the piece columns only when the grid has pieces."""
    pieces = has_pieces(grid)
    stats = any(cell.next_rank is not None for row in grid.cells for cell in row)
    depth = grid.prediction_depth is not None
    return [
        name
        for name in BASE_COLUMNS
        if (pieces or name not in PIECE_COLUMNS)
        and (stats or name not in STAT_COLUMNS)
        and (depth or name != DEPTH_COLUMN)
    ]


def _stat(value: float | None) -> str:
    return "" if value is None else repr(value)


def _rows(grid: Grid, selection: Selection) -> Iterator[dict[str, object]]:
    prompt_layers, depths = grid.prompt_layers, grid.prediction_depth
    for r in selection.rows:
        for c in selection.columns:
            cell, token, actual = grid.cells[r][c], grid.tokens[c], grid.next_tokens[c]
            shared = {
                "model": grid.model.id,
                "method": grid.method,
                "layer": grid.layers[r],
                "prompt_layer": "" if prompt_layers is None else prompt_layers[r],
                "position": c,
                "token_id": token.id,
                "token_text": token.text,
                "token_piece": token.piece,
                "actual_next_id": actual.id,
                "actual_next_text": actual.text,
                "actual_next_piece": actual.piece,
                "actual_next_prob": repr(actual.prob),
                "mean_prob": repr(cell.mean_prob),
                "first_matches_next": str(bool(cell.tokens) and cell.tokens[0].id == actual.id).lower(),
                "next_rank": _stat(cell.next_rank),
                "entropy": _stat(cell.entropy),
                "kl": _stat(cell.kl),
                DEPTH_COLUMN: "" if depths is None or depths[c] is None else depths[c],
            }
            for kind, predictions in zip(KINDS, (cell.tokens, cell.topk), strict=True):
                for k, predicted in enumerate(predictions):
                    yield {
                        **shared,
                        "kind": kind,
                        "k": k,
                        "predicted_id": predicted.id,
                        "predicted_text": predicted.text,
                        "predicted_piece": predicted.piece,
                        "probability": repr(predicted.prob),
                    }


def _escaped(row: dict[str, object]) -> dict[str, object]:
    return {
        name: escape_text(value) if name in TEXT_COLUMNS and isinstance(value, str) else value
        for name, value in row.items()
    }


def grid_csv(grid: Grid, selection: Selection | None = None) -> str:
    """The grid (or the selected rows and columns) as CSV text (RFC 4180 quoting, `\\r\\n` line ends); text that
    starts like a formula gets a `'` in front (`escape_text`)."""
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=columns(grid), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(_escaped(row) for row in _rows(grid, selection or Selection.whole(grid)))
    return out.getvalue()


def _token(row: Mapping[str, str], prefix: str, prob: str | None = None) -> dict[str, object]:
    """A token object from a row's `{prefix}_id`, `_text`, `_piece` (and a probability column)."""
    token: dict[str, object] = {"id": int(row[f"{prefix}_id"]), "text": unescape_text(row[f"{prefix}_text"])}
    if f"{prefix}_piece" in row:
        token["piece"] = unescape_text(row[f"{prefix}_piece"])
    if prob is not None:
        token["prob"] = float(row[prob])
    return token


def _in_order(tokens: dict[int, dict[str, object]]) -> list[dict[str, object]]:
    """Tokens by `k`, which must run 0, 1, 2, ... (rows may come in any order)."""
    if sorted(tokens) != list(range(len(tokens))):
        raise GridCsvError(f"a cell's k values are {sorted(tokens)}, not 0..{len(tokens) - 1}")
    return [tokens[k] for k in range(len(tokens))]


def _cell(
    kinds: dict[str, dict[int, dict[str, object]]], mean_prob: float, stats: dict[str, object]
) -> dict[str, object]:
    return {"tokens": _in_order(kinds["predicted"]), "mean_prob": mean_prob, "topk": _in_order(kinds["topk"]), **stats}


def _stats(row: Mapping[str, str]) -> dict[str, object]:
    """A cell's statistics from a row (none in CSVs of grids without them)."""
    values = {name: row.get(name) or None for name in STAT_COLUMNS}
    rank = values["next_rank"]
    return {
        "next_rank": None if rank is None else int(rank),
        **{name: None if values[name] is None else float(values[name]) for name in ("entropy", "kl")},
    }


def read_grid_csv(text: str) -> dict[str, object]:
    """What a grid CSV carries, as grid-JSON fields: `method`, `layers`, `prompt_layers`, `positions`, `tokens`,
    `next_tokens`, `cells`, `prediction_depth` (None without the column), `n_future`, `top_k` and `model` (its id
    only). Raises `GridCsvError`."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    optional = (*PIECE_COLUMNS, *STAT_COLUMNS, DEPTH_COLUMN)
    missing = [name for name in BASE_COLUMNS if name not in optional and name not in (reader.fieldnames or [])]
    if missing:
        raise GridCsvError(f"not a Future Lens grid CSV: no column {', '.join(missing)}")
    layers: dict[int, str] = {}
    tokens: dict[int, tuple[dict[str, object], dict[str, object]]] = {}
    cells: dict[tuple[int, int], dict[str, dict[int, dict[str, object]]]] = {}
    means: dict[tuple[int, int], float] = {}
    stats: dict[tuple[int, int], dict[str, object]] = {}
    depths: dict[int, int | None] = {}
    has_depth = DEPTH_COLUMN in (reader.fieldnames or [])
    first: dict[str, str] | None = None
    try:
        for row in reader:
            first = first or row
            layer, position = int(row["layer"]), int(row["position"])
            layers.setdefault(layer, row["prompt_layer"])
            tokens.setdefault(position, (_token(row, "token"), _token(row, "actual_next", "actual_next_prob")))
            cell = cells.setdefault((layer, position), {kind: {} for kind in KINDS})
            means.setdefault((layer, position), float(row["mean_prob"]))
            stats.setdefault((layer, position), _stats(row))
            if has_depth:
                depths.setdefault(position, int(row[DEPTH_COLUMN]) if row[DEPTH_COLUMN] else None)
            if row["kind"] not in KINDS:
                raise GridCsvError(f"line {reader.line_num}: kind must be predicted or topk, not {row['kind']!r}")
            cell[row["kind"]][int(row["k"])] = _token(row, "predicted", "probability")
    except (KeyError, TypeError, ValueError) as error:  # a missing column or field, or one that is not a number
        if isinstance(error, GridCsvError):
            raise
        raise GridCsvError(f"line {reader.line_num}: {error}") from None
    if first is None:
        raise GridCsvError("the CSV has no rows")
    positions, layer_list = sorted(tokens), sorted(layers)
    if len(cells) != len(layer_list) * len(positions):
        raise GridCsvError("the CSV does not have every (layer, position) cell")
    rows = [
        [_cell(cells[layer, position], means[layer, position], stats[layer, position]) for position in positions]
        for layer in layer_list
    ]
    return {
        "model": {"id": unescape_text(first["model"])},
        "method": first["method"],
        "n_future": max(len(cell["tokens"]) for row in rows for cell in row),
        "top_k": max(len(cell["topk"]) for row in rows for cell in row),
        "layers": layer_list,
        "prompt_layers": [int(layers[layer]) for layer in layer_list] if all(layers.values()) else None,
        "positions": positions,
        "tokens": [tokens[position][0] for position in positions],
        "next_tokens": [tokens[position][1] for position in positions],
        "cells": rows,
        "prediction_depth": [depths[position] for position in positions] if has_depth else None,
    }


def csv_metadata(grid: Grid) -> dict[str, object]:
    """The grid-JSON fields a CSV does not carry (`METADATA_FIELDS`), to rebuild the full grid with."""
    document = grid.model_dump(mode="json", by_alias=True)
    return {name: document[name] for name in METADATA_FIELDS}


def grid_from_csv(text: str, metadata: str | bytes | Mapping[str, object] | Grid) -> Grid:
    """The grid a CSV was written from: its cells from the CSV, the rest from `metadata`: the grid's JSON (the
    text or bytes of `/g/{id}.json` or a saved file, or that parsed), the `Grid`, or `csv_metadata(grid)`. Raises
    `GridCsvError` (also for metadata that is not a JSON object) or pydantic's `ValidationError`."""
    if isinstance(metadata, Grid):
        metadata = csv_metadata(metadata)
    elif isinstance(metadata, str | bytes | bytearray):
        try:
            metadata = json.loads(metadata)
        except ValueError as error:  # also a UnicodeDecodeError
            raise GridCsvError(f"the grid's JSON does not parse: {error}") from None
    if not isinstance(metadata, Mapping):
        raise GridCsvError(f"the grid's JSON must be an object, not {type(metadata).__name__}")
    carried = read_grid_csv(text)
    carried.pop("positions")
    carried.pop("model")
    document = {**{name: metadata[name] for name in METADATA_FIELDS if name in metadata}, **carried}
    for name in ("n_future", "top_k"):  # counts the CSV can only bound (a vocabulary smaller than top_k)
        if name in metadata:
            document[name] = metadata[name]
    return Grid.model_validate(document)
