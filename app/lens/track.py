"""Token trajectories: how likely a lens finds chosen tokens, at every layer and position of a text.

For each tracked token id and each (layer, position) cell, the probability the lens gives that token as the *first*
predicted token (the distribution a grid's `topk` is cut from), and its rank in that distribution (1 = the most
likely; ties share the better rank). The logit lens reads it from final norm + unembedding of the state; the
patched-context lenses (future, fixed) from the one patched forward of the cell's target context. Pure computation,
no web code; the public entry point is `Lens.track(text, token_ids, layers=...)`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from pydantic import BaseModel, Field

from app.lens.engine import default_chunk_rows, next_token_probs, rows_cache
from app.lens.grid import TokenText
from app.lens.interventions import patch_block_outputs
from app.lens.lenses import Lens, LogitLens, PatchedContextLens, logit_lens_probs
from app.lens.models import LoadedModel
from app.lens.source import run_source_pass, tokenize
from app.lens.tokens import TokenRenderer

#: Cells per forward (logit lens: per unembedding) while tracking: each row holds a whole-vocabulary distribution.
TRACK_CHUNK_ROWS = 256


class TrackingUnsupportedError(ValueError):
    """The lens has no first-token distribution to track (e.g. a method added later without one)."""


class TrackedToken(TokenText):
    """One tracked token: its probability and rank at each (layer, position), `probs[layer index][position]`."""

    probs: list[list[float]] = Field(description="probability as the first predicted token, [layer][position]")
    ranks: list[list[int]] = Field(description="rank in that distribution (1: most likely), [layer][position]")


class Track(BaseModel):
    """Trajectories of chosen tokens through a text's cells under one lens (`track` in a grid response)."""

    method: str
    layers: list[int] = Field(description="the rows, as block indices (the grid's layers)")
    positions: int = Field(description="the columns: token positions 0 .. positions-1 of the text")
    tokens: list[TrackedToken]


def check_token_ids(model: LoadedModel, token_ids: Sequence[int]) -> str | None:
    """Why `token_ids` cannot be tracked on `model` (None when they can): ids must be vocabulary rows, no repeats."""
    vocab = model.adapter.vocab_size
    for token_id in token_ids:
        if isinstance(token_id, bool) or not isinstance(token_id, int) or not 0 <= token_id < vocab:
            return f"token id {token_id!r} is not in the vocabulary (0 to {vocab - 1})"
    if len(set(token_ids)) != len(token_ids):
        return "token ids repeat"
    return None


def _logit_distributions(lens: LogitLens, states: torch.Tensor) -> Iterator[torch.Tensor]:
    for chunk in states.split(TRACK_CHUNK_ROWS):
        yield logit_lens_probs(lens.model, chunk)


def _patched_distributions(
    lens: PatchedContextLens, states: torch.Tensor, layers: torch.Tensor
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(cell indices, their first-token distributions): cells sharing a target context together, the context's
    prefix keys/values from the lens's store, then one patched forward per chunk (as the engine does)."""
    model = lens.model
    keys = [lens.context_key(layer) for layer in layers.tolist()]
    for key in dict.fromkeys(keys):
        members = torch.tensor([i for i, k in enumerate(keys) if k == key])
        context = lens.context_embeddings(int(layers[members[0]])).to(model.device, model.dtype)
        prefix = lens.prefixes.stacked([key], [context])
        rows = lens.chunk_rows or min(TRACK_CHUNK_ROWS, default_chunk_rows(model, len(context)))
        for chunk in members.split(rows):
            cache = rows_cache(model, prefix, torch.zeros(len(chunk), dtype=torch.long, device=model.device))
            embeds = context[None, -1:].expand(len(chunk), 1, -1)
            chunk_layers, chunk_states = layers[chunk].to(model.device), states[chunk].to(model.device, model.dtype)
            with patch_block_outputs(model.adapter, chunk_layers, chunk_states):
                yield chunk, next_token_probs(model, cache, len(context) - 1, inputs_embeds=embeds)


@torch.inference_mode()
def first_token_scores(
    lens: Lens, states: torch.Tensor, layers: torch.Tensor, token_ids: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """For cells `states` [C, d] at blocks `layers` [C]: the probability [C, M] and rank [C, M] of each of
    `token_ids` in the lens's first-token distribution."""
    ids = torch.tensor(list(token_ids), dtype=torch.long)
    probs = torch.zeros(len(states), len(ids))
    ranks = torch.zeros(len(states), len(ids), dtype=torch.long)
    if isinstance(lens, LogitLens):
        chunks = zip(torch.arange(len(states)).split(TRACK_CHUNK_ROWS), _logit_distributions(lens, states), strict=True)
    elif isinstance(lens, PatchedContextLens):
        chunks = _patched_distributions(lens, states, layers)
    else:
        raise TrackingUnsupportedError(f"the {lens.method!r} lens cannot track tokens (logit, fixed and future can)")
    for rows, distribution in chunks:
        chosen = distribution.gather(1, ids.to(distribution.device).expand(len(rows), -1))
        probs[rows] = chosen.cpu()
        for m in range(len(ids)):  # one comparison per token: [rows, V], not [rows, M, V]
            ranks[rows, m] = ((distribution > chosen[:, m : m + 1]).sum(dim=-1) + 1).cpu()
    return probs, ranks


def compute_track(lens: Lens, text: str, token_ids: Sequence[int], layers: list[int]) -> Track:
    """Trajectories of `token_ids` over the cells of `text` on `layers` (resolved): one source pass, then the
    first-token distribution of every cell. Public entry point: `Lens.track`."""
    problem = check_token_ids(lens.model, token_ids)
    if problem:
        raise ValueError(problem)
    source = run_source_pass(lens.model, tokenize(lens.model, text))
    n_tokens = len(source.token_ids)
    states = source.hidden[layers].reshape(-1, source.hidden.shape[-1])  # layer-major, like a grid's cells
    probs, ranks = first_token_scores(lens, states, torch.tensor(layers).repeat_interleave(n_tokens), token_ids)
    render = TokenRenderer(lens.model.tokenizer)
    tracked = []
    for m, token_id in enumerate(token_ids):
        token = render(token_id)
        tracked.append(
            TrackedToken(
                id=token_id,
                text=token.text,
                piece=token.piece,
                probs=probs[:, m].reshape(len(layers), n_tokens).tolist(),
                ranks=ranks[:, m].reshape(len(layers), n_tokens).tolist(),
            )
        )
    return Track(method=lens.method, layers=layers, positions=n_tokens, tokens=tracked)
