"""Permalink store: computed grids kept under a short id derived from everything that determines them.

`GridStore` is the small interface the web app uses; `SQLiteGridStore` is the default (one file, WAL, one writer),
`PostgresGridStore` lets several app processes (replicas) share one database, and `MemoryGridStore` serves tests.

Ids are an HMAC of the canonical request under the deployment's secret (`grid_id`), so identical requests share an
id on one deployment while nobody without the secret can tell whether a given text was submitted. Each store keeps
a generated secret (`GridStore.secret`) for deployments that configure none. Stored grids record when they were
last opened; `RetentionPolicy` says which grids a store deletes (`GridStore.apply_retention`): none by default.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

ID_LENGTH = 12
ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
#: Opening a grid records the time at most this often (one write per grid per minute however popular it is).
TOUCH_EVERY_S = 60.0
#: Name of the generated permalink secret in a store's `future_lens_meta` table.
SECRET_NAME = "permalink_secret"


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
    #: When the grid was stored or last opened (Unix time; None before it is stored). Not part of equality.
    last_accessed: float | None = dataclasses.field(default=None, compare=False)

    @property
    def size_bytes(self) -> int:
        """What the grid costs the store: its request and document in UTF-8 (what the size limit counts)."""
        return sum(len(text.encode("utf-8", "surrogatepass")) for text in (self.request_json, self.document_json))

    def accessed(self) -> float:
        return self.created_at if self.last_accessed is None else self.last_accessed


class StoreEntry(NamedTuple):
    """What retention looks at: a grid's id, when it was last stored or opened, and its size."""

    id: str
    last_accessed: float
    size_bytes: int


@dataclass(frozen=True)
class RetentionPolicy:
    """Which stored grids are deleted. A grid's idle time is the time since it was stored or last opened.

    - `max_age_s`: grids idle longer than this are deleted (None: no age limit).
    - `max_bytes`: while the grids' total size is over this, the longest idle are deleted first, except grids idle
      for at most `keep_recent_s`, which the size limit never deletes (so it is exceeded when all grids are recent).
    Nothing else is ever deleted: with neither limit set (the default) every grid is kept forever."""

    max_age_s: float | None = None
    max_bytes: int | None = None
    keep_recent_s: float = 86_400.0

    @property
    def active(self) -> bool:
        return self.max_age_s is not None or self.max_bytes is not None

    def expired(self, entries: Iterable[StoreEntry], now: float) -> list[StoreEntry]:
        """The entries to delete at time `now`."""
        doomed: list[StoreEntry] = []
        kept_bytes, full = 0, False
        for entry in sorted(entries, key=lambda e: (-e.last_accessed, e.id)):  # most recently used first
            idle = now - entry.last_accessed
            too_old = self.max_age_s is not None and idle > self.max_age_s
            if not too_old and self.max_bytes is not None and idle > self.keep_recent_s:
                full = full or kept_bytes + entry.size_bytes > self.max_bytes
            if too_old or (full and idle > self.keep_recent_s):
                doomed.append(entry)
            else:
                kept_bytes += entry.size_bytes
        return doomed


def canonical_json(payload: object) -> str:
    """Deterministic JSON (sorted keys, no spaces, ASCII only so any Unicode, even lone surrogates, encodes)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def grid_id(canonical_request: dict[str, object], secret: bytes | None = None) -> str:
    """Short id: the first 60 bits of HMAC-SHA256 under `secret` over the canonical request, in lowercase base32
    (12 characters). Without a secret, plain sha256 (how ids were derived before secrets; such ids still open)."""
    message = canonical_json(canonical_request).encode("ascii")
    digest = hashlib.sha256(message).digest() if secret is None else hmac.digest(secret, message, "sha256")
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

    @abstractmethod
    def _touch(self, grid_id: str, at: float) -> None:
        """Set the grid's last access to `at` if it is earlier (never moves it back)."""

    @abstractmethod
    def _entries(self) -> list[StoreEntry]:
        """Every stored grid's id, last access and size."""

    @abstractmethod
    def _remove(self, entries: Sequence[StoreEntry]) -> int:
        """Delete these grids unless opened since `entries` were read (last access changed); how many went."""

    @abstractmethod
    def _keep_first(self, name: str, value: str) -> str:
        """Record `value` under `name` in the store's metadata unless a value is there; return the recorded one."""

    def opened(self, grid: StoredGrid, now: float | None = None) -> None:
        """Record that `grid` was opened (at most once per `TOUCH_EVERY_S`): retention keeps recently used grids."""
        now = time.time() if now is None else now
        if now - grid.accessed() >= TOUCH_EVERY_S:
            self._touch(grid.id, now)

    def apply_retention(self, policy: RetentionPolicy, now: float | None = None) -> int:
        """Delete the grids `policy` says have expired; how many were deleted."""
        if not policy.active:
            return 0
        doomed = policy.expired(self._entries(), time.time() if now is None else now)
        return self._remove(doomed) if doomed else 0

    def secret(self) -> bytes:
        """The permalink secret kept in the store: generated by the first caller and shared by every process that
        opens the same store (replicas of one PostgreSQL database); 32 random bytes."""
        return bytes.fromhex(self._keep_first(SECRET_NAME, secrets.token_hex(32)))

    @contextmanager
    def computing_all(self, grid_ids: Sequence[str]) -> Iterator[None]:
        """Held around computing and storing `grid_ids` so that processes sharing the store compute each once (a
        no-op here: one process's worker already computes an id once; shared stores take cross-process locks)."""
        yield

    @contextmanager
    def computing(self, grid_id: str) -> Iterator[None]:
        """`computing_all` for one id."""
        with self.computing_all([grid_id]):
            yield

    def close(self) -> None:  # noqa: B027 (optional hook: most stores hold nothing to release)
        """Release resources (no-op by default)."""


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


