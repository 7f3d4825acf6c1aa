"""`PostgresGridStore`: grids in PostgreSQL, shared by every app process (replica) given the same database URL.

psycopg and psycopg-pool are the optional extra `future-lens[postgres]`. This module imports without them (the store
package loads it only when one of its names is asked for) and constructing a store then raises `StoreError` saying
what to install.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

from future_lens.server.store import sql
from future_lens.server.store.base import GridStore, StoredGrid, StoreEntry, StoreError

try:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict
    from psycopg_pool import ConnectionPool
except ImportError as error:  # the extra is not installed: stores cannot be opened (`_require_psycopg`)
    _MISSING: ImportError | None = error
else:
    _MISSING = None


def _require_psycopg() -> None:
    """Raise `StoreError` when psycopg or psycopg-pool is not installed."""
    if _MISSING is not None:
        raise StoreError(
            f"PostgreSQL permalinks need psycopg and psycopg-pool ({_MISSING}): install future-lens[postgres]"
        )


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
    sql.ADD_LAST_ACCESSED,
    sql.ADD_SIZE,
    "UPDATE grids SET last_accessed = created_at, "
    "size_bytes = octet_length(request_json) + octet_length(document_json)",
    sql.INDEX_LAST_ACCESSED,
    # 6: metadata shared by the replicas: the generated permalink secret.
    sql.META_TABLE,
)
_PG_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS future_lens_schema (
    singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    version INTEGER NOT NULL
)"""
#: Two-key advisory lock serialising schema migrations (the one-key space, used per grid id, does not overlap).
_PG_MIGRATION_LOCK = (int.from_bytes(b"FLen", "big"), 0)


def describe_db_url(url: str) -> str:
    """`host:port/dbname` of a PostgreSQL URL, for messages (never the password)."""
    _require_psycopg()
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
        _require_psycopg()
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
            row = connection.execute(sql.SELECT_GRID + "%s", (grid_id,)).fetchone()
        return StoredGrid(*row) if row else None

    def put(self, grid: StoredGrid) -> StoredGrid:
        with self._connection() as connection:
            connection.execute(sql.insert_grid("%s"), sql.row_of(grid))
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
            return [StoreEntry(*row) for row in connection.execute(sql.ENTRIES).fetchall()]

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
