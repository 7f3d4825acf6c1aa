"""The SQL the SQLite and PostgreSQL backends share: schema steps both apply, and reading and writing grids."""

from __future__ import annotations

import dataclasses

from future_lens.server.store.base import StoredGrid

#: Statements shared by both SQL backends (SQLite reads DOUBLE PRECISION as REAL and BIGINT as INTEGER).
ADD_LAST_ACCESSED = "ALTER TABLE grids ADD COLUMN last_accessed DOUBLE PRECISION"
ADD_SIZE = "ALTER TABLE grids ADD COLUMN size_bytes BIGINT"
INDEX_LAST_ACCESSED = "CREATE INDEX IF NOT EXISTS grids_last_accessed ON grids (last_accessed)"
META_TABLE = "CREATE TABLE IF NOT EXISTS future_lens_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)"
SELECT_GRID = "SELECT id, model_id, request_json, document_json, created_at, last_accessed FROM grids WHERE id = "
INSERT_GRID = (
    "INSERT INTO grids (id, model_id, request_json, document_json, created_at, last_accessed, size_bytes) VALUES "
)
ENTRIES = "SELECT id, last_accessed, size_bytes FROM grids"


def insert_grid(mark: str) -> str:
    """`INSERT_GRID` for one grid, its values written `mark` (the backend's placeholder); an id's first grid stays."""
    return INSERT_GRID + "(" + ", ".join([mark] * 7) + ") ON CONFLICT (id) DO NOTHING"


def row_of(grid: StoredGrid) -> tuple[object, ...]:
    """The values of `INSERT_GRID`, in order."""
    return (*dataclasses.astuple(grid)[:5], grid.accessed(), grid.size_bytes)
