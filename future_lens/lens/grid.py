"""The grid: tokens x layers, each cell what the lens reads from that hidden state; and its JSON schema.

Schema `future-lens.grid/3` is documented in docs/grid-format.md. Building is pure computation (no web code).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field

from future_lens.lens.continuation import model_continuations
from future_lens.lens.depth import prediction_depths
from future_lens.lens.engine import CellPredictions, CellReference
from future_lens.lens.kv_cache import cache_keys_values
from future_lens.lens.models import LoadedModel
from future_lens.lens.protocol import LensLike
from future_lens.lens.source import SourcePass, run_source_pass, tokenize
from future_lens.lens.staggered import ContinuationRows, Finished, can_decode_alongside, decode_staggered
from future_lens.lens.tokens import TokenRenderer

SCHEMA = "future-lens.grid/3"


class TokenText(BaseModel):
    id: int
    text: str = Field(description="the characters the token contributes; stray bytes of a split character as \\xhh")
    piece: str | None = Field(default=None, description="the raw vocabulary piece (absent in grid/1 documents)")


class TokenProb(TokenText):
    prob: float


class Cell(BaseModel):
    tokens: list[TokenProb] = Field(description="the N predicted tokens, in order")
    mean_prob: float = Field(description="mean probability of the N predicted tokens")
    topk: list[TokenProb] = Field(description="top-k alternatives for the first predicted token")
    next_rank: int | None = Field(
        default=None,
        description="rank (1 = likeliest) the first-token distribution gives the model's actual next token",
    )
    entropy: float | None = Field(default=None, description="entropy of the first-token distribution, in nats")
    kl: float | None = Field(
        default=None,
        description="future/fixed: KL(model's next-token distribution ‖ first-token distribution), in nats",
    )


class ModelInfo(BaseModel):
    id: str
    n_layers: int
    d_model: int
    dtype: str
    fingerprint: str
    quantization: str | None = Field(
        default=None, description="how the weights were compressed before loading (null: as published)"
    )


class Grid(BaseModel):
    """A computed grid: `cells[layer_index][token_index]`, layers and tokens as listed."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    schema_id: str = Field(default=SCHEMA, alias="schema")
    model: ModelInfo
    method: str
    n_future: int
    top_k: int
    tokens: list[TokenText]
    layers: list[int]
    context_prefix: list[int]
    next_tokens: list[TokenProb] = Field(description="the model's own greedy next token after each input token")
    continuations: list[list[TokenProb]] | None = Field(
        default=None,
        description="the model's own greedy n_future tokens after each input token (`[t][0]` is `next_tokens[t]`)",
    )
    cells: list[list[Cell]]
    prediction_depth: list[int | None] | None = Field(
        default=None,
        description=(
            "per input token: the first of this grid's `layers` from which the cells' first token is the model's own "
            "next token (`next_tokens[t]`) at that and every later listed layer; null where the last listed layer "
            "reads another token. Computed over the listed layers only (a strided grid checks no layer in between). "
            "Null for the whole grid when its lens does not read the next token at N = 0 or a row is not computed "
            "(future_lens/lens/depth.py)"
        ),
    )
    prompt: str | None = Field(default=None, description="fixed-prompt lens: the prompt text")
    prompt_layers: list[int] | None = Field(
        default=None, description="future lens: per listed layer, the layer whose trained prompt was used"
    )
    lens_fit: dict[str, str] | None = Field(
        default=None, description="tuned and Jacobian lenses: how their maps were fitted (examples, objective, ...)"
    )
    timings_ms: dict[str, float]


def model_info(model: LoadedModel) -> ModelInfo:
    adapter = model.adapter
    return ModelInfo(
        id=model.id,
        n_layers=adapter.n_layers,
        d_model=adapter.d_model,
        dtype=model.dtype_name,
        fingerprint=model.fingerprint,
        quantization=model.quantization,
    )


class _TokenTexts:
    """Renders token ids (text and raw piece, once per id) from their vocabulary pieces: see
    future_lens/lens/tokens.py."""

    def __init__(self, model: LoadedModel):
        self.render = TokenRenderer(model.tokenizer)

    def __call__(self, token_id: int) -> str:
        return self.render(token_id).text

    def token(self, token_id: int) -> TokenText:
        rendered = self.render(token_id)
        return TokenText(id=token_id, text=rendered.text, piece=rendered.piece)

    def probs(self, ids: list[int], probs: list[float]) -> list[TokenProb]:
        rendered = [self.render(i) for i in ids]
        return [
            TokenProb(id=i, text=r.text, piece=r.piece, prob=p) for i, r, p in zip(ids, rendered, probs, strict=True)
        ]


