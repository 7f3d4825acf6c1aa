"""Two replicas: two real `future-lens serve` processes on loopback sharing one real PostgreSQL database.

A permalink made on one opens on the other, an identical request sent to both at once is computed once in the
whole cluster: exactly one answer says `X-Future-Lens-Cache: miss`, the other waited for it and read it back; and
both key their ids with the one secret generated once and kept in the database.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx
import psycopg
import pytest

from benchmarks.serving import ServerProcess
from future_lens.server.store import SECRET_NAME, grid_id
from tests.postgres_helpers import PostgresServer

pytestmark = pytest.mark.embedded

WAIT_S = 120
#: Long enough (about 60 tokens, every layer, the most alternatives) that both replicas are busy at the same time.
LONG_TEXT = " ".join(["The replicas share one database, and each grid is computed only once in the cluster."] * 3)


def body(text: str) -> dict[str, object]:
    return {"text": text, "method": "logit", "layers": "all", "top_k": 20}


@pytest.fixture(scope="module")
def cluster(postgres_server: PostgresServer, embedded_dir, tmp_path_factory) -> Iterator[tuple[str, list[str]]]:
    """(database URL, [replica URLs]): two servers started with the same `FUTURE_LENS_DB_URL`."""
    url = postgres_server.create_database()
    unused = tmp_path_factory.mktemp("replicas")
    servers = [ServerProcess(unused / f"unused-{i}.sqlite3", env={"FUTURE_LENS_DB_URL": url}) for i in range(2)]
    try:
        for server in servers:
            server.start()
        yield url, [server.url for server in servers]
    finally:
        for server in servers:
            server.stop()
        postgres_server.drop_database(url)
    assert not any((unused / f"unused-{i}.sqlite3").exists() for i in range(2)), "a replica used SQLite"


def stored_rows(url: str, grid_id: str) -> int:
    with psycopg.connect(url) as connection:
        return int(connection.execute("SELECT COUNT(*) FROM grids WHERE id = %s", (grid_id,)).fetchone()[0])


def test_a_permalink_made_on_one_replica_opens_on_the_other(cluster):
    db_url, (first, second) = cluster
    made = httpx.post(f"{first}/lens", json=body("Made on the first replica"), timeout=WAIT_S)
    assert made.status_code == 200, made.text
    assert made.headers["X-Future-Lens-Cache"] == "miss"
    grid_id = made.json()["id"]
    opened = httpx.get(f"{second}/g/{grid_id}.json", timeout=WAIT_S)
    assert opened.status_code == 200
    assert opened.content == made.content
    page = httpx.get(f"{second}/g/{grid_id}", timeout=WAIT_S)
    assert page.status_code == 200 and grid_id in page.text
    again = httpx.post(f"{second}/lens", json=body("Made on the first replica"), timeout=WAIT_S)
    assert again.headers["X-Future-Lens-Cache"] == "hit"
    assert again.content == made.content
    assert stored_rows(db_url, grid_id) == 1


def test_replicas_key_ids_with_the_one_secret_kept_in_the_database(cluster):
    db_url, replicas = cluster
    answers = [httpx.post(f"{replica}/lens", json=body(f"Keyed on {replica}"), timeout=WAIT_S) for replica in replicas]
    assert all(answer.status_code == 200 for answer in answers)
    with psycopg.connect(db_url) as connection:
        secrets_ = connection.execute("SELECT value FROM future_lens_meta WHERE name = %s", (SECRET_NAME,)).fetchall()
        requests = [
            connection.execute("SELECT request_json FROM grids WHERE id = %s", (answer.json()["id"],)).fetchone()[0]
            for answer in answers
        ]
    assert len(secrets_) == 1, "the replicas must share one generated secret"
    secret = bytes.fromhex(secrets_[0][0])
    for answer, request_json in zip(answers, requests, strict=True):
        canonical = json.loads(request_json)
        assert answer.json()["id"] == grid_id(canonical, secret) != grid_id(canonical)


@pytest.mark.parametrize("round_", range(3))
def test_an_identical_request_at_both_replicas_at_once_is_computed_once(cluster, round_):
    db_url, replicas = cluster
    request = body(f"Round {round_}. {LONG_TEXT}")
    start = threading.Barrier(len(replicas))
    answers: dict[str, httpx.Response] = {}

    def send(replica: str) -> None:
        with httpx.Client(timeout=WAIT_S) as http:
            start.wait(WAIT_S)
            answers[replica] = http.post(f"{replica}/lens", json=request)

    threads = [threading.Thread(target=send, args=(replica,), daemon=True) for replica in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    assert sorted(answers) == sorted(replicas)
    assert [answer.status_code for answer in answers.values()] == [200, 200], [a.text for a in answers.values()]
    assert sorted(answer.headers["X-Future-Lens-Cache"] for answer in answers.values()) == ["hit", "miss"]
    first, second = answers.values()
    assert first.content == second.content
    assert stored_rows(db_url, first.json()["id"]) == 1