_SCHEMA = """
CREATE TABLE IF NOT EXISTS grids (
    id TEXT PRIMARY KEY,
    model_id TEXT NOT NULL,
    request_json TEXT NOT NULL,
    document_json TEXT NOT NULL,
    created_at REAL NOT NULL
)
"""
#: Statements shared by both SQL backends (SQLite reads DOUBLE PRECISION as REAL and BIGINT as INTEGER).
_ADD_LAST_ACCESSED = "ALTER TABLE grids ADD COLUMN last_accessed DOUBLE PRECISION"
_ADD_SIZE = "ALTER TABLE grids ADD COLUMN size_bytes BIGINT"
_INDEX_LAST_ACCESSED = "CREATE INDEX IF NOT EXISTS grids_last_accessed ON grids (last_accessed)"
_META_TABLE = "CREATE TABLE IF NOT EXISTS future_lens_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)"
#: SQLite's schema steps; `PRAGMA user_version` records how many a file has had (files from before versioning have
#: the grids table and version 0: step 1 is then a no-op). Add a step, never edit one.
_SQLITE_MIGRATIONS = (
    _SCHEMA,
    _ADD_LAST_ACCESSED,
    _ADD_SIZE,
    "UPDATE grids SET last_accessed = created_at, "
    "size_bytes = length(CAST(request_json AS BLOB)) + length(CAST(document_json AS BLOB))",
    _INDEX_LAST_ACCESSED,
    _META_TABLE,
)
_SELECT_GRID = "SELECT id, model_id, request_json, document_json, created_at, last_accessed FROM grids WHERE id = "
_INSERT_GRID = (
    "INSERT INTO grids (id, model_id, request_json, document_json, created_at, last_accessed, size_bytes) VALUES "
)
_ENTRIES = "SELECT id, last_accessed, size_bytes FROM grids"


def _row_of(grid: StoredGrid) -> tuple[object, ...]:
    """The values of `_INSERT_GRID`, in order."""
    return (*dataclasses.astuple(grid)[:5], grid.accessed(), grid.size_bytes)


