"""Fuzzing through the web app and its HTML: arbitrary Unicode to `POST /lens` (JSON, also raw escaped JSON with
lone surrogates) and to the form (`POST /grid`), then the permalink page. Never a 5xx, and no `<script` from the
input ever reaches a page unescaped. A 2-block random Llama (the real tokenizer) keeps each call fast."""

from __future__ import annotations

import json
import re

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from future_lens.server.config import Settings
from future_lens.server.web.app import create_app
from future_lens.service import LensService

PAGE_SCRIPTS = 3  # htmx, lens.js and cells.js: the only <script> elements a full page has
FRAGMENT_SCRIPTS = 0
INJECTIONS = [
    "<script>alert(1)</script>",
    "</textarea><script>alert(1)</script>",
    '"><script src=/x></script>',
    "</template><script>alert(1)</script>",
    "<SCRIPT>alert(1)</SCRIPT>",
    "<img src=x onerror=alert(1)>",
    "&lt;script&gt;",
    "]]><script>",
]
TEXTS = st.one_of(
    st.text(max_size=60),
    st.text(alphabet=st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp"]), max_size=20),  # controls, RTL marks
    st.text(alphabet="👩‍🔬🇫🇷 \u202e\u202d\u2066\u0301e\ufeff\u200b", max_size=30),  # emoji, overrides, combining
    st.builds(lambda char, n: char * n, st.characters(), st.integers(1, 400)),  # very long single "tokens"
)
HOSTILE = st.builds(lambda before, html, after: before + html + after, TEXTS, st.sampled_from(INJECTIONS), TEXTS)
ANY_TEXT = st.one_of(TEXTS, HOSTILE)
METHODS = st.sampled_from(["logit", "fixed"])
#: Pieces of a JSON string literal, written as raw escapes: lone and paired surrogates, NUL, overrides, quotes.
RAW_ESCAPES = ["\\ud800", "\\udfff", "\\udc00", "\\ud83d", "\\ud83d\\ude00", "\\u0000", "\\u202e", '\\"', "\\\\"]
RAW_PIECES = st.one_of(
    st.sampled_from(RAW_ESCAPES),
    st.sampled_from(INJECTIONS).map(lambda text: json.dumps(text)[1:-1]),
    TEXTS.map(lambda text: json.dumps(text)[1:-1]),
)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def client(tiny_llama, tmp_path_factory) -> TestClient:
    db_path = tmp_path_factory.mktemp("db") / "grids.sqlite3"
    return TestClient(create_app(Settings(db_path=db_path), service=LensService(tiny_llama)))


def assert_no_injected_script(html: str, scripts: int) -> None:
    """The page has exactly its own <script> elements: none came from the input."""
    assert len(re.findall(r"<script", html, flags=re.IGNORECASE)) == scripts, html[:2000]
    island = re.search(r'<template id="grid-data">(.*?)</template>', html, re.S)
    if island:
        assert "<" not in island.group(1)


def check_api_answer(client: TestClient, response) -> None:
    """Any answer is a grid (whose page renders safely) or a JSON error naming a field; never a 5xx."""
    assert response.status_code in (200, 422), response.text[:500]
    body = response.json()
    if response.status_code == 422:
        assert body["field"] and body["message"]
        return
    page = client.get(body["permalink"])
    assert page.status_code == 200
    assert_no_injected_script(page.text, PAGE_SCRIPTS)


@FUZZ
@given(text=ANY_TEXT, method=METHODS, n_future=st.integers(1, 3))
def test_json_api_with_any_text(client, text: str, method: str, n_future: int):
    payload = {"text": text, "method": method, "n_future": n_future, "top_k": 3}
    check_api_answer(client, client.post("/lens", json=payload))


@FUZZ
@given(pieces=st.lists(RAW_PIECES, min_size=1, max_size=12), method=METHODS)
def test_json_api_with_raw_escapes_and_lone_surrogates(client, pieces: list[str], method: str):
    body = '{"text": "' + "".join(pieces) + f'", "method": "{method}", "n_future": 2}}'
    response = client.post("/lens", content=body.encode("utf-8"), headers={"content-type": "application/json"})
    check_api_answer(client, response)


@FUZZ
@given(text=ANY_TEXT.filter(lambda text: "\x00" not in text), method=METHODS, htmx=st.booleans())
def test_form_with_any_text(client, text: str, method: str, htmx: bool):
    form = {"text": text, "method": method, "n_future": "2", "stride": "1"}
    headers = {"HX-Request": "true"} if htmx else {}
    response = client.post("/grid", data=form, headers=headers, follow_redirects=True)
    assert response.status_code in (200, 422), response.text[:500]
    assert response.headers["content-type"].startswith("text/html")
    assert_no_injected_script(response.text, FRAGMENT_SCRIPTS if htmx else PAGE_SCRIPTS)


@FUZZ
@given(raw=st.binary(max_size=200))
def test_form_with_raw_undecodable_bytes(client, raw: bytes):
    """Percent-encoded bytes that are not UTF-8 (lone surrogates' encodings, 0xFF...) in the text field."""
    encoded = "".join(f"%{byte:02X}" for byte in raw)
    body = f"method=logit&n_future=1&stride=1&text={encoded}%3Cscript%3E".encode("ascii")
    response = client.post(
        "/grid", content=body, headers={"content-type": "application/x-www-form-urlencoded", "HX-Request": "true"}
    )
    assert response.status_code in (200, 422), response.text[:500]
    assert_no_injected_script(response.text, FRAGMENT_SCRIPTS)