def _cells_for(source: SourcePass, layers: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten one text's (layer, token) cells, layer-major: states [L'*T, d] and their layers."""
    states = source.hidden[layers].reshape(-1, source.hidden.shape[-1])
    layer_ids = torch.tensor(layers).repeat_interleave(len(source.token_ids))
    return states, layer_ids


@dataclass
class GridRow:
    """One row of a grid being streamed: the cells of block `layer`, row `index` of the grid's `layers`."""

    index: int
    layer: int
    cells: list[Cell]


#: A streamed grid first decodes this many rows, spread evenly over depth (the middle row for 1), alone. More rows
#: first cost more: each forward of the first N is then heavier, and the first N forwards are the ones that do the
#: least work per read of the weights (benchmarks/streaming.py: at the page's defaults 1 row keeps the whole streamed
#: grid within ~7 % of a plain one, 2 rows ~10 %).
FIRST_ROWS = 1


def first_rows(n_rows: int, count: int = FIRST_ROWS) -> list[int]:
    """`count` rows spread evenly inside the depth (the middle for 1), distinct, in order."""
    return sorted({round(i * (n_rows - 1) / (count + 1)) for i in range(1, count + 1)}) if n_rows else []


def stream_waves(n_rows: int, n_future: int, count: int = FIRST_ROWS) -> list[list[int]]:
    """The waves a streamed grid decodes its rows in: `waves[k]` (row indices, maybe none) enters the decode at
    forward k (`Lens.predict_waves`). `first_rows` enter first and alone, so they are whole after N light forwards;
    every other row enters at forward N, as they leave. The whole grid then takes 2N forwards of the model instead of
    a plain grid's N, the extra N light. Letting the rest enter earlier (overlapping the waves) saves forwards but
    puts the rest's heavy patched forward before the first row is whole (~0.6 s later at the page's defaults), and
    each further wave costs a forward: benchmarks/streaming.py."""
    first = first_rows(n_rows, count)
    rest = [row for row in range(n_rows) if row not in first]
    return [first, *([[]] * (n_future - 1)), rest] if rest else [first]


class _TextGrid:
    """One text's source pass and what each of its rows needs: the cells' states, the statistics reference, the
    model's own continuation, and turning predictions into cells."""

    def __init__(
        self,
        lens: LensLike,
        text: str,
        layers: list[int],
        n_future: int,
        top_k: int,
        texts: _TokenTexts,
        continuation: bool = True,
    ):
        model = lens.model
        self.lens, self.layers, self.n_future, self.top_k, self.texts = lens, layers, n_future, top_k, texts
        started = time.perf_counter()
        self.source = run_source_pass(model, tokenize(model, text), keep_cache=True)
        self.timings = {"source_pass": (time.perf_counter() - started) * 1000}
        if continuation:
            self.compute_continuation()

    def compute_continuation(self) -> None:
        """The model's own continuation, decoded on the source pass's keys/values (then dropped)."""
        started = time.perf_counter()
        continuation = model_continuations(self.lens.model, self.source.token_ids, self.n_future, self.source)
        self.set_continuation(*continuation, (time.perf_counter() - started) * 1000)

    def set_continuation(self, token_ids: torch.Tensor, probs: torch.Tensor, elapsed_ms: float) -> None:
        self.continuation = token_ids, probs
        self.timings["continuation"] = elapsed_ms
        self.source.cache = None  # only the continuation decodes on the text's keys/values

    @property
    def n_tokens(self) -> int:
        return len(self.source.token_ids)

    def cell_inputs(self, rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, CellReference]:
        """States [R*T, d], their layers and the statistics reference of grid rows `rows` (row-major)."""
        source, layers = self.source, [self.layers[row] for row in rows]
        states, layer_ids = _cells_for(source, layers)
        index = torch.arange(self.n_tokens).repeat(len(layers))
        return states, layer_ids, CellReference(source.next_log_probs, source.next_token_ids, index)

    def cells(self, predictions: CellPredictions) -> list[list[Cell]]:
        """Rows of cells from the predictions of whole rows, row-major."""
        ids, probs = predictions.token_ids.tolist(), predictions.probs.tolist()  # one conversion, not one per cell
        topk_ids, topk_probs = predictions.topk_ids.tolist(), predictions.topk_probs.tolist()
        mean_probs = predictions.probs.mean(dim=1).tolist()
        stats = predictions.stats
        ranks = stats.next_rank.tolist() if stats else None
        entropies = stats.entropy.tolist() if stats else None
        kls = stats.kl.tolist() if stats else None
        cells = [
            Cell(
                tokens=self.texts.probs(ids[c], probs[c]),
                mean_prob=mean_probs[c],
                topk=self.texts.probs(topk_ids[c], topk_probs[c]),
                next_rank=ranks[c] if ranks else None,
                entropy=entropies[c] if entropies else None,
                kl=None if kls is None or math.isnan(kls[c]) else kls[c],
            )
            for c in range(len(ids))
        ]
        return [cells[i : i + self.n_tokens] for i in range(0, len(cells), self.n_tokens)]

    def grid(self, cells: list[list[Cell]], timings: dict[str, float]) -> Grid:
        """The grid with these rows of cells (`[]` for a row not computed yet)."""
        model, source, texts = self.lens.model, self.source, self.texts
        continuation_ids, continuation_probs = (tensor.tolist() for tensor in self.continuation)
        next_ids = source.next_token_ids.tolist()
        depths = grid_prediction_depths(cells, self.layers, next_ids) if self.lens.reads_next_token else None
        described = self.lens.describe(self.layers)
        unknown = sorted(set(described) - set(Grid.model_fields))
        if unknown:  # pydantic would drop them silently: a lens's facts must have a place in the schema
            raise TypeError(f"{type(self.lens).__name__}.describe gave fields the grid schema lacks: {unknown}")
        return Grid(
            model=model_info(model),
            method=self.lens.method,
            n_future=self.n_future,
            top_k=self.top_k,
            tokens=[texts.token(i) for i in source.token_ids],
            layers=self.layers,
            context_prefix=source.context_prefix,
            next_tokens=texts.probs(next_ids, source.next_token_probs.tolist()),
            continuations=[texts.probs(i, p) for i, p in zip(continuation_ids, continuation_probs, strict=True)],
            cells=cells,
            prediction_depth=depths,
            timings_ms=timings,
            **described,
        )


