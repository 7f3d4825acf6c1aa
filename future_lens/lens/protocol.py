"""What grids and tracks need of a lens, apart from the lenses themselves.

lenses.py builds grids (grid.py) and tracks (track.py) in `Lens.grid`/`Lens.stream`/`Lens.track`, so those modules
must not import lenses.py back: they take any `LensLike` (every `Lens` is one), and the names both sides use live
here. `lenses` and `track` re-export `TrackingUnsupportedError` and `Distributions`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import ClassVar, Protocol

import torch

from future_lens.lens.engine import CellPredictions, CellReference, PatchedCells, PrefixStore
from future_lens.lens.models import LoadedModel
from future_lens.lens.staggered import Finished

#: (cell indices, their first-token probabilities [rows, V]) for a chunk of cells.
Distributions = Iterator[tuple[torch.Tensor, torch.Tensor]]


class TrackingUnsupportedError(ValueError):
    """The lens has no first-token distribution to track (a lens that reads no token probabilities)."""


class LensLike(Protocol):
    """The part of `future_lens.lens.lenses.Lens` that grids and tracks use (see there for each member)."""

    method: ClassVar[str]
    measures_first_token: ClassVar[bool]
    reads_next_token: ClassVar[bool]
    model: LoadedModel

    def predict(
        self,
        states: torch.Tensor,
        layers: torch.Tensor,
        n_future: int,
        top_k: int,
        reference: CellReference | None = None,
    ) -> CellPredictions: ...

    def predict_waves(
        self,
        states: torch.Tensor,
        layers: torch.Tensor,
        entering: Sequence[torch.Tensor],
        n_future: int,
        top_k: int,
        reference: CellReference | None = None,
    ) -> Iterator[Finished]: ...

    def staggered(
        self, states: torch.Tensor, layers: torch.Tensor, n_future: int, reference: CellReference | None
    ) -> tuple[PatchedCells, tuple[PrefixStore, list[object]]] | None: ...

    def first_token_distributions(self, states: torch.Tensor, layers: torch.Tensor) -> Distributions: ...

    def describe(self, layers: list[int]) -> dict[str, object]: ...
