"""Per-client rate limit (off by default): token buckets, 429 + Retry-After on computing routes only."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from future_lens.server.config import Settings
from future_lens.server.web.app import create_app
from future_lens.server.web.ratelimit import TokenBuckets
from future_lens.service import LensService


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_admits_a_burst_then_the_rate_per_client() -> None:
    clock = Clock()
    buckets = TokenBuckets(per_minute=6, burst=3, clock=clock)  # one token every 10 s
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(10.0)
    assert buckets.take("b") == 0.0  # another client has its own bucket
    clock.now += 10.0
    assert buckets.take("a") == 0.0 and buckets.take("a") == pytest.approx(10.0)
    clock.now += 1000.0
    assert [buckets.take("a") for _ in range(4)][-1] > 0  # refills to the burst, never beyond


def app_client(tiny_llama, tmp_path, **limits: object) -> TestClient:
    settings = Settings(db_path=tmp_path / "grids.sqlite3", **limits)
    return TestClient(create_app(settings, service=LensService(tiny_llama)))


def test_a_burst_past_the_limit_gets_429_with_retry_after(tiny_llama, tmp_path) -> None:
    client = app_client(tiny_llama, tmp_path, rate_limit_per_minute=2, rate_limit_burst=2)
    statuses = [client.post("/lens", json={"text": f"hello {i}", "method": "logit"}).status_code for i in range(4)]
    assert statuses == [200, 200, 429, 429]
    refused = client.get("/lens", params={"text": "hello", "method": "logit"})
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) in range(1, 31)
    assert refused.json()["field"] == "client" and "retry in" in refused.json()["message"]
    assert client.get("/").status_code == 200 and client.get("/healthz").status_code == 200  # pages: never limited


def test_no_limit_unless_configured(tiny_llama, tmp_path) -> None:
    client = app_client(tiny_llama, tmp_path)
    assert {client.post("/lens", json={"text": "hi", "method": "logit"}).status_code for _ in range(15)} == {200}
