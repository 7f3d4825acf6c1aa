"""Crash test: kill -9 the real server during a burst of writes; every permalink it returned is still served."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from benchmarks.serving import ServerProcess

pytestmark = pytest.mark.embedded


def burst(url: str, clients: int, per_client: int, acknowledged: dict[str, bytes], stop: threading.Event) -> None:
    """Clients post new texts until told to stop; every 200 answer's permalink id and JSON are recorded."""
    lock = threading.Lock()

    def client(c: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            for i in range(per_client):
                if stop.is_set():
                    return
                body = {"text": f"Crash test {c} number {i} of the burst", "method": "logit", "layers": "0,29"}
                try:
                    response = http.post("/lens", json=body)
                except httpx.HTTPError:
                    return  # the server died under us: expected
                if response.status_code == 200:
                    with lock:
                        acknowledged[response.json()["id"]] = response.content

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_acknowledged_grids_survive_kill_9(tmp_path) -> None:
    db = tmp_path / "grids.sqlite3"
    server = ServerProcess(db).start()
    acknowledged: dict[str, bytes] = {}
    stop = threading.Event()
    writer = threading.Thread(target=burst, args=(server.url, 4, 40, acknowledged, stop))
    try:
        writer.start()
        while len(acknowledged) < 8 and writer.is_alive():
            writer.join(0.05)
        server.kill()  # mid-burst, no shutdown hooks run
        stop.set()
        writer.join(60)
    finally:
        server.kill()
    assert len(acknowledged) >= 8
    restarted = ServerProcess(db, port=server.port).start()
    try:
        for grid_id, body in acknowledged.items():
            response = httpx.get(f"{restarted.url}/g/{grid_id}.json", timeout=30)
            assert response.status_code == 200, grid_id
            assert response.content == body
            assert json.loads(response.content)["schema"] == "future-lens.grid/3"
    finally:
        restarted.stop()
