"""The permalink store's contract, run on every backend (memory, SQLite, a real PostgreSQL server): grids, locks,
last access and the retention policy, the generated permalink secret; then what is particular to each: SQLite's file
and migration, PostgreSQL's schema version and migration, durability setting, locks and failures."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from future_lens.server.config import Settings
from future_lens.server.store import (
    PG_SCHEMA_VERSION,
    TOUCH_EVERY_S,
    GridStore,
    MemoryGridStore,
    PostgresGridStore,
    RetentionPolicy,
    SQLiteGridStore,
    StoredGrid,
    StoreEntry,
    StoreError,
    advisory_key,
    grid_id,
    is_grid_id,
)
from future_lens.server.web.app import create_app, open_store
from future_lens.service import LensService
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


def test_computing_all_takes_every_id_and_lets_them_all_go(store, reopen):
    first, second = ids(2, "batch")
    with store.computing_all([second, first, second]):  # any order, repeats allowed
        store.put(grid(first))
    entered = [threading.Event(), threading.Event()]
    other = reopen()
    for id_, event in zip((first, second), entered, strict=True):
        in_thread(lambda i=id_, e=event: enter(other, i, e)).join(WAIT_S)
    assert all(event.is_set() for event in entered), "a lock of the batch was still held"


# ---------- retention: last access, age and size limits, on every backend ----------

DAY = 86_400.0
NOW = 1_800_000_000.0  # a fixed "now", so the tests do not depend on the clock


def sized(id_: str, created_at: float, size: int = 1000) -> StoredGrid:
    """A grid of exactly `size` bytes (request + document), stored (and last accessed) at `created_at`."""
    document = "x" * (size - len('{"text":"a"}'))
    return StoredGrid(id_, "m", '{"text":"a"}', document, created_at, created_at)


def surviving(store: GridStore, grid_ids: list[str]) -> list[str]:
    return [id_ for id_ in grid_ids if store.get(id_) is not None]


def test_a_stored_grid_records_its_last_access_and_opening_moves_it(store):
    put = store.put(sized(GRID_ID, NOW - 10 * DAY))
    assert put.last_accessed == NOW - 10 * DAY
    store.opened(put, now=NOW)
    assert store.get(GRID_ID).last_accessed == NOW
    store.opened(store.get(GRID_ID), now=NOW + TOUCH_EVERY_S / 2)  # too soon: no write
    assert store.get(GRID_ID).last_accessed == NOW
    store.opened(put, now=NOW - DAY)  # a stale copy never moves the time back
    assert store.get(GRID_ID).last_accessed == NOW


def test_without_a_limit_retention_deletes_nothing(store):
    for id_ in ids(3):
        store.put(sized(id_, 0.0))
    assert store.apply_retention(RetentionPolicy(), now=NOW) == 0
    assert store.count() == 3


def test_max_age_deletes_grids_idle_too_long_but_keeps_recently_opened_ones(store):
    old, opened, young = ids(3, "age")
    for id_ in (old, opened):
        store.put(sized(id_, NOW - 40 * DAY))
    store.put(sized(young, NOW - 5 * DAY))
    store.opened(store.get(opened), now=NOW - DAY)
    assert store.apply_retention(RetentionPolicy(max_age_s=30 * DAY), now=NOW) == 1
    assert surviving(store, [old, opened, young]) == [opened, young]
    assert store.apply_retention(RetentionPolicy(max_age_s=30 * DAY), now=NOW) == 0


def test_max_size_deletes_the_longest_idle_first_and_never_recent_grids(store):
    grids = ids(5, "size")  # idle 50, 40, 30, 20, 10 days; 1000 bytes each
    for age, id_ in zip((50, 40, 30, 20, 10), grids, strict=True):
        store.put(sized(id_, NOW - age * DAY))
    store.opened(store.get(grids[0]), now=NOW - 2 * DAY)  # the oldest was opened lately: now the most recent
    policy = RetentionPolicy(max_bytes=2500, keep_recent_s=DAY)
    assert store.apply_retention(policy, now=NOW) == 3
    assert surviving(store, grids) == [grids[0], grids[4]]
    for id_ in ids(3, "fresh"):  # grids stored within keep_recent_s stay even over the limit
        store.put(sized(id_, NOW - 60))
    assert store.apply_retention(policy, now=NOW) == 2  # the 3000 recent bytes alone are over: both older go
    assert surviving(store, grids) == []
    assert store.count() == 3


def test_a_grid_opened_after_retention_chose_it_is_not_deleted(store):
    store.put(sized(GRID_ID, NOW - 40 * DAY))
    store.put(sized("bbbbbbbbbbbb", NOW - 40 * DAY))
    doomed = RetentionPolicy(max_age_s=30 * DAY).expired(store._entries(), NOW)
    assert sorted(e.id for e in doomed) == [GRID_ID, "bbbbbbbbbbbb"]
    store.opened(store.get(GRID_ID), now=NOW)  # a user opens it between the choice and the delete
    assert store._remove(doomed) == 1
    assert store.get(GRID_ID) is not None and store.get("bbbbbbbbbbbb") is None


def test_retention_policy_orders_by_last_access_and_counts_sizes():
    entries = [StoreEntry("a", 100.0, 10), StoreEntry("b", 300.0, 10), StoreEntry("c", 200.0, 10)]
    by_size = RetentionPolicy(max_bytes=15, keep_recent_s=0)
    assert [e.id for e in by_size.expired(entries, now=400.0)] == ["c", "a"]
    strict_lru = RetentionPolicy(max_bytes=25, keep_recent_s=0)  # small old "a" would fit once "d" is gone: LRU
    small_old = [StoreEntry("a", 100.0, 3), StoreEntry("b", 300.0, 10), StoreEntry("c", 200.0, 10)]
    assert [e.id for e in strict_lru.expired([*small_old, StoreEntry("d", 150.0, 10)], now=400.0)] == ["d", "a"]
    assert RetentionPolicy(max_age_s=150, max_bytes=100).expired(entries, now=400.0) == [entries[2], entries[0]]
    assert not RetentionPolicy().active and RetentionPolicy(max_bytes=1).active


def test_size_is_counted_in_utf8_bytes():
    assert StoredGrid(GRID_ID, "m", "{}", '"é漢😀"', 0.0).size_bytes == 2 + 2 + 2 + 3 + 4


# ---------- the permalink secret ----------


def test_the_secret_is_generated_once_and_kept(reopen):
    first = reopen()
    secret = first.secret()
    assert len(secret) == 32 and first.secret() == secret
    first.close()
    assert reopen().secret() == secret


def test_stores_opened_at_once_agree_on_one_secret(reopen):
    stores = [reopen() for _ in range(4)]  # on PostgreSQL: replicas starting together
    found: list[bytes] = []
    start = threading.Barrier(len(stores))

    def read(store: GridStore) -> None:
        start.wait(WAIT_S)
        found.append(store.secret())

    for thread in [in_thread(lambda s=s: read(s)) for s in stores]:
        thread.join(WAIT_S)
    assert len(found) == 4 and len(set(found)) == 1


def test_separate_stores_have_separate_secrets(tmp_path, postgres_server):
    first, second = SQLiteGridStore(tmp_path / "a.sqlite3"), SQLiteGridStore(tmp_path / "b.sqlite3")
    urls = [postgres_server.create_database() for _ in range(2)]
    pg = [PostgresGridStore(url) for url in urls]
    try:
        secrets_ = {first.secret(), second.secret(), MemoryGridStore().secret(), *(s.secret() for s in pg)}
        assert len(secrets_) == 5
    finally:
        for store in (first, second, *pg):
            store.close()
        for url in urls:
            postgres_server.drop_database(url)


# ---------- ids ----------


def test_grid_id_is_deterministic_and_short():
    request = {"text": "a", "layers": [0, 1]}
    assert grid_id(request) == grid_id(dict(reversed(request.items())))
    assert grid_id(request) != grid_id({"text": "b", "layers": [0, 1]})
    assert is_grid_id(grid_id(request))
    assert is_grid_id(grid_id({"text": "\ud800 lone surrogate"}))


def test_keyed_ids_are_shared_under_one_secret_and_differ_under_another():
    request = {"text": "Marty McFly from", "layers": [0, 1]}
    one, other = b"k" * 32, b"o" * 32
    assert grid_id(request, one) == grid_id(dict(reversed(request.items())), one)
    assert grid_id(request, one) != grid_id(request, other)
    assert grid_id(request, one) != grid_id(request)  # not the unkeyed sha256 id anyone could compute
    assert grid_id(request, one) != grid_id({**request, "text": "Marty McFly to"}, one)
    assert is_grid_id(grid_id(request, one))


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


def assert_old_grid_kept(store: GridStore) -> None:
    """The grid written by an older schema (created at 5.0, document '"é"') reads back, last accessed at its creation
    and counted in UTF-8 bytes; then the store is closed."""
    try:
        kept = store.get(GRID_ID)
        assert kept == StoredGrid(GRID_ID, "m", "{}", '"é"', 5.0) and kept.last_accessed == 5.0
        assert store._entries() == [StoreEntry(GRID_ID, 5.0, 2 + 4)]
    finally:
        store.close()


def test_a_sqlite_file_from_before_retention_is_migrated_and_its_grids_kept(tmp_path):
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as old:  # the schema as shipped before (no version, no last access, no sizes)
        old.execute(
            "CREATE TABLE grids (id TEXT PRIMARY KEY, model_id TEXT NOT NULL, request_json TEXT NOT NULL, "
            "document_json TEXT NOT NULL, created_at REAL NOT NULL)"
        )
        old.execute("INSERT INTO grids VALUES (?, 'm', '{}', ?, 5.0)", (GRID_ID, '"é"'))
    assert_old_grid_kept(SQLiteGridStore(path))
    assert_old_grid_kept(SQLiteGridStore(path))  # reopening runs no step twice


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
            ("last_accessed", "double precision"),
            ("size_bytes", "bigint"),
        ]
    finally:
        for store in opened:
            store.close()


def test_postgres_database_of_schema_1_is_migrated_and_its_grids_kept(postgres_url):
    with psycopg.connect(postgres_url, autocommit=True) as connection:  # what version 1 created
        connection.execute(
            "CREATE TABLE grids (id TEXT PRIMARY KEY, model_id TEXT NOT NULL, request_json TEXT NOT NULL, "
            "document_json TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL)"
        )
        connection.execute(
            "CREATE TABLE future_lens_schema (singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton), "
            "version INTEGER NOT NULL)"
        )
        connection.execute("INSERT INTO future_lens_schema VALUES (TRUE, 1)")
        connection.execute("INSERT INTO grids VALUES (%s, 'm', '{}', %s, 5.0)", (GRID_ID, '"é"'))
    assert_old_grid_kept(PostgresGridStore(postgres_url))


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


def test_postgres_close_closes_the_pool_and_ends_its_sessions(postgres_url):
    store = PostgresGridStore(postgres_url)
    store.put(grid())
    name = postgres_url.rsplit("/", 1)[1]
    count_sessions = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name <> 'probe'"
    with psycopg.connect(postgres_url, autocommit=True, application_name="probe") as probe:
        assert probe.execute(count_sessions, (name,)).fetchone()[0] >= 1
        store.close()
        assert store.pool.closed
        wait_for(lambda: probe.execute(count_sessions, (name,)).fetchone()[0] == 0, "the pool's sessions stayed open")
    with pytest.raises(StoreError):
        store.get(GRID_ID)


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


# ---------- the package: psycopg is optional ----------


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=120
    )


def test_importing_the_store_imports_no_psycopg():
    done = run_python(
        "import sys\n"
        "import future_lens.server.store as store\n"
        "assert store.SQLiteGridStore and store.MemoryGridStore and store.canonical_json\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] in ('psycopg', 'psycopg_pool')))\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_without_psycopg_the_postgres_store_imports_and_opening_one_says_what_to_install():
    done = run_python(
        "import sys\n"
        "sys.modules['psycopg'] = sys.modules['psycopg_pool'] = None  # as if not installed\n"
        "from future_lens.server.store import PostgresGridStore, StoreError, advisory_key\n"
        "assert advisory_key('aaaaaaaaaaaa')\n"
        "try:\n"
        "    PostgresGridStore('postgresql://u@db.example:5432/lens')\n"
        "except StoreError as error:\n"
        "    print(error)\n"
    )
    assert done.returncode == 0, done.stderr
    assert "install future-lens[postgres]" in done.stdout and "psycopg" in done.stdout


def test_the_store_and_the_library_share_one_canonical_json():
    from future_lens.canonical import canonical_json
    from future_lens.server import store

    assert store.canonical_json is canonical_json
    assert canonical_json({"b": 1, "a": "é"}) == '{"a":"\\u00e9","b":1}'


# ---------- SQLite: check_writable ----------


def tree(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


def assert_not_writable(path: Path, reason: str) -> None:
    with pytest.raises(StoreError) as caught:
        SQLiteGridStore.check_writable(path)
    message = str(caught.value)
    assert str(path) in message and reason in message and "\n" not in message, message


def test_check_writable_fails_naming_the_path_where_a_file_stands_for_a_folder(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    assert_not_writable(blocker / "sub" / "grids.sqlite3", "cannot create the folder")
    assert_not_writable(blocker / "grids.sqlite3", "cannot create the file")
    assert tree(tmp_path) == ["blocker"] and blocker.read_text() == "not a folder"


def test_check_writable_removes_the_folders_it_made_when_the_file_cannot_be_made(tmp_path):
    assert_not_writable(tmp_path / "new" / "deeper" / ("x" * 300), "cannot create the file")  # name too long
    assert tree(tmp_path) == []


def test_check_writable_fails_on_a_folder_where_the_file_should_be(tmp_path):
    (tmp_path / "grids.sqlite3").mkdir()
    assert_not_writable(tmp_path / "grids.sqlite3", "cannot write the file")
    assert tree(tmp_path) == ["grids.sqlite3"]


def test_check_writable_passes_and_leaves_nothing(tmp_path):
    SQLiteGridStore.check_writable(tmp_path / "new" / "deeper" / "grids.sqlite3")
    assert tree(tmp_path) == []
    path = tmp_path / "grids.sqlite3"
    store = SQLiteGridStore(path)
    try:
        store.put(grid())
        before = path.read_bytes()
        SQLiteGridStore.check_writable(path)  # an existing store, even open
        assert path.read_bytes() == before and store.get(GRID_ID) == grid()
        assert not [name for name in tree(tmp_path) if name.endswith(".check")]
    finally:
        store.close()