def grid_prediction_depths(
    cells: Sequence[Sequence[Cell]], layers: Sequence[int], next_ids: Sequence[int]
) -> list[int | None] | None:
    """`prediction_depth` of every column from the cells' first tokens (future_lens/lens/depth.py), or None while a
    row has no cells yet (a streamed grid's frame)."""
    if not cells or not all(cells):
        return None
    top1 = [[cell.tokens[0].id if cell.tokens else None for cell in row] for row in cells]
    return prediction_depths(top1, layers, next_ids)


def _predict(
    lens: LensLike, inputs: Sequence[tuple[torch.Tensor, torch.Tensor, CellReference]], n_future: int, top_k: int
):
    """The lens on the cells of several texts at once (with first-token statistics where the lens measures them)."""
    states = torch.cat([i[0] for i in inputs])
    layer_ids = torch.cat([i[1] for i in inputs])
    if not lens.measures_first_token:
        return lens.predict(states, layer_ids, n_future, top_k)
    offsets = torch.tensor([0, *(len(i[2].next_ids) for i in inputs)]).cumsum(0)
    reference = CellReference(
        torch.cat([i[2].log_probs for i in inputs]),
        torch.cat([i[2].next_ids for i in inputs]),
        torch.cat([i[2].index + offsets[n] for n, i in enumerate(inputs)]),
    )
    return lens.predict(states, layer_ids, n_future, top_k, reference=reference)


def compute_grids(lens: LensLike, texts: Sequence[str], layers: list[int], n_future: int, top_k: int) -> list[Grid]:
    """Grids for several texts (`layers` resolved, `n_future` already capped by the lens): one source pass per
    text, then the cells of all texts through the lens together. Public entry point: `Lens.grid`/`Lens.grids`."""
    started = time.perf_counter()
    decoder = _TokenTexts(lens.model)
    text_grids = [_TextGrid(lens, text, layers, n_future, top_k, decoder) for text in texts]
    rows = range(len(layers))
    inputs = [text_grid.cell_inputs(rows) for text_grid in text_grids]
    lens_started = time.perf_counter()
    predictions = _predict(lens, inputs, n_future, top_k)
    lens_ms = (time.perf_counter() - lens_started) * 1000
    grids, offset = [], 0
    for text_grid, (states, _, _) in zip(text_grids, inputs, strict=True):
        part = predictions.take(torch.arange(offset, offset + len(states)))
        offset += len(states)
        grids.append(text_grid.grid(text_grid.cells(part), {**text_grid.timings, "lens": lens_ms / len(texts)}))
    total_ms = (time.perf_counter() - started) * 1000
    for grid in grids:
        grid.timings_ms["total"] = total_ms / len(texts)
    return grids


