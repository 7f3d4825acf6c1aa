"""Permalink store: computed grids kept under a short id derived from everything that determines them.

`GridStore` (in `base`, with the records, ids, errors and the retention policy) is the small interface the web app
uses; `SQLiteGridStore` (`sqlite`) is the default (one file, WAL, one writer), `PostgresGridStore` (`postgres`) lets
several app processes (replicas) share one database, and `MemoryGridStore` (`memory`) serves tests.

Every name is importable from here. The PostgreSQL ones are loaded on first use (module `__getattr__`), so importing
this package never imports psycopg, the optional extra `future-lens[postgres]`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from future_lens.canonical import canonical_json
from future_lens.server.store.base import (
    ID_ALPHABET,
    ID_LENGTH,
    SECRET_NAME,
    TOUCH_EVERY_S,
    GridStore,
    RetentionPolicy,
    StoredGrid,
    StoreEntry,
    StoreError,
    grid_id,
    is_grid_id,
    new_stored_grid,
)
from future_lens.server.store.memory import MemoryGridStore
from future_lens.server.store.sqlite import SQLiteGridStore

if TYPE_CHECKING:
    from future_lens.server.store.postgres import PG_SCHEMA_VERSION, PostgresGridStore, advisory_key, describe_db_url

#: Names served from `future_lens.server.store.postgres`, imported when first asked for.
_POSTGRES_NAMES = ("PG_SCHEMA_VERSION", "PostgresGridStore", "advisory_key", "describe_db_url")

__all__ = [
    "ID_ALPHABET",
    "ID_LENGTH",
    "PG_SCHEMA_VERSION",
    "SECRET_NAME",
    "TOUCH_EVERY_S",
    "GridStore",
    "MemoryGridStore",
    "PostgresGridStore",
    "RetentionPolicy",
    "SQLiteGridStore",
    "StoreEntry",
    "StoreError",
    "StoredGrid",
    "advisory_key",
    "canonical_json",
    "describe_db_url",
    "grid_id",
    "is_grid_id",
    "new_stored_grid",
]


def __getattr__(name: str) -> object:
    if name in _POSTGRES_NAMES:
        value = getattr(importlib.import_module(f"{__name__}.postgres"), name)
        globals()[name] = value  # later lookups skip this hook
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
