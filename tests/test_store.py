"""The permalink store's contract, run on every backend (memory, SQLite, a real PostgreSQL server), then what is
particular to each: SQLite's file, PostgreSQL's schema version, durability setting, locks and failures."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.config import Settings
from app.service import LensService
from app.store import (
    PG_SCHEMA_VERSION,
    GridStore,
    MemoryGridStore,
    PostgresGridStore,
    SQLiteGridStore,
    StoredGrid,
    StoreError,
    advisory_key,
    grid_id,
    is_grid_id,
)
from app.web.app import create_app, open_store
from tests.postgres_helpers import PostgresServer

BACKENDS = ["memory", "sqlite", "postgresql"]
WAIT_S = 20  # bound on every wait, so a broken lock fails a test instead of hanging it
GRID_ID = "aaaaaaaaaaaa"


def grid(id_: str = GRID_ID, version: int = 1, created_at: float = 1.0) -> StoredGrid:
    return StoredGrid(id_, "m", '{"text":"a"}', f'{{"v":{version}}}', created_at)


def ids(n: int, prefix: str = "") -> list[str]:
    """n distinct valid ids."""
    return [grid_id({"n": i, "prefix": prefix}) for i in range(n)]


@pytest.fixture(params=BACKENDS)
def reopen(request: pytest.FixtureRequest, tmp_path) -> Iterator[Callable[[], GridStore]]:
    """Opens a store on this backend's one location at each call (a memory store lives as long as the test)."""
    if request.param == "memory":
        shared = MemoryGridStore()
        make: Callable[[], GridStore] = lambda: shared  # noqa: E731
    elif request.param == "sqlite":
        make = lambda: SQLiteGridStore(tmp_path / "grids.sqlite3")  # noqa: E731
    else:
        url = request.getfixturevalue("postgres_url")
        make = lambda: PostgresGridStore(url)  # noqa: E731
    opened: list[GridStore] = []

    def open_one() -> GridStore:
        opened.append(make())
        return opened[-1]

    yield open_one
    for store in opened:
        store.close()


@pytest.fixture
def store(reopen: Callable[[], GridStore]) -> GridStore:
    return reopen()


def enter(store: GridStore, id_: str, entered: threading.Event) -> None:
    """Take `store.computing(id_)` (waiting if needed), then say so and let it go."""
    with store.computing(id_):
        entered.set()


def in_thread(work: Callable[[], object]) -> threading.Thread:
    """Start `work` on a daemon thread (so a test that fails while it waits cannot hang the session)."""
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


# ---------- the contract: every backend ----------


def test_an_empty_store_has_nothing(store):
    assert store.get(GRID_ID) is None
    assert store.count() == 0


def test_a_grid_reads_back_exactly(store):
    document = '{"text":"naïve 漢字 😀 \\u0000 \\"quoted\\" <b>","p":0.1}'
    stored = StoredGrid(GRID_ID, "smollm2-135m-instruct", '{"text":"\\ud800"}', document, 1764412345.1234567)
    assert store.put(stored) == stored
    assert store.get(GRID_ID) == stored


def test_put_is_idempotent_the_first_grid_wins(store):
    first = grid(version=1, created_at=1.0)
    assert store.put(first) == first
    assert store.put(grid(version=2, created_at=2.0)) == first
    assert store.get(GRID_ID) == first
    assert store.get("bbbbbbbbbbbb") is None
    assert store.count() == 1


def test_count_counts_distinct_ids(store):
    for id_ in ids(5):
        store.put(grid(id_))
    store.put(grid(ids(1)[0], version=9))
    assert store.count() == 5


def test_grids_survive_reopening(reopen):
    first = reopen()
    first.put(grid())
    first.close()
    assert reopen().get(GRID_ID) == grid()


