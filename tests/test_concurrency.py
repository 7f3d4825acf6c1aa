"""Serving under load: one model worker, 503 + Retry-After when full, 504 past the deadline, single flight,
and no compute for a client that left before its work started."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

import future_lens.server.web  # noqa: F401  (before future_lens.lens: see future_lens/server/web/__init__.py)
from future_lens.server.config import Settings
from future_lens.server.store import MemoryGridStore
from future_lens.server.web.app import create_app
from future_lens.server.web.keeper import ClientGoneError, GridKeeper
from future_lens.server.worker import InferenceWorker
from future_lens.service import LensService, parse_request


class CountingService(LensService):
    """The real service, counting how often the model is run."""

    def __init__(self, model):
        super().__init__(model)
        self.computed = 0

    def compute(self, request):
        self.computed += 1
        return super().compute(request)


@pytest.fixture
def service(tiny_llama) -> CountingService:
    return CountingService(tiny_llama)


def occupy(worker: InferenceWorker) -> threading.Event:
    """Keep the worker's thread busy until the returned event is set."""
    release, started = threading.Event(), threading.Event()
    worker.submit("occupied", lambda: (started.set(), release.wait(30)))
    assert started.wait(5)
    return release


def wait_until(condition: Callable[[], bool], timeout_s: float, message: Callable[[], str]) -> None:
    """Poll `condition` until it holds; fail the test with `message()` after `timeout_s` instead of hanging."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"after {timeout_s} s: {message()}")
        time.sleep(0.02)


def body(text: str) -> dict[str, object]:
    return {"text": text, "method": "logit", "layers": "all"}


def make_client(service, tmp_path, **settings) -> TestClient:
    return TestClient(create_app(Settings(db_path=tmp_path / "g.sqlite3", **settings), service=service))


def test_full_queue_answers_503_with_retry_after(service, tmp_path) -> None:
    with make_client(service, tmp_path, max_queue=1) as client:
        release = occupy(client.app.state.keeper.worker)  # the one queue place is taken
        try:
            response = client.post("/lens", json=body("The queue is full"))
        finally:
            release.set()
        assert response.status_code == 503
        assert int(response.headers["Retry-After"]) > 0
        assert "busy" in response.json()["message"]
        assert client.app.state.store.count() == 0
        assert client.get("/healthz").status_code == 200


def test_deadline_answers_504(service, tmp_path) -> None:
    with make_client(service, tmp_path, request_timeout_s=0.3) as client:
        release = occupy(client.app.state.keeper.worker)
        try:
            response = client.post("/lens", json=body("Too slow today"))
        finally:
            release.set()
        assert response.status_code == 504
        assert "took too long" in response.json()["message"]


def test_identical_concurrent_requests_are_computed_once(service, tmp_path) -> None:
    with make_client(service, tmp_path) as client:
        release = occupy(client.app.state.keeper.worker)
        responses = []
        threads = [
            threading.Thread(target=lambda: responses.append(client.post("/lens", json=body("Same text for all"))))
            for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        worker = client.app.state.keeper.worker
        try:  # queued: the blocker + the one job the 4 requests share
            wait_until(lambda: worker.queued >= 2, 10, lambda: f"the requests' job never queued ({worker.queued=})")
        finally:
            release.set()
        for thread in threads:
            thread.join(30)
        assert [r.status_code for r in responses] == [200] * 4
        assert len({r.content for r in responses}) == 1
        assert service.computed == 1


def test_client_that_left_costs_no_compute(service) -> None:
    keeper = GridKeeper(service, MemoryGridStore(), InferenceWorker())
    release = occupy(keeper.worker)

    async def gone() -> bool:
        return True

    async def ask() -> None:
        await keeper.get_or_compute_async(parse_request(**body("Nobody waits for me")), gone, poll_s=0.01)

    with pytest.raises(ClientGoneError):
        asyncio.run(ask())
    release.set()
    keeper.worker.submit("after", lambda: None).result(10)  # the worker has moved past the abandoned job
    assert service.computed == 0 and keeper.worker.skipped == 1
    keeper.worker.stop()
