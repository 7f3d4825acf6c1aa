"""The client's `Grid`: a `future-lens.grid` JSON document plus the backend that made it (for figures and code)."""

from __future__ import annotations

import html
import json
from collections.abc import Iterator
from typing import Any, Protocol


class LensRequestError(ValueError):
    """The request was refused: `field` names the offending parameter, `message` says why."""

    def __init__(self, field: str | None, message: str, status: int | None = None):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message
        self.status = status


class Backend(Protocol):
    """Where a grid's derived views come from: the server that stored it, or the in-process model."""

    def svg(self, grid: Grid) -> str: ...

    def html(self, grid: Grid) -> str: ...

    def track_svg(self, grid: Grid, token_id: int, position: int) -> str: ...

    def code(self, grid: Grid, layer: int, position: int) -> str: ...


PANDAS_MISSING = (
    "Grid.to_pandas() needs pandas, which the client does not install by default: "
    "pip install 'future-lens[notebook]' (or pip install pandas)"
)
#: Pixels per grid row (and for the header, legend and margins) when the grid is shown inline in a notebook.
ROW_PX, CHROME_PX = 26, 190


class Grid:
    """A computed grid. `cells[i][j]` is what block `layers[i]`'s state at token `tokens[j]` anticipates."""

    def __init__(self, data: dict[str, Any], backend: Backend):
        self.data = data
        self._backend = backend

    # ---------- reading ----------

    @property
    def method(self) -> str:
        return self.data["method"]

    @property
    def layers(self) -> list[int]:
        return list(self.data["layers"])

    @property
    def tokens(self) -> list[str]:
        """The input tokens' texts (the columns)."""
        return [token["text"] for token in self.data["tokens"]]

    @property
    def prediction_depth(self) -> list[int | None] | None:
        """Per input token (column): the first of `layers` from which the cells' first token is the model's own next
        token (`next_tokens[t]`) at that and every later listed layer; None for a column whose last listed layer
        reads another token. Computed over this grid's layers only (a flip at a layer it does not list goes unseen).
        None as a whole when the grid has no depth: a lens that does not read the next token first, or a document
        stored before the field (docs/grid-format.md, "Prediction depth")."""
        depths = self.data.get("prediction_depth")
        return None if depths is None else list(depths)

    @property
    def n_future(self) -> int:
        return self.data["n_future"]

    @property
    def id(self) -> str | None:
        """The permalink id (grids from a server; None in-process)."""
        return self.data.get("id")

    @property
    def track(self) -> dict[str, Any] | None:
        """The `track` object when the request tracked tokens (docs/grid-format.md), else None."""
        return self.data.get("track")

    def cell(self, layer: int, position: int) -> dict[str, Any]:
        """The cell of block `layer` (one of `layers`) at token `position`, as in the JSON document."""
        if layer not in self.data["layers"]:
            raise KeyError(f"layer {layer} is not a row of this grid (rows: {self.layers})")
        return self.data["cells"][self.data["layers"].index(layer)][position]

    def predicted(self, layer: int, position: int) -> list[str]:
        """The texts of the N tokens the cell predicts."""
        return [token["text"] for token in self.cell(layer, position)["tokens"]]

    def to_json(self) -> str:
        return json.dumps(self.data, ensure_ascii=False)

    def __repr__(self) -> str:
        shape = f"{len(self.data['layers'])} layers × {len(self.data['tokens'])} tokens"
        return f"<Grid {self.method} · {self.data['model']['id']} · N = {self.n_future} · {shape}>"

    # ---------- tables ----------

    def rows(self) -> Iterator[dict[str, Any]]:
        """Long format: one row per predicted token (`kind` predicted, `k` = step) and per top-k alternative of the
        first token (`kind` topk, `k` = rank - 1), with the cell's layer, position, input token and mean, and, for a
        grid that has `prediction_depth`, its column's depth (`prediction_depth`, None where undefined; over all the
        grid's layers), as in the CSV export."""
        data, depths = self.data, self.prediction_depth
        for row, layer in enumerate(data["layers"]):
            for position, cell in enumerate(data["cells"][row]):
                shared = {
                    "layer": layer,
                    "position": position,
                    "input_token": data["tokens"][position]["text"],
                    "actual_next": data["next_tokens"][position]["text"],
                    "mean_prob": cell["mean_prob"],
                }
                if depths is not None:
                    shared["prediction_depth"] = depths[position]
                for kind, tokens in (("predicted", cell["tokens"]), ("topk", cell["topk"])):
                    for k, token in enumerate(tokens):
                        yield {
                            **shared,
                            "kind": kind,
                            "k": k,
                            "token_id": token["id"],
                            "token": token["text"],
                            "prob": token["prob"],
                        }

    def track_rows(self) -> Iterator[dict[str, Any]]:
        """Long format of `track`: one row per tracked token, layer and position with its probability and rank."""
        track = self.track or {"layers": [], "tokens": []}
        for tracked in track["tokens"]:
            for row, layer in enumerate(track["layers"]):
                for position, prob in enumerate(tracked["probs"][row]):
                    yield {
                        "token_id": tracked["id"],
                        "token": tracked["text"],
                        "layer": layer,
                        "position": position,
                        "prob": prob,
                        "rank": tracked["ranks"][row][position],
                    }

    def to_pandas(self, what: str = "cells"):
        """A pandas DataFrame of `rows()` (`what="cells"`) or `track_rows()` (`what="track"`)."""
        try:
            import pandas
        except ImportError as error:
            raise ImportError(PANDAS_MISSING) from error
        if what not in ("cells", "track"):
            raise ValueError(f"what must be 'cells' or 'track', not {what!r}")
        return pandas.DataFrame(list(self.rows() if what == "cells" else self.track_rows()))

    # ---------- figures and code (from the backend) ----------

    def to_svg(self) -> str:
        """The grid as an SVG figure (the page's colours and legend)."""
        return self._backend.svg(self)

    def to_html(self) -> str:
        """The grid as a standalone offline HTML file with popovers (no external requests)."""
        return self._backend.html(self)

    def track_svg(self, token_id: int, position: int = 0) -> str:
        """The trajectory of `token_id` through this grid's cells as an SVG chart, `position` highlighted."""
        return self._backend.track_svg(self, token_id, position)

    def code(self, layer: int, position: int) -> str:
        """A runnable transformers + nnsight script that recomputes cell (`layer`, `position`)."""
        return self._backend.code(self, layer, position)

    def _repr_html_(self) -> str:
        """Jupyter's rich display: the offline HTML export in a sandboxed frame (its own script keeps the popovers;
        everything inside is escaped by the export, and the whole file once more as the attribute's value)."""
        footer_rows = 3 if self.prediction_depth is not None else 2  # token heads, model row (, depth row)
        height = CHROME_PX + ROW_PX * (len(self.data["layers"]) + footer_rows)
        return (
            f'<iframe class="future-lens-grid" title="{html.escape(repr(self))}" sandbox="allow-scripts" '
            f'style="width: 100%; height: {height}px; border: 0" srcdoc="{html.escape(self.to_html(), quote=True)}">'
            "</iframe>"
        )
