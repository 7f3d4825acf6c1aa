"""Permalink store: computed grids kept under a short id derived from everything that determines them.

`GridStore` is the small interface the web app uses; `SQLiteGridStore` is the default (one file, WAL, one writer)
and `MemoryGridStore` serves tests. A server database can replace them by implementing the same three methods.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

ID_LENGTH = 12
ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"


class StoreError(RuntimeError):
    """The store cannot be opened or used (unreadable or corrupt file, wrong schema)."""


@dataclass(frozen=True)
class StoredGrid:
    """One stored grid: the canonical request (JSON) and the response document (JSON) exactly as served."""

    id: str
    model_id: str
    request_json: str
    document_json: str
    created_at: float


def canonical_json(payload: object) -> str:
    """Deterministic JSON (sorted keys, no spaces, ASCII only so any Unicode, even lone surrogates, encodes)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def grid_id(canonical_request: dict[str, object]) -> str:
    """Short id: the first 60 bits of sha256 over the canonical request, in lowercase base32 (12 characters)."""
    digest = hashlib.sha256(canonical_json(canonical_request).encode("ascii")).digest()
    return base64.b32encode(digest).decode("ascii").lower()[:ID_LENGTH]


def is_grid_id(text: str) -> bool:
    """True when `text` has the shape of an id (so lookups never see arbitrary strings)."""
    return len(text) == ID_LENGTH and all(char in ID_ALPHABET for char in text)


class GridStore(ABC):
    """Where permalinks live. `put` is idempotent: the first grid stored under an id is the one kept."""

    @abstractmethod
    def get(self, grid_id: str) -> StoredGrid | None:
        """The grid stored under `grid_id`, or None."""

    @abstractmethod
    def put(self, grid: StoredGrid) -> StoredGrid:
        """Store `grid` unless its id is taken; return what is stored under the id afterwards."""

    @abstractmethod
    def count(self) -> int:
        """How many grids are stored."""

    def close(self) -> None:  # noqa: B027 (optional hook: most stores hold nothing to release)
        """Release resources (no-op by default)."""


class MemoryGridStore(GridStore):
    """A dict in memory: for tests and throwaway servers."""

    def __init__(self) -> None:
        self._grids: dict[str, StoredGrid] = {}
        self._lock = threading.Lock()

    def get(self, grid_id: str) -> StoredGrid | None:
        return self._grids.get(grid_id)

    def put(self, grid: StoredGrid) -> StoredGrid:
        with self._lock:
            return self._grids.setdefault(grid.id, grid)

    def count(self) -> int:
        return len(self._grids)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS grids (
    id TEXT PRIMARY KEY,
    model_id TEXT NOT NULL,
    request_json TEXT NOT NULL,
    document_json TEXT NOT NULL,
    created_at REAL NOT NULL
)
"""


class SQLiteGridStore(GridStore):
    """One SQLite file in WAL mode; writes are serialised and committed with `synchronous=FULL` before returning."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._connection = self._open()

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))  # owner-only from the start
            connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("PRAGMA busy_timeout=5000")
            check = connection.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {check}")
            connection.execute(_SCHEMA)
        except (sqlite3.Error, OSError) as error:
            raise StoreError(f"cannot open the permalink database {self.path}: {error}") from None
        return connection

    def get(self, grid_id: str) -> StoredGrid | None:
        with self._lock:
            row = self._connection.execute(
                "SELECT id, model_id, request_json, document_json, created_at FROM grids WHERE id = ?", (grid_id,)
            ).fetchone()
        return StoredGrid(*row) if row else None

    def put(self, grid: StoredGrid) -> StoredGrid:
        with self._lock:
            self._connection.execute(
                "INSERT OR IGNORE INTO grids (id, model_id, request_json, document_json, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (grid.id, grid.model_id, grid.request_json, grid.document_json, grid.created_at),
            )
        stored = self.get(grid.id)
        if stored is None:
            raise StoreError(f"grid {grid.id} vanished right after it was written to {self.path}")
        return stored

    def count(self) -> int:
        with self._lock:
            return int(self._connection.execute("SELECT COUNT(*) FROM grids").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._connection.close()


def new_stored_grid(grid_id: str, model_id: str, request: dict[str, object], document_json: str) -> StoredGrid:
    """A record stamped with the current time."""
    return StoredGrid(grid_id, model_id, canonical_json(request), document_json, time.time())
