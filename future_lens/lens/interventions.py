"""Block-output hooks, kept apart from model loading: the one way the engine and training read or overwrite the
output of decoder blocks outside nnsight (nnsight serves the source pass and the independent reference).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

from future_lens.lens.architectures import ModelAdapter, block_output_tensor

BlockHook = Callable[[int, torch.Tensor], None]


@contextmanager
def on_block_outputs(adapter: ModelAdapter, layers: Sequence[int], hook: BlockHook) -> Iterator[None]:
    """While active, `hook(layer, hidden)` sees block `layer`'s output tensor [B, T, d] after every forward.

    The hook may read it or write into it in place (what later blocks receive)."""
    handles = [
        adapter.blocks[layer].register_forward_hook(
            lambda _module, _inputs, output, layer=layer: hook(layer, block_output_tensor(output))
        )
        for layer in layers
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def patch_block_outputs(
    adapter: ModelAdapter, layers: torch.Tensor, states: torch.Tensor, position: int = -1, first_row: int = 0
) -> Iterator[None]:
    """While active, row `first_row + r` of every forward gets `states[r]` as block `layers[r]`'s output at
    `position` (rows outside `first_row .. first_row + len(states)` are left alone).

    Each hooked block touches only its own rows, so a single batch can mix cells of all layers.
    """
    rows_of = {
        layer: torch.nonzero(layers == layer).squeeze(1).to(states.device) for layer in torch.unique(layers).tolist()
    }

    def overwrite(layer: int, hidden: torch.Tensor) -> None:
        rows = rows_of[layer]
        hidden[rows + first_row, position] = states[rows].to(hidden.dtype)

    with on_block_outputs(adapter, list(rows_of), overwrite):
        yield


@contextmanager
def capture_block_outputs(adapter: ModelAdapter) -> Iterator[list[torch.Tensor]]:
    """While active, each forward appends every block's output at the last position ([B, d], detached) in order."""
    captured: list[torch.Tensor] = []
    with on_block_outputs(
        adapter, range(adapter.n_layers), lambda _layer, hidden: captured.append(hidden[:, -1].detach())
    ):
        yield captured


def distinct(values: Sequence[int]) -> list[int]:
    """Distinct values in first-seen order."""
    return list(dict.fromkeys(values))
