"""Permalink store: computed grids kept under a short id derived from everything that determines them.

`GridStore` is the small interface the web app uses; `SQLiteGridStore` is the default (one file, WAL, one writer),
`PostgresGridStore` lets several app processes (replicas) share one database, and `MemoryGridStore` serves tests.
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

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

    @contextmanager
    def computing(self, grid_id: str) -> Iterator[None]:
        """Held around computing and storing `grid_id` so that processes sharing the store compute it once (a no-op
        here: one process's worker already computes an id once; shared stores take a cross-process lock)."""
        yield

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


#: The PostgreSQL schema's version: `future_lens_schema.version` records the version a database is at, and on start
#: `PostgresGridStore` applies the steps `_PG_MIGRATIONS[version:]` in one transaction (so version n is reached by
#: the first n steps). Add a step, never edit one, to change the schema.
PG_SCHEMA_VERSION = 1
_PG_MIGRATIONS = (
    # 1: the grids table, the same columns as SQLite's (`created_at`: Unix time in seconds).
    """CREATE TABLE IF NOT EXISTS grids (
        id TEXT PRIMARY KEY,
        model_id TEXT NOT NULL,
        request_json TEXT NOT NULL,
        document_json TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    )""",
)
_PG_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS future_lens_schema (
    singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    version INTEGER NOT NULL
)"""
#: Two-key advisory lock serialising schema migrations (the one-key space, used per grid id, does not overlap).
_PG_MIGRATION_LOCK = (int.from_bytes(b"FLen", "big"), 0)


def describe_db_url(url: str) -> str:
    """`host:port/dbname` of a PostgreSQL URL, for messages (never the password)."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "(an unparsable PostgreSQL URL)"
    return f"{parts.get('host', 'localhost')}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"


def advisory_key(grid_id: str) -> int:
    """A signed 64-bit advisory-lock key for `grid_id` (the first 8 bytes of its sha256)."""
    return int.from_bytes(hashlib.sha256(grid_id.encode()).digest()[:8], "big", signed=True)


def _migrate(connection: psycopg.Connection) -> int:
    """Bring the schema to `PG_SCHEMA_VERSION` (idempotent, safe when replicas start together); return it."""
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s, %s)", _PG_MIGRATION_LOCK)
        connection.execute(_PG_VERSION_TABLE)
        row = connection.execute("SELECT version FROM future_lens_schema").fetchone()
        version = row[0] if row else 0
        if version > PG_SCHEMA_VERSION:
            raise StoreError(f"the database's schema is version {version}; this app knows up to {PG_SCHEMA_VERSION}")
        for step in _PG_MIGRATIONS[version:]:
            connection.execute(step)
        connection.execute(
            "INSERT INTO future_lens_schema (version) VALUES (%s) "
            "ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version",
            (PG_SCHEMA_VERSION,),
        )
    return PG_SCHEMA_VERSION


def _configure(connection: psycopg.Connection) -> None:
    """Each pooled connection: autocommit, and a commit returns only once its WAL record is flushed to disk."""
    connection.autocommit = True
    connection.execute("SET synchronous_commit = on")


class PostgresGridStore(GridStore):
    """Grids in PostgreSQL, shared by every replica given the same URL, through a small pool for all threads; each
    statement commits on its own with `synchronous_commit = on`, so `put` returns once its grid is durable."""

    def __init__(self, url: str, pool_size: int = 8, connect_timeout_s: float = 10.0):
        self.where = describe_db_url(url)
        try:
            with psycopg.connect(url, connect_timeout=max(1, round(connect_timeout_s))) as connection:
                _migrate(connection)
        except psycopg.Error as error:
            raise StoreError(f"cannot open the permalink database {self.where}: {error}".strip()) from None
        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            configure=_configure,
            check=ConnectionPool.check_connection,  # a connection broken meanwhile is replaced, not handed out
            timeout=connect_timeout_s,
            name="future-lens-grids",
            open=False,
        )
        try:
            self.pool.open(wait=True, timeout=connect_timeout_s)
        except psycopg.Error as error:
            self.pool.close()  # stops its background reconnection attempts
            raise StoreError(f"cannot open the permalink database {self.where}: {error}".strip()) from None

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection; database failures surface as `StoreError`."""
        try:
            with self.pool.connection() as connection:
                yield connection
        except psycopg.Error as error:
            raise StoreError(f"the permalink database {self.where} failed: {error}".strip()) from None

    def get(self, grid_id: str) -> StoredGrid | None:
        with self._connection() as connection:
            row = connection.execute(
                "SELECT id, model_id, request_json, document_json, created_at FROM grids WHERE id = %s", (grid_id,)
            ).fetchone()
        return StoredGrid(*row) if row else None

    def put(self, grid: StoredGrid) -> StoredGrid:
        with self._connection() as connection:
            connection.execute(
                "INSERT INTO grids (id, model_id, request_json, document_json, created_at) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                (grid.id, grid.model_id, grid.request_json, grid.document_json, grid.created_at),
            )
        stored = self.get(grid.id)
        if stored is None:
            raise StoreError(f"grid {grid.id} vanished right after it was written to {self.where}")
        return stored

    def count(self) -> int:
        with self._connection() as connection:
            return int(connection.execute("SELECT COUNT(*) FROM grids").fetchone()[0])

    @contextmanager
    def computing(self, grid_id: str) -> Iterator[None]:
        """Hold the cluster-wide advisory lock of `grid_id` (waiting for it) on a connection of its own."""
        key = advisory_key(grid_id)
        with self._connection() as connection:
            connection.execute("SELECT pg_advisory_lock(%s)", (key,))
            try:
                yield
            finally:
                try:
                    connection.execute("SELECT pg_advisory_unlock(%s)", (key,))
                except psycopg.Error:
                    connection.close()  # ending the session releases its locks; the pool drops closed connections

    def close(self) -> None:
        self.pool.close()


def new_stored_grid(grid_id: str, model_id: str, request: dict[str, object], document_json: str) -> StoredGrid:
    """A record stamped with the current time."""
    return StoredGrid(grid_id, model_id, canonical_json(request), document_json, time.time())
