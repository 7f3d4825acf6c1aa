"""`MemoryGridStore`: grids in a dict, for tests and throwaway servers (nothing survives the process)."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence

from future_lens.server.store.base import GridStore, StoredGrid, StoreEntry


class MemoryGridStore(GridStore):
    """A dict in memory: for tests and throwaway servers."""

    def __init__(self) -> None:
        self._grids: dict[str, StoredGrid] = {}
        self._meta: dict[str, str] = {}
        self._lock = threading.Lock()

    def get(self, grid_id: str) -> StoredGrid | None:
        return self._grids.get(grid_id)

    def put(self, grid: StoredGrid) -> StoredGrid:
        with self._lock:
            return self._grids.setdefault(grid.id, dataclasses.replace(grid, last_accessed=grid.accessed()))

    def count(self) -> int:
        return len(self._grids)

    def _touch(self, grid_id: str, at: float) -> None:
        with self._lock:
            grid = self._grids.get(grid_id)
            if grid is not None and grid.accessed() < at:
                self._grids[grid_id] = dataclasses.replace(grid, last_accessed=at)

    def _entries(self) -> list[StoreEntry]:
        with self._lock:
            return [StoreEntry(g.id, g.accessed(), g.size_bytes) for g in self._grids.values()]

    def _remove(self, entries: Sequence[StoreEntry]) -> int:
        with self._lock:
            gone = [e.id for e in entries if e.id in self._grids and self._grids[e.id].accessed() == e.last_accessed]
            for id_ in gone:
                del self._grids[id_]
            return len(gone)

    def _keep_first(self, name: str, value: str) -> str:
        with self._lock:
            return self._meta.setdefault(name, value)
