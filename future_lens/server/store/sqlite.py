"""`SQLiteGridStore`, the default permalink store: one SQLite file in WAL mode, for one app process.

The file (and its folder) is created, checked and migrated when the store is constructed; `check_writable` finds out
beforehand, leaving nothing behind, whether a store could be opened there.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from future_lens.server.store import sql
from future_lens.server.store.base import GridStore, StoredGrid, StoreEntry, StoreError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS grids (
    id TEXT PRIMARY KEY,
    model_id TEXT NOT NULL,
    request_json TEXT NOT NULL,
    document_json TEXT NOT NULL,
    created_at REAL NOT NULL
)
"""
#: SQLite's schema steps; `PRAGMA user_version` records how many a file has had (files from before versioning have
#: the grids table and version 0: step 1 is then a no-op). Add a step, never edit one.
_SQLITE_MIGRATIONS = (
    _SCHEMA,
    sql.ADD_LAST_ACCESSED,
    sql.ADD_SIZE,
    "UPDATE grids SET last_accessed = created_at, "
    "size_bytes = length(CAST(request_json AS BLOB)) + length(CAST(document_json AS BLOB))",
    sql.INDEX_LAST_ACCESSED,
    sql.META_TABLE,
)


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

    @staticmethod
    def check_writable(path: Path) -> None:
        """Raise `StoreError`, in one line naming `path`, unless a store could create (or open) and write the SQLite
        file `path`: its missing folders can be made, the file written, and the folder written too (WAL mode keeps
        `-wal` and `-shm` files beside the database). Leaves things as it found them, whether the check passes or
        not: what it creates to find out (folders, the file, a probe file) is removed again."""
        path = Path(path)
        made: list[Path] = []  # folders created here, outermost first
        probe: Path | None = None  # a file created here
        step = f"cannot create the folder {path.parent}"
        try:
            missing, folder = [], path.parent
            while not folder.exists() and folder != folder.parent:
                missing.append(folder)
                folder = folder.parent
            for folder in reversed(missing):
                step = f"cannot create the folder {folder}"
                try:
                    folder.mkdir()
                except FileExistsError:
                    if not folder.is_dir():
                        raise
                    continue  # made meanwhile by someone else: theirs to keep
                made.append(folder)
            step = "cannot create the file"
            try:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
                probe = path
            except FileExistsError:  # a store's file already: it and its folder must be writable
                step = "cannot write the file"
                os.close(os.open(path, os.O_WRONLY))  # opened for writing, not changed
                step = f"cannot create files in its folder {path.parent}"
                descriptor, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".check", dir=path.parent)
                os.close(descriptor)
                probe = Path(name)
        except OSError as error:
            reason = error.strerror or str(error)
            raise StoreError(f"the permalink database {path} is not writable: {step}: {reason}") from None
        finally:
            if probe is not None:
                probe.unlink(missing_ok=True)
            for folder in reversed(made):
                with suppress(OSError):  # something was put in it meanwhile
                    folder.rmdir()

    def get(self, grid_id: str) -> StoredGrid | None:
        with self._lock:
            row = self._connection.execute(sql.SELECT_GRID + "?", (grid_id,)).fetchone()
        return StoredGrid(*row) if row else None

    def put(self, grid: StoredGrid) -> StoredGrid:
        with self._lock:
            self._connection.execute(sql.insert_grid("?"), sql.row_of(grid))
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
            return [StoreEntry(*row) for row in self._connection.execute(sql.ENTRIES).fetchall()]

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
