"""Regression tests of issue 23's smaller defects: text normalisation is idempotent, and a stale grid is a 409,
never a 500."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from future_lens.lens.source import normalize_text
from future_lens.server.config import Settings
from future_lens.server.web import api
from future_lens.server.web.app import create_app
from future_lens.server.web.cells import StaleGridError
from future_lens.service import LensService

# ---------- normalize_text ----------

LINE_END_TEXTS = st.text(alphabet=st.sampled_from(["\r", "\n", "a", " ", "é"]), max_size=40)


@given(LINE_END_TEXTS)
@settings(max_examples=300, deadline=None)
def test_normalize_text_is_idempotent(text):
    once = normalize_text(text)
    assert normalize_text(once) == once
    assert "\r\n" not in once


def test_a_run_of_carriage_returns_before_a_line_feed_normalises_once():
    once = normalize_text("a\r\r\nb")
    assert normalize_text(once) == once
    assert once == "a\nb"


def test_lone_carriage_returns_and_plain_line_feeds_are_kept():
    assert normalize_text("a\rb\n\nc\r") == "a\rb\n\nc\r"
    assert normalize_text("a\r\nb\r\n\r\nc\rd\n") == "a\nb\n\nc\rd\n"


# ---------- POST /lens with track on such a text ----------

CR_TEXT = "Marty\r\r\nMcFly from"


@pytest.fixture(scope="module")
def client(tiny_llama, tmp_path_factory) -> TestClient:
    db_path = tmp_path_factory.mktemp("db") / "grids.sqlite3"
    return TestClient(create_app(Settings(db_path=db_path), service=LensService(tiny_llama)))


def test_track_on_a_text_with_cr_cr_lf_answers_200_never_500(client):
    response = client.post("/lens", json={"text": CR_TEXT, "method": "logit", "n_future": 1, "track": [5]})
    assert response.status_code == 200, response.text
    assert response.json()["track"]["tokens"][0]["id"] == 5


def test_a_text_and_its_normalised_form_share_one_permalink(client):
    ids = {
        client.post("/lens", json={"text": text, "method": "logit", "n_future": 1}).json()["id"]
        for text in (CR_TEXT, normalize_text(CR_TEXT), normalize_text(normalize_text(CR_TEXT)))
    }
    assert len(ids) == 1


def test_a_stale_grid_is_a_409_naming_the_id_not_a_500(client, monkeypatch):
    def stale(*_: object, **__: object) -> None:
        raise StaleGridError("this grid was computed with a model or prompts this server no longer serves")

    monkeypatch.setattr(api, "replan", stale)
    response = client.post("/lens", json={"text": "Marty McFly", "method": "logit", "n_future": 1, "track": [5]})
    assert response.status_code == 409, response.text
    body = response.json()
    assert body["field"] == "id"
    assert "no longer serves" in body["message"]
    assert body["detail"] == f"id: {body['message']}"