class GridStream:
    """One text's grid computed a few rows at a time (`waves`: lists of row indices, wave k entering the decode at
    forward k; default `stream_waves`).

    `head()` is the grid before any cell (tokens, the model's own continuation, layers; every row `[]`); `rows()`
    yields each row as its wave finishes; after it, `grid()` is the whole grid, as `Lens.grid` computes it (cells
    may differ from it in the last float digits: other rows share each forward). No work starts before `head()` or
    `rows()`; stopping the iteration stops the work."""

    def __init__(
        self,
        lens: LensLike,
        text: str,
        layers: list[int],
        n_future: int,
        top_k: int,
        waves: Sequence[Sequence[int]] | None = None,
    ):
        self.lens, self.text, self.layers, self.n_future, self.top_k = lens, text, layers, n_future, top_k
        self.waves = [list(w) for w in waves] if waves is not None else stream_waves(len(layers), n_future)
        if sorted(row for w in self.waves for row in w) != list(range(len(layers))):
            raise ValueError("waves must list every row index exactly once")
        self._text_grid: _TextGrid | None = None
        self._steps: Iterator[Finished] = iter(())
        self._pending: list[Finished] = []  # steps done before the first row was asked for (the continuation's)
        self._cells: list[list[Cell]] = [[] for _ in layers]
        self._started = 0.0
        self._lens_ms = 0.0
        self._done = 0

    def head(self) -> Grid:
        """The grid's frame: everything but the cells (runs the source pass on first call)."""
        return self._source().grid([[] for _ in self.layers], dict(self._source().timings))

    def _source(self) -> _TextGrid:
        if self._text_grid is None:
            self._started = time.perf_counter()
            text_grid = _TextGrid(
                self.lens, self.text, self.layers, self.n_future, self.top_k, _TokenTexts(self.lens.model), False
            )
            self._steps = self._start(text_grid)
            self._text_grid = text_grid
        return self._text_grid

    def _start(self, text_grid: _TextGrid) -> Iterator[Finished]:
        """The lens on every row, wave by wave (each step of work yields the waves it finished), and the model's
        continuation: decoded in the first forwards of the staggered decode where the lens staggers (they are
        light: only the first wave is in flight), else on its own first."""
        model, source = self.lens.model, text_grid.source
        order = [row for wave in self.waves for row in wave]
        states, layer_ids, reference = text_grid.cell_inputs(order)
        entering, start = [], 0
        for wave in self.waves:
            entering.append(torch.arange(start, start + len(wave) * text_grid.n_tokens))
            start += len(wave) * text_grid.n_tokens
        reference = reference if self.lens.measures_first_token else None
        staggered = self.lens.staggered(states, layer_ids, self.n_future, reference)
        text_length = len(source.context_prefix) + len(source.token_ids)
        if staggered is None or source.cache is None or not can_decode_alongside(model, text_length, self.n_future):
            text_grid.compute_continuation()
            return self.lens.predict_waves(states, layer_ids, entering, self.n_future, self.top_k, reference)
        cells, prefixes = staggered
        keys_values = cache_keys_values(source.cache)
        rows = ContinuationRows(
            keys_values, len(source.context_prefix), source.next_token_ids, source.next_token_probs, self.n_future
        )
        steps = decode_staggered(
            model, cells, entering, n_future=self.n_future, top_k=self.top_k, prefixes=prefixes, alongside=rows
        )
        started = time.perf_counter()
        while not rows.done():
            self._pending.append(next(steps))
        text_grid.set_continuation(rows.token_ids, rows.probs, (time.perf_counter() - started) * 1000)
        return steps

    def rows(self, stop: Callable[[], bool] | None = None) -> Iterator[GridRow]:
        """Each row as soon as it is computed. `stop`, asked after every step of work (a forward of the model, for
        decoding lenses), ends the iteration early by returning True."""
        text_grid = self._source()
        while True:
            started = time.perf_counter()
            finished = self._pending.pop(0) if self._pending else next(self._steps, None)
            self._lens_ms += (time.perf_counter() - started) * 1000
            if finished is None:
                return
            for index, predictions in finished:
                for row, cells in zip(self.waves[index], text_grid.cells(predictions), strict=True):
                    self._cells[row] = cells
                    self._done += 1
                    yield GridRow(row, self.layers[row], cells)
            if stop is not None and self._done < len(self.layers) and stop():
                self._steps.close()
                return

    @property
    def rows_done(self) -> int:
        return self._done

    def grid(self) -> Grid:
        """The whole grid, once `rows()` has run to its end."""
        if self._done < len(self.layers):
            raise RuntimeError(f"only {self._done} of {len(self.layers)} rows are computed")
        text_grid = self._source()
        total_ms = (time.perf_counter() - self._started) * 1000
        return text_grid.grid(self._cells, {**text_grid.timings, "lens": self._lens_ms, "total": total_ms})
