"""Interventions kept apart from model loading: overwrite block outputs of chosen rows with given states."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from app.lens.architectures import ModelAdapter, block_output_tensor


@contextmanager
def patch_block_outputs(
    adapter: ModelAdapter, layers: torch.Tensor, states: torch.Tensor, position: int = -1
) -> Iterator[None]:
    """While active, row r of every forward gets `states[r]` as block `layers[r]`'s output at `position`.

    One hook per distinct layer, each touching only its own rows, so a single batch can mix cells of all layers.
    """
    handles = []
    for layer in torch.unique(layers).tolist():
        rows = torch.nonzero(layers == layer).squeeze(1).to(states.device)

        def overwrite(_module, _inputs, output, rows: torch.Tensor = rows) -> None:
            hidden = block_output_tensor(output)
            hidden[rows, position] = states[rows].to(hidden.dtype)

        handles.append(adapter.blocks[layer].register_forward_hook(overwrite))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def distinct(values: Sequence[int]) -> list[int]:
    """Distinct values in first-seen order."""
    return list(dict.fromkeys(values))
