"""Streamed grids: NDJSON through `POST /lens` (line by line; the final line is the stored permalink document),
the page's Server-Sent Events, and cancellation (a client that leaves stops the work and frees the worker)."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi.testclient import TestClient

from future_lens.lens.grid import first_rows
from future_lens.server.config import Settings
from future_lens.server.web.app import create_app
from future_lens.server.web.streaming import StreamCancelledError, StreamHead, StreamRow, follow, start_stream
from future_lens.server.worker import InferenceWorker
from future_lens.service import GridRequest
from tests.webapp_helpers import service_with_prompts

pytestmark = pytest.mark.embedded

NDJSON = {"Accept": "application/x-ndjson"}
REQUEST = {"text": "The doctor said that he", "method": "future", "n_future": 2, "layers": "::3", "top_k": 3}


@pytest.fixture(scope="module")
def client(smollm2, tmp_path_factory) -> TestClient:
    service = service_with_prompts(tmp_path_factory.mktemp("prompts"), smollm2)
    return TestClient(create_app(Settings(db_path=tmp_path_factory.mktemp("db") / "g.sqlite3"), service=service))


def ndjson(response) -> list[dict]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines()]


def test_ndjson_streams_head_rows_then_the_stored_document(client) -> None:
    response = client.post("/lens", json=REQUEST, headers=NDJSON)
    lines = ndjson(response)
    head, rows, final = lines[0], lines[1:-1], lines[-1]
    layers = head["grid"]["layers"]
    assert head["kind"] == "head" and head["rows_total"] == len(layers) == 10
    assert all(row == [] for row in head["grid"]["cells"])
    assert [row["kind"] for row in rows] == ["row"] * len(layers)
    assert [row["rows_done"] for row in rows] == list(range(1, len(layers) + 1))
    assert sorted(row["row"] for row in rows) == list(range(len(layers)))
    assert [row["row"] for row in rows[:1]] == first_rows(len(layers)) == [4], "the middle row first"
    # The final line is the stored document, byte for byte, and the rows are its rows.
    stored = client.get(f"/g/{final['id']}.json")
    assert response.text.splitlines()[-1] == stored.text
    assert final["schema"] == "future-lens.grid/3"
    for row in rows:
        assert row["cells"] == final["cells"][row["row"]]
        assert row["layer"] == final["layers"][row["row"]]
    assert head["grid"]["continuations"] == final["continuations"]
    # A stored grid streams as its document alone; the plain form is the same document.
    again = client.post("/lens", json=REQUEST, headers=NDJSON)
    assert again.text.splitlines() == [stored.text]
    assert client.post("/lens", json=REQUEST).text == stored.text


def test_ndjson_invalid_request_is_a_plain_422(client) -> None:
    response = client.post("/lens", json={**REQUEST, "layers": "40"}, headers=NDJSON)
    assert response.status_code == 422 and response.json()["field"] == "layers"
    response = client.post("/lens", json={**REQUEST, "track": [5]}, headers=NDJSON)
    assert response.status_code == 422 and response.json()["field"] == "track"


def test_openapi_documents_the_ndjson_stream(client) -> None:
    content = client.get("/openapi.json").json()["paths"]["/lens"]["post"]["responses"]["200"]["content"]
    assert "application/x-ndjson" in content and "application/json" in content


def test_a_client_that_leaves_stops_the_work_and_frees_the_worker(client) -> None:
    keeper = client.app.state.keeper
    request = GridRequest(text="One two three four five six seven eight nine ten", method="future", layers="all")

    async def leave_after_first_row() -> list[object]:
        started = start_stream(keeper, request)
        events = []
        stream = follow(started, timeout_s=120)
        async for event in stream:
            events.append(event)
            if isinstance(event, StreamRow):
                break
        await stream.aclose()  # the client goes: the ticket is given up
        return [started, events]

    started, events = asyncio.run(leave_after_first_row())
    assert isinstance(events[0], StreamHead) and isinstance(events[1], StreamRow)
    with pytest.raises(StreamCancelledError, match="of 30 rows"):
        started.ticket.future.result(timeout=60)
    assert keeper.lookup(started.key) is None, "a partial grid is never stored"
    worker: InferenceWorker = keeper.worker
    assert worker.submit("next", lambda: "ran").result(timeout=5) == "ran"  # the worker took the next job at once


def test_abandoned_is_true_only_for_a_pending_job_nobody_waits_for() -> None:
    import threading

    worker = InferenceWorker()
    release = threading.Event()
    ticket = worker.submit("k", lambda: release.wait(5))
    assert not worker.abandoned("k") and not worker.abandoned("other")
    ticket.give_up()
    assert worker.abandoned("k")
    release.set()
    worker.stop()


def sse_events(text: str) -> list[tuple[str, dict]]:
    """(event, data) pairs of a Server-Sent Events body."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return events


def test_page_stream_sends_head_escaped_rows_and_the_stored_grid(client) -> None:
    text = "<b>bold</b> & more"
    response = client.get("/grid/stream", params={"text": text, "method": "future", "n_future": "2", "stride": "10"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "head" and kinds[-1] == "done" and kinds[1:-1] == ["row"] * events[0][1]["total"]
    assert 'class="cell pending"' in events[0][1]["html"] and "Cancel" in events[0][1]["html"]
    assert "<b>" not in events[0][1]["html"] and "&lt;" in events[0][1]["html"], "token text is escaped"
    for _, row in events[1:-1]:
        assert f'data-row="{row["r"]}"' in row["html"] and "pending" not in row["html"]
        assert len(row["cells"]) == len(client.post("/lens", json={"text": text, "layers": "0"}).json()["tokens"])
    done = events[-1][1]
    assert done["permalink"].startswith("/g/") and done["permalink"] in done["html"]
    stored = client.get(done["permalink"] + ".json").json()
    assert [len(r) for r in stored["cells"]] == [len(stored["tokens"])] * len(stored["layers"])


def test_page_stream_of_invalid_form_fails_naming_the_field(client) -> None:
    response = client.get("/grid/stream", params={"text": "hello", "stride": "0"})
    ((kind, data),) = sse_events(response.text)
    assert kind == "failed" and data["field"] == "stride" and "stride" in data["html"]


def test_a_follower_that_reads_only_after_the_computation_ended_gets_every_row(client) -> None:
    """The feed belongs to the ticket: a busy event loop that first polls after the grid is done (or failed) still
    sends the head and every row before the end, not the end alone (the race CI once hit)."""
    keeper = client.app.state.keeper
    request = GridRequest(text="A follower that is late", method="future", layers="::10")
    started = start_stream(keeper, request)
    started.ticket.future.result(timeout=120)  # the computation is over, its feed closed in the hub

    async def read_all() -> list[object]:
        return [event async for event in follow(started, timeout_s=120)]

    events = asyncio.run(read_all())
    assert isinstance(events[0], StreamHead)
    assert sum(isinstance(event, StreamRow) for event in events) == 3  # layers 0, 10, 20
    assert keeper.lookup(started.key) is not None
