"""Permalink ids keyed by the deployment's secret (HMAC), old unkeyed ids still opening, and the retention policy
as the app applies it."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from future_lens.server.config import Settings
from future_lens.server.retention import DAY_S, RetentionJanitor, retention_policy
from future_lens.server.store import RetentionPolicy, SQLiteGridStore, StoredGrid, grid_id, new_stored_grid
from future_lens.server.web.app import create_app
from future_lens.server.web.keeper import grid_document_json
from future_lens.service import LensService, parse_request

BODY = {"text": "Same text, same id", "method": "logit", "layers": "all"}
SECRET = "a-deployment-secret-0123456789"


@pytest.fixture(scope="module")
def service(tiny_llama) -> LensService:
    return LensService(tiny_llama)


def posted_id(service: LensService, settings: Settings) -> str:
    with TestClient(create_app(settings, service=service)) as client:
        response = client.post("/lens", json=BODY)
        assert response.status_code == 200, response.text
        return response.json()["id"]


def test_one_secret_one_id_another_secret_another_id(service, tmp_path) -> None:
    first = posted_id(service, Settings(db_path=tmp_path / "a.sqlite3", secret=SECRET))
    again = posted_id(service, Settings(db_path=tmp_path / "b.sqlite3", secret=SECRET))  # another replica's store
    other = posted_id(service, Settings(db_path=tmp_path / "c.sqlite3", secret=SECRET[::-1]))
    assert first == again != other
    canonical = service.plan(parse_request(**BODY)).canonical()
    assert first == grid_id(canonical, SECRET.encode())
    assert first != grid_id(canonical), "the id must not be the unkeyed hash anyone can compute"


def test_without_a_secret_the_store_keeps_a_generated_one(service, tmp_path) -> None:
    path = tmp_path / "g.sqlite3"
    first = posted_id(service, Settings(db_path=path))
    assert posted_id(service, Settings(db_path=path)) == first  # after a restart: the same id
    assert posted_id(service, Settings(db_path=tmp_path / "other.sqlite3")) != first  # another deployment
    store = SQLiteGridStore(path)
    try:
        assert first == grid_id(service.plan(parse_request(**BODY)).canonical(), store.secret())
    finally:
        store.close()


def test_a_permalink_stored_under_an_old_unkeyed_id_still_opens(service, tmp_path) -> None:
    path = tmp_path / "g.sqlite3"
    planned = service.plan(parse_request(**BODY))
    old_id = grid_id(planned.canonical())  # how ids were derived before secrets
    store = SQLiteGridStore(path)
    document = grid_document_json(service.compute(planned), old_id)
    store.put(new_stored_grid(old_id, service.model.id, planned.canonical(), document))
    store.close()
    with TestClient(create_app(Settings(db_path=path, secret=SECRET), service=service)) as client:
        response = client.get(f"/g/{old_id}.json")
        assert response.status_code == 200 and response.content.decode() == document
        assert client.get(f"/g/{old_id}").status_code == 200
        assert client.post("/lens", json=BODY).json()["id"] != old_id  # new requests get keyed ids


def test_a_short_secret_is_refused_and_an_empty_one_is_unset() -> None:
    with pytest.raises(ValidationError, match="at least 16 characters"):
        Settings(secret="short")
    assert Settings(secret="").secret is None


# ---------- retention in the app ----------


def test_retention_settings_become_the_policy() -> None:
    settings = Settings(retention_max_age_days=30, retention_max_mb=5, retention_keep_recent_hours=2)
    assert retention_policy(settings) == RetentionPolicy(30 * DAY_S, 5_000_000, 7200.0)
    assert not retention_policy(Settings()).active


def test_the_app_applies_retention_at_start_and_keeps_what_was_opened(service, tmp_path) -> None:
    path = tmp_path / "g.sqlite3"
    store = SQLiteGridStore(path)
    long_ago = time.time() - 100 * DAY_S
    for id_ in ("aaaaaaaaaaaa", "bbbbbbbbbbbb"):
        store.put(StoredGrid(id_, "m", "{}", "{}", long_ago, long_ago))
    store.opened(store.get("bbbbbbbbbbbb"))  # opened just now
    store.close()
    settings = Settings(db_path=path, retention_max_age_days=30, retention_interval_s=3600)
    with TestClient(create_app(settings, service=service)) as client:
        janitor: RetentionJanitor = client.app.state.janitor
        deadline = time.monotonic() + 10
        while janitor.deleted < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert janitor.deleted == 1
        assert client.get("/g/aaaaaaaaaaaa.json").status_code == 404
        assert client.get("/g/bbbbbbbbbbbb.json").status_code == 200
        assert client.post("/lens", json=BODY).status_code == 200  # a new grid is recent: kept
        assert janitor.apply() == 0


def test_without_limits_no_retention_thread_runs(service, tmp_path) -> None:
    with TestClient(create_app(Settings(db_path=tmp_path / "g.sqlite3"), service=service)) as client:
        assert not client.app.state.janitor._thread.is_alive()
