"""Token trajectories: how likely a lens finds chosen tokens, at every layer and position of a text.

For each tracked token id and each (layer, position) cell, the probability the lens gives that token as the *first*
predicted token (the distribution a grid's `topk` is cut from), and its rank in that distribution (1 = the most
likely; ties share the better rank), read by the lens's own `first_token_distributions`: final norm + unembedding
of the state (logit lens; of its translation for the tuned and Jacobian lenses), or the one patched forward of the
cell's target context (future, fixed, identity). Pure computation,
no web code; the public entry point is `Lens.track(text, token_ids, layers=...)`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import BaseModel, Field

from future_lens.lens.grid import TokenText
from future_lens.lens.layers import quoted, shown
from future_lens.lens.models import LoadedModel
from future_lens.lens.protocol import LensLike, TrackingUnsupportedError  # noqa: F401 (re-exported)
from future_lens.lens.source import run_source_pass, tokenize
from future_lens.lens.tokens import TokenRenderer


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
            named = shown(token_id) if isinstance(token_id, int) else quoted(str(token_id)[:80])  # never huge
            return f"token id {named} is not in the vocabulary (0 to {vocab - 1})"
    if len(set(token_ids)) != len(token_ids):
        return "token ids repeat"
    return None


@torch.inference_mode()
def first_token_scores(
    lens: LensLike, states: torch.Tensor, layers: torch.Tensor, token_ids: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """For cells `states` [C, d] at blocks `layers` [C]: the probability [C, M] and rank [C, M] of each of
    `token_ids` in the lens's first-token distribution."""
    ids = torch.tensor(list(token_ids), dtype=torch.long)
    probs = torch.zeros(len(states), len(ids))
    ranks = torch.zeros(len(states), len(ids), dtype=torch.long)
    for rows, distribution in lens.first_token_distributions(states, layers):
        chosen = distribution.gather(1, ids.to(distribution.device).expand(len(rows), -1))
        probs[rows] = chosen.cpu()
        for m in range(len(ids)):  # one comparison per token: [rows, V], not [rows, M, V]
            ranks[rows, m] = ((distribution > chosen[:, m : m + 1]).sum(dim=-1) + 1).cpu()
    return probs, ranks


def compute_track(lens: LensLike, text: str, token_ids: Sequence[int], layers: list[int]) -> Track:
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