def test_concurrent_puts_of_one_id_all_return_the_one_kept(store):
    results: dict[int, StoredGrid] = {}
    start = threading.Barrier(8)

    def put(version: int) -> None:
        start.wait(WAIT_S)
        results[version] = store.put(grid(version=version, created_at=float(version)))

    threads = [in_thread(lambda v=v: put(v)) for v in range(8)]
    for thread in threads:
        thread.join(WAIT_S)
    assert len(results) == 8
    assert len(set(results.values())) == 1
    assert store.get(GRID_ID) == results[0]
    assert store.count() == 1


def test_concurrent_puts_and_gets_of_many_ids_all_land(store):
    errors: list[BaseException] = []

    def writer(prefix: str) -> None:
        try:
            for id_ in ids(10, prefix):
                assert store.put(grid(id_)) == grid(id_)
                assert store.get(id_) == grid(id_)
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [in_thread(lambda p=str(t): writer(p)) for t in range(6)]
    for thread in threads:
        thread.join(WAIT_S)
    assert errors == []
    assert store.count() == 60


def test_the_store_is_usable_while_computing_and_the_lock_is_released_after_an_error(store, reopen):
    with store.computing(GRID_ID):
        assert store.get(GRID_ID) is None
        store.put(grid())
        with store.computing("bbbbbbbbbbbb"):  # another id: not blocked by the first
            assert store.count() == 1
    with pytest.raises(RuntimeError, match="compute failed"), store.computing(GRID_ID):
        raise RuntimeError("compute failed")
    entered = threading.Event()
    in_thread(lambda: enter(reopen(), GRID_ID, entered)).join(WAIT_S)  # a second store, as another process has
    assert entered.is_set(), "the lock was still held after the with block ended"


# ---------- ids ----------


def test_grid_id_is_deterministic_and_short():
    request = {"text": "a", "layers": [0, 1]}
    assert grid_id(request) == grid_id(dict(reversed(request.items())))
    assert grid_id(request) != grid_id({"text": "b", "layers": [0, 1]})
    assert is_grid_id(grid_id(request))
    assert is_grid_id(grid_id({"text": "\ud800 lone surrogate"}))


def test_advisory_keys_are_signed_64_bit_and_differ():
    keys = {advisory_key(id_) for id_ in ids(1000)}
    assert len(keys) == 1000
    assert all(-(2**63) <= key < 2**63 for key in keys)


# ---------- SQLite ----------


def test_sqlite_store_file_is_private_and_in_wal_mode(tmp_path):
    path = tmp_path / "sub" / "grids.sqlite3"
    SQLiteGridStore(path).close()
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_corrupt_database_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot open the permalink database"):
        SQLiteGridStore(path)


# ---------- PostgreSQL ----------


def waiting_advisory_locks(url: str) -> int:
    """How many sessions wait for an advisory lock in the database of `url`."""
    with psycopg.connect(url) as connection:
        row = connection.execute(
            "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchone()
    return int(row[0])


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"after {WAIT_S} s: {what}")
        time.sleep(0.05)


def test_postgres_computing_is_exclusive_across_stores_per_id(postgres_url):
    first, second = PostgresGridStore(postgres_url), PostgresGridStore(postgres_url)
    try:
        entered, other_entered = threading.Event(), threading.Event()
        with first.computing(GRID_ID):
            in_thread(lambda: enter(second, "bbbbbbbbbbbb", other_entered)).join(WAIT_S)
            assert other_entered.is_set(), "a lock on another id blocked"
            waiter = in_thread(lambda: enter(second, GRID_ID, entered))
            wait_for(lambda: waiting_advisory_locks(postgres_url) == 1, "the second store never waited for the lock")
            assert not entered.is_set()
        waiter.join(WAIT_S)
        assert entered.is_set(), "the second store never got the lock after the first let it go"
    finally:
        first.close()
        second.close()


