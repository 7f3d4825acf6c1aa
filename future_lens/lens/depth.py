"""Prediction depth: from which layer on a lens already reads the model's own next token, and keeps reading it.

For one token column t of a grid (tuned-lens issue #72): the prediction depth is the first of the grid's layers from
which the lens's top-1 first token equals the model's own output top-1 at t (its greedy next token, `next_tokens[t]`)
at that layer and at every later layer of the grid. When the top-1 at the grid's last layer is not the model's
token, the depth is undefined (None): the lens never settles on it within the grid.

It is computed over the layers the grid has, not the model's: a grid of every third layer (`::3`) gives one of
those layers, and a flip at a layer the grid does not show goes unseen; a grid that stops before the model's last
block may settle on a token the model would still change. This module is the one definition (pure, no torch): the
grid's JSON (`Grid.prediction_depth`), the CSV export and the page all read what it gives.

Only lenses whose cells' first token is the reading at offset 0 (N = 0: a prediction of the token right after t)
have a depth: see `Lens.reads_next_token`.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise


def prediction_depth(top1_by_layer: Sequence[int | None], layers: Sequence[int], model_top1: int) -> int | None:
    """The first layer of `layers` from which `top1_by_layer` (the lens's top-1 token id at each of `layers`, in
    the same order; None where a cell has no token) is `model_top1` at every later layer too; None when the last
    layer's top-1 is not `model_top1` (or there are no layers).

    `layers` must increase strictly (a grid's rows do). Examples: top-1s `[5, 7, 7]` at layers `[0, 1, 2]` against
    7 give 1; `[7, 5, 7]` give 2 (the flip at layer 1 resets it); `[7, 7, 5]` give None."""
    if len(top1_by_layer) != len(layers):
        raise ValueError(f"{len(top1_by_layer)} top-1 tokens for {len(layers)} layers")
    if any(later <= earlier for earlier, later in pairwise(layers)):
        raise ValueError(f"layers must increase strictly, not {list(layers)}")
    depth = None
    for layer, top1 in zip(reversed(layers), reversed(top1_by_layer), strict=True):
        if top1 != model_top1:
            break
        depth = layer
    return depth


def prediction_depths(
    top1: Sequence[Sequence[int | None]], layers: Sequence[int], model_top1: Sequence[int]
) -> list[int | None]:
    """`prediction_depth` of every column of a grid: `top1[i][t]` is the lens's top-1 at `layers[i]` and column t,
    `model_top1[t]` the model's own next token at t."""
    for row in top1:
        if len(row) != len(model_top1):
            raise ValueError(f"a row has {len(row)} columns, the model's next tokens {len(model_top1)}")
    return [
        prediction_depth([row[column] for row in top1], layers, model_top1[column]) for column in range(len(model_top1))
    ]


def depth_definition(layers: Sequence[int], n_layers: int) -> str:
    """What a depth row shows, in words for its tooltip and legend (the page's and the offline file's): the
    definition and the layers it was computed over (`layers`, the grid's, which may be a subset of the model's
    `n_layers`)."""
    if len(layers) >= n_layers:
        over = f"computed over all {n_layers} layers"
    else:
        listed = ", ".join(str(layer) for layer in layers[:6]) + (", …" if len(layers) > 6 else "")
        over = (
            f"computed over the {len(layers)} of {n_layers} layers this grid has ({listed}): a change at a layer "
            "it does not have goes unseen"
        )
    return (
        "the first layer from which the lens's top token is the model's own next token (the model row) at every "
        f"later layer; – when the grid's last layer reads another token; {over}"
    )
