"""Grid keeping: validate a request, look it up in the permalink store, compute it only when it is new.

The permalink id hashes everything that determines a grid: the canonical request (resolved layers, effective N,
the fixed prompt), the model's id, weights fingerprint and dtype, and the hashes of the soft prompts used. So an
identical request is served from the store, and a retrained prompt gives a new id instead of changing old links.

All model work goes through `GridKeeper._compute`, serialised by one lock: a later bounded inference queue can
replace that method without touching the routes.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass

import torch

from app.lens.grid import SCHEMA, Grid
from app.lens.lenses import FixedPromptLens, FutureLens, Lens
from app.service import GridRequest, LensService
from app.store import GridStore, StoredGrid, grid_id, new_stored_grid


@dataclass(frozen=True)
class KeptGrid:
    """A grid as served: its id, the exact JSON document, and whether it came from the store."""

    id: str
    document_json: str
    request: dict[str, object]
    cached: bool

    @property
    def grid(self) -> Grid:
        """The document parsed back into the typed grid (extra keys `id`, `permalink` are ignored)."""
        return Grid.model_validate_json(self.document_json)

    @classmethod
    def from_stored(cls, stored: StoredGrid, cached: bool) -> KeptGrid:
        return cls(stored.id, stored.document_json, json.loads(stored.request_json), cached)


def permalink_path(grid_id: str) -> str:
    """The page of a stored grid (relative, so stored documents do not depend on the host name)."""
    return f"/g/{grid_id}"


def tensor_hash(tensor: torch.Tensor) -> str:
    """sha256 (16 hex digits) over a tensor's shape, dtype and bytes."""
    data = tensor.detach().to("cpu").contiguous()
    digest = hashlib.sha256(f"{tuple(data.shape)}|{data.dtype}".encode())
    digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()[:16]


class GridKeeper:
    """Serves grids for one `LensService`, storing each new grid in `store` under its permalink id."""

    def __init__(self, service: LensService, store: GridStore):
        self.service = service
        self.store = store
        self._compute_lock = threading.Lock()  # one forward on the model at a time
        self._prompt_hashes: dict[int, str] = {}

    def _prompt_hash(self, lens: FutureLens, layer: int) -> str:
        """Hash of the trained prompt tensor of `layer` (cached per tensor object)."""
        tensor = lens.prompts.prompts[layer]
        key = id(tensor)
        if key not in self._prompt_hashes:
            self._prompt_hashes[key] = tensor_hash(tensor)
        return self._prompt_hashes[key]

    def canonical_request(self, request: GridRequest, lens: Lens, layers: list[int]) -> dict[str, object]:
        """Everything that determines the grid, normalised (resolved layers, effective N, the prompt used)."""
        model = self.service.model
        canonical: dict[str, object] = {
            "schema": SCHEMA,
            "model": {"id": model.id, "fingerprint": model.fingerprint, "dtype": model.dtype_name},
            "method": lens.method,
            "text": request.text,
            "layers": layers,
            "n_future": lens.effective_future(request.n_future),
            "top_k": request.top_k,
        }
        if isinstance(lens, FixedPromptLens):
            canonical["prompt"] = lens.prompt
        if isinstance(lens, FutureLens):
            used = sorted({lens.prompts.source_layer(layer) for layer in layers})
            canonical["prompt_hashes"] = {str(layer): self._prompt_hash(lens, layer) for layer in used}
        return canonical

    def _compute(self, request: GridRequest) -> Grid:
        """Run the model (the caller holds the compute lock: the service leaves serialising to its caller)."""
        return self.service.compute(request)

    def get_or_compute(self, request: GridRequest) -> KeptGrid:
        """The stored grid for `request` if there is one, else compute, store and return it.

        Raises `InvalidRequestError` before anything is computed or stored when the request is invalid.
        Identical concurrent requests compute once: the later ones find the grid stored once they get the lock.
        """
        lens, layers = self.service.validate(request)
        canonical = self.canonical_request(request, lens, layers)
        key = grid_id(canonical)
        stored = self.store.get(key)
        if stored is not None:
            return KeptGrid.from_stored(stored, cached=True)
        with self._compute_lock:
            stored = self.store.get(key)
            if stored is not None:
                return KeptGrid.from_stored(stored, cached=True)
            grid = self._compute(request)
            document = {**grid.model_dump(mode="json", by_alias=True), "id": key, "permalink": permalink_path(key)}
            document_json = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
            stored = self.store.put(new_stored_grid(key, self.service.model.id, canonical, document_json))
        return KeptGrid.from_stored(stored, cached=False)

    def lookup(self, grid_id: str) -> KeptGrid | None:
        """A stored grid by id (no computation)."""
        stored = self.store.get(grid_id)
        return KeptGrid.from_stored(stored, cached=True) if stored else None
