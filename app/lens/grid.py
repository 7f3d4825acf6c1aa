"""The grid: tokens x layers, each cell what the lens reads from that hidden state; and its JSON schema.

Schema `future-lens.grid/2` is documented in docs/grid-format.md. Building is pure computation (no web code).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from pydantic import BaseModel, ConfigDict, Field

from app.lens.engine import CellPredictions
from app.lens.models import LoadedModel
from app.lens.source import SourcePass, run_source_pass, tokenize
from app.lens.tokens import TokenRenderer

if TYPE_CHECKING:  # lenses build grids through this module (`Lens.grid`); no import cycle at run time
    from app.lens.lenses import Lens

SCHEMA = "future-lens.grid/2"


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
    cells: list[list[Cell]]
    prompt: str | None = Field(default=None, description="fixed-prompt lens: the prompt text")
    prompt_layers: list[int] | None = Field(
        default=None, description="future lens: per listed layer, the layer whose trained prompt was used"
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
    """Renders token ids (text and raw piece, once per id) from their vocabulary pieces: see app/lens/tokens.py."""

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


def _assemble(
    model: LoadedModel,
    lens: Lens,
    source: SourcePass,
    layers: list[int],
    predictions: CellPredictions,
    n_future: int,
    top_k: int,
    texts: _TokenTexts,
    timings: dict[str, float],
) -> Grid:
    n_tokens = len(source.token_ids)
    ids, probs = predictions.token_ids.tolist(), predictions.probs.tolist()  # one conversion, not one per cell
    topk_ids, topk_probs = predictions.topk_ids.tolist(), predictions.topk_probs.tolist()
    mean_probs = predictions.probs.mean(dim=1).tolist()
    cells = []
    for row in range(len(layers)):
        cells.append([])
        for column in range(n_tokens):
            c = row * n_tokens + column
            cells[-1].append(
                Cell(
                    tokens=texts.probs(ids[c], probs[c]),
                    mean_prob=mean_probs[c],
                    topk=texts.probs(topk_ids[c], topk_probs[c]),
                )
            )
    return Grid(
        model=model_info(model),
        method=lens.method,
        n_future=n_future,
        top_k=top_k,
        tokens=[texts.token(i) for i in source.token_ids],
        layers=layers,
        context_prefix=source.context_prefix,
        next_tokens=texts.probs(source.next_token_ids.tolist(), source.next_token_probs.tolist()),
        cells=cells,
        timings_ms=timings,
        **lens.describe(layers),
    )


def compute_grids(lens: Lens, texts: Sequence[str], layers: list[int], n_future: int, top_k: int) -> list[Grid]:
    """Grids for several texts (`layers` resolved, `n_future` already capped by the lens): one source pass per
    text, then the cells of all texts through the lens together. Public entry point: `Lens.grid`/`Lens.grids`."""
    model = lens.model
    started = time.perf_counter()
    sources = [run_source_pass(model, tokenize(model, text)) for text in texts]
    source_ms = (time.perf_counter() - started) * 1000
    flat = [_cells_for(source, layers) for source in sources]
    lens_started = time.perf_counter()
    predictions = lens.predict(torch.cat([f[0] for f in flat]), torch.cat([f[1] for f in flat]), n_future, top_k)
    lens_ms = (time.perf_counter() - lens_started) * 1000
    decoder, grids, offset = _TokenTexts(model), [], 0
    for source, (states, _) in zip(sources, flat, strict=True):
        part = predictions.take(torch.arange(offset, offset + len(states)))
        offset += len(states)
        timings = {"source_pass": source_ms / len(texts), "lens": lens_ms / len(texts)}
        grids.append(_assemble(model, lens, source, layers, part, n_future, top_k, decoder, timings))
    total_ms = (time.perf_counter() - started) * 1000
    for grid in grids:
        grid.timings_ms["total"] = total_ms / len(texts)
    return grids