def test_postgres_schema_is_created_once_and_versioned(postgres_url):
    opened: list[GridStore] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def open_one() -> None:  # replicas starting together
        try:
            start.wait(WAIT_S)
            opened.append(PostgresGridStore(postgres_url))
        except BaseException as error:
            errors.append(error)

    for thread in [in_thread(open_one) for _ in range(4)]:
        thread.join(WAIT_S)
    try:
        assert errors == [] and len(opened) == 4
        opened[0].put(grid())
        assert opened[3].get(GRID_ID) == grid()
        with psycopg.connect(postgres_url) as connection:
            assert connection.execute("SELECT version FROM future_lens_schema").fetchall() == [(PG_SCHEMA_VERSION,)]
            columns = connection.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'grids' "
                "ORDER BY ordinal_position"
            ).fetchall()
        assert columns == [
            ("id", "text"),
            ("model_id", "text"),
            ("request_json", "text"),
            ("document_json", "text"),
            ("created_at", "double precision"),
        ]
    finally:
        for store in opened:
            store.close()


def test_postgres_refuses_a_newer_schema(postgres_url):
    PostgresGridStore(postgres_url).close()
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("UPDATE future_lens_schema SET version = %s", (PG_SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match=f"schema is version {PG_SCHEMA_VERSION + 1}"):
        PostgresGridStore(postgres_url)


def test_postgres_commits_synchronously_whatever_the_database_default(postgres_url):
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f'ALTER DATABASE "{postgres_url.rsplit("/", 1)[1]}" SET synchronous_commit = off')
    store = PostgresGridStore(postgres_url)
    try:
        with store.pool.connection() as connection:
            assert connection.execute("SHOW synchronous_commit").fetchone()[0] == "on"
            assert connection.autocommit
    finally:
        store.close()


def test_postgres_unreachable_is_a_clear_error_without_the_password(postgres_server: PostgresServer):
    url = f"postgresql://postgres:s3cret-pw@127.0.0.1:{postgres_server.port}/no_such_database"
    expected = r"cannot open the permalink database 127\.0\.0\.1:\d+/no_such_database"
    with pytest.raises(StoreError, match=expected) as error:
        PostgresGridStore(url, connect_timeout_s=2)
    assert "s3cret-pw" not in str(error.value)


def test_a_lost_database_answers_503_not_500(postgres_server, postgres_url, tiny_gptj):
    store = PostgresGridStore(postgres_url, connect_timeout_s=1)
    store.put(grid())
    client = TestClient(create_app(Settings(), service=LensService(tiny_gptj), store=store))
    assert client.get(f"/g/{GRID_ID}.json").status_code == 200
    postgres_server.drop_database(postgres_url)
    with pytest.raises(StoreError, match="failed"):
        store.get(GRID_ID)
    response = client.get(f"/g/{GRID_ID}.json")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert "permalink database is unavailable" in response.json()["message"]
    store.close()


# ---------- settings ----------


def test_db_url_selects_postgresql_and_sqlite_stays_the_default(postgres_url, tmp_path):
    sqlite = open_store(Settings(db_path=tmp_path / "g.sqlite3"))
    postgres = open_store(Settings(db_path=tmp_path / "unused.sqlite3", db_url=postgres_url))
    try:
        assert isinstance(sqlite, SQLiteGridStore)
        assert isinstance(postgres, PostgresGridStore)
        assert not (tmp_path / "unused.sqlite3").exists()
    finally:
        sqlite.close()
        postgres.close()


def test_db_url_comes_from_the_environment_and_must_be_postgresql(monkeypatch):
    monkeypatch.setenv("FUTURE_LENS_DB_URL", "postgresql://u@db.example:5432/lens")
    assert Settings().db_url == "postgresql://u@db.example:5432/lens"
    monkeypatch.setenv("FUTURE_LENS_DB_URL", "")
    assert Settings().db_url is None
    with pytest.raises(ValidationError, match="postgresql:// URL"):
        Settings(db_url="mysql://u@db/lens")