@contextmanager
def _sqlite_transaction(connection: sqlite3.Connection) -> Iterator[None]:
    """One write transaction on an autocommit connection: committed at the end, rolled back on an error."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def _sqlite_migrate(connection: sqlite3.Connection) -> None:
    """Apply the steps a file has not had yet, in one transaction (another process may be opening it too)."""
    with _sqlite_transaction(connection):
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        for step in _SQLITE_MIGRATIONS[version:]:
            connection.execute(step)
        connection.execute(f"PRAGMA user_version = {max(version, len(_SQLITE_MIGRATIONS))}")


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
            _sqlite_migrate(connection)
        except (sqlite3.Error, OSError) as error:
            raise StoreError(f"cannot open the permalink database {self.path}: {error}") from None
        return connection

    def get(self, grid_id: str) -> StoredGrid | None:
        with self._lock:
            row = self._connection.execute(_SELECT_GRID + "?", (grid_id,)).fetchone()
        return StoredGrid(*row) if row else None

    def put(self, grid: StoredGrid) -> StoredGrid:
        with self._lock:
            self._connection.execute(_INSERT_GRID + "(?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING", _row_of(grid))
        stored = self.get(grid.id)
        if stored is None:
            raise StoreError(f"grid {grid.id} vanished right after it was written to {self.path}")
        return stored

    def count(self) -> int:
        with self._lock:
            return int(self._connection.execute("SELECT COUNT(*) FROM grids").fetchone()[0])

    def _touch(self, grid_id: str, at: float) -> None:
        with self._lock:
            self._connection.execute(
                "UPDATE grids SET last_accessed = ? WHERE id = ? AND last_accessed < ?", (at, grid_id, at)
            )

    def _entries(self) -> list[StoreEntry]:
        with self._lock:
            return [StoreEntry(*row) for row in self._connection.execute(_ENTRIES).fetchall()]

    def _remove(self, entries: Sequence[StoreEntry]) -> int:
        with self._lock:
            before = self._connection.total_changes
            with _sqlite_transaction(self._connection):
                self._connection.executemany(
                    "DELETE FROM grids WHERE id = ? AND last_accessed = ?", [(e.id, e.last_accessed) for e in entries]
                )
            return self._connection.total_changes - before

    def _keep_first(self, name: str, value: str) -> str:
        with self._lock:
            self._connection.execute(
                "INSERT OR IGNORE INTO future_lens_meta (name, value) VALUES (?, ?)", (name, value)
            )
            return self._connection.execute("SELECT value FROM future_lens_meta WHERE name = ?", (name,)).fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._connection.close()


#: The PostgreSQL schema's version: `future_lens_schema.version` records the version a database is at, and on start
#: `PostgresGridStore` applies the steps `_PG_MIGRATIONS[version:]` in one transaction (so version n is reached by
#: the first n steps). Add a step, never edit one, to change the schema.
PG_SCHEMA_VERSION = 6
_PG_MIGRATIONS = (
    # 1: the grids table, the same columns as SQLite's (`created_at`: Unix time in seconds).
    """CREATE TABLE IF NOT EXISTS grids (
        id TEXT PRIMARY KEY,
        model_id TEXT NOT NULL,
        request_json TEXT NOT NULL,
        document_json TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    )""",
    # 2-5: for retention, when each grid was stored or last opened, and its size (grids stored before: now).
    _ADD_LAST_ACCESSED,
    _ADD_SIZE,
    "UPDATE grids SET last_accessed = created_at, "
    "size_bytes = octet_length(request_json) + octet_length(document_json)",
    _INDEX_LAST_ACCESSED,
    # 6: metadata shared by the replicas: the generated permalink secret.
    _META_TABLE,
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
            row = connection.execute(_SELECT_GRID + "%s", (grid_id,)).fetchone()
        return StoredGrid(*row) if row else None

    def put(self, grid: StoredGrid) -> StoredGrid:
        with self._connection() as connection:
            connection.execute(_INSERT_GRID + "(%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING", _row_of(grid))
        stored = self.get(grid.id)
        if stored is None:
            raise StoreError(f"grid {grid.id} vanished right after it was written to {self.where}")
        return stored

    def count(self) -> int:
        with self._connection() as connection:
            return int(connection.execute("SELECT COUNT(*) FROM grids").fetchone()[0])

    def _touch(self, grid_id: str, at: float) -> None:
        with self._connection() as connection:
            connection.execute(
                "UPDATE grids SET last_accessed = %s WHERE id = %s AND last_accessed < %s", (at, grid_id, at)
            )

    def _entries(self) -> list[StoreEntry]:
        with self._connection() as connection:
            return [StoreEntry(*row) for row in connection.execute(_ENTRIES).fetchall()]

    def _remove(self, entries: Sequence[StoreEntry]) -> int:
        with self._connection() as connection:
            cursor = connection.execute(
                "DELETE FROM grids USING unnest(%s::text[], %s::double precision[]) AS doomed (id, last_accessed) "
                "WHERE grids.id = doomed.id AND grids.last_accessed = doomed.last_accessed",
                ([e.id for e in entries], [e.last_accessed for e in entries]),
            )
            return cursor.rowcount

    def _keep_first(self, name: str, value: str) -> str:
        with self._connection() as connection:
            connection.execute(
                "INSERT INTO future_lens_meta (name, value) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
                (name, value),
            )
            return connection.execute("SELECT value FROM future_lens_meta WHERE name = %s", (name,)).fetchone()[0]

    @contextmanager
    def computing_all(self, grid_ids: Sequence[str]) -> Iterator[None]:
        """Hold the cluster-wide advisory locks of `grid_ids` (waiting for them) on a connection of its own, taken
        in ascending key order so that replicas locking overlapping sets never deadlock."""
        keys = sorted({advisory_key(grid_id) for grid_id in grid_ids})
        with self._connection() as connection, ExitStack() as held:
            for key in keys:
                connection.execute("SELECT pg_advisory_lock(%s)", (key,))
                held.callback(_unlock, connection, key)
            yield

    def close(self) -> None:
        """Close the pool: its connections (sessions) end and later calls raise `StoreError`."""
        self.pool.close()


def _unlock(connection: psycopg.Connection, key: int) -> None:
    """Release one advisory lock; if that fails, close the session, which releases all of its locks (the pool drops
    closed connections)."""
    if connection.closed:
        return
    try:
        connection.execute("SELECT pg_advisory_unlock(%s)", (key,))
    except psycopg.Error:
        connection.close()


def new_stored_grid(grid_id: str, model_id: str, request: dict[str, object], document_json: str) -> StoredGrid:
    """A record stamped with the current time (stored and last accessed now)."""
    now = time.time()
    return StoredGrid(grid_id, model_id, canonical_json(request), document_json, now, now)
