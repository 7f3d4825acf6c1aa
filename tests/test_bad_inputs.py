"""The bad-input catalogue: every limit and error of the service, each with its status, field and message.

Runs on the embedded model (random soft prompts) so messages name its real layers; nothing here computes a grid.
The table of what was tried and answered goes to tests/artifacts/bad-inputs.md for the issue's closing note.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from future_lens.defaults import DEFAULT_LIMITS
from future_lens.server.config import Settings
from future_lens.server.web.app import create_app
from tests.webapp_helpers import service_with_prompts

pytestmark = pytest.mark.embedded

LIMITS = DEFAULT_LIMITS
ARTIFACT = Path(__file__).parent / "artifacts" / "bad-inputs.md"
FORM = {"text": "hi", "method": "logit", "n_future": "1", "stride": "10"}
FORM_TYPE = "application/x-www-form-urlencoded"
JSON_TYPE = {"content-type": "application/json"}


@dataclass(frozen=True)
class BadInput:
    """One bad request: where it goes, what it sends, and the status and field it must get back."""

    label: str
    status: int
    field: str
    path: str = "/lens"
    method: str = "POST"
    json_body: object = None
    form: dict[str, str] | None = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] | None = None

    @property
    def name(self) -> str:
        """Where it goes and what it is: `POST /lens: empty text`."""
        return f"{self.method} {self.path}: {self.label}"


def post_json(label: str, body: object, status: int, field_: str) -> BadInput:
    return BadInput(label, status, field_, json_body=body)


def post_form(label: str, changes: dict[str, str], field_: str, status: int = 422) -> BadInput:
    return BadInput(label, status, field_, path="/grid", form={**FORM, **changes}, headers={"HX-Request": "true"})


CATALOGUE = [
    post_json(
        f"text over {LIMITS.max_text_chars} characters", {"text": "x" * (LIMITS.max_text_chars + 1)}, 422, "text"
    ),
    post_json(
        f"text over {LIMITS.max_text_tokens} tokens", {"text": "word " * (LIMITS.max_text_tokens + 5)}, 422, "text"
    ),
    post_json("empty text", {"text": ""}, 422, "text"),
    post_json("no text field", {}, 422, "text"),
    post_json("text is a number", {"text": 5}, 422, "text"),
    post_json("n_future 0", {"text": "hi", "n_future": 0}, 422, "n_future"),
    post_json(
        f"n_future {LIMITS.max_n_future + 1}", {"text": "hi", "n_future": LIMITS.max_n_future + 1}, 422, "n_future"
    ),
    post_json('n_future "abc"', {"text": "hi", "n_future": "abc"}, 422, "n_future"),
    post_json("layer 99 (out of range)", {"text": "hi", "layers": "99"}, 422, "layers"),
    post_json("layer -1", {"text": "hi", "layers": [-1]}, 422, "layers"),
    post_json('layers "1-x" (garbage)', {"text": "hi", "layers": "1-x"}, 422, "layers"),
    post_json('layers "::0" (zero step)', {"text": "hi", "layers": "::0"}, 422, "layers"),
    post_json("top_k 0", {"text": "hi", "top_k": 0}, 422, "top_k"),
    post_json("top_k 10^9", {"text": "hi", "top_k": 10**9}, 422, "top_k"),
    post_json(
        f"prompt over {LIMITS.max_prompt_chars} characters",
        {"text": "hi", "method": "fixed", "prompt": "p" * (LIMITS.max_prompt_chars + 1)},
        422,
        "prompt",
    ),
    post_json(
        f"prompt over {LIMITS.max_prompt_tokens} tokens",
        {"text": "hi", "method": "fixed", "prompt": "a b " * LIMITS.max_prompt_tokens},
        422,
        "prompt",
    ),
    post_json("empty prompt", {"text": "hi", "method": "fixed", "prompt": ""}, 422, "prompt"),
    post_json("wrong model name", {"text": "hi", "model": "gpt-j-6b"}, 422, "model"),
    post_json("model name that is a path", {"text": "hi", "model": "../../etc/passwd"}, 422, "model"),
    post_json('unknown method "bogus"', {"text": "hi", "method": "bogus"}, 422, "method"),
    post_json("body is a JSON array", [1, 2], 422, "body"),
    BadInput("malformed JSON", 422, "body", content=b'{"text": ', headers={"content-type": "application/json"}),
    BadInput("lone surrogate \\ud800 in text", 422, "text", content=b'{"text": "a\\ud800b"}', headers=JSON_TYPE),
    BadInput("body not UTF-8", 422, "body", content=b'{"text": "\xff\xfe"}', headers=JSON_TYPE),
    BadInput("JSON sent as text/plain", 422, "body", content=b'{"text": "hi"}', headers={"content-type": "text/plain"}),
    BadInput(
        "form-encoded body",
        422,
        "body",
        content=b"text=hi",
        headers={"content-type": "application/x-www-form-urlencoded"},
    ),
    BadInput(
        f"JSON body over {LIMITS.max_body_bytes} bytes",
        413,
        "body",
        content=json.dumps({"text": "x" * (LIMITS.max_body_bytes + 10)}).encode(),
        headers={"content-type": "application/json"},
    ),
    BadInput("no text", 422, "text", method="GET", params={}),
    BadInput("n_future=abc", 422, "n_future", method="GET", params={"text": "hi", "n_future": "abc"}),
    BadInput("layers=40", 422, "layers", method="GET", params={"text": "hi", "layers": "40"}),
    post_form("empty text", {"text": ""}, "text"),
    post_form(f"text over {LIMITS.max_text_tokens} tokens", {"text": "word " * 100}, "text"),
    post_form("n_future abc", {"n_future": "abc"}, "n_future"),
    post_form("n_future 9", {"n_future": str(LIMITS.max_n_future + 1)}, "n_future"),
    post_form("stride 0", {"stride": "0"}, "stride"),
    post_form("stride two", {"stride": "two"}, "stride"),
    post_form("unknown method", {"method": "bogus"}, "method"),
    post_form(
        f"body over {LIMITS.max_body_bytes} bytes",
        {"text": "x" * (LIMITS.max_body_bytes + 10)},
        "body",
        status=413,
    ),
]


@pytest.fixture(scope="module")
def client(smollm2, tmp_path_factory) -> TestClient:
    service = service_with_prompts(tmp_path_factory.mktemp("prompts"), smollm2)
    return TestClient(create_app(Settings(db_path=tmp_path_factory.mktemp("db") / "grids.sqlite3"), service=service))


@pytest.fixture(scope="module")
def table() -> Iterator[list[tuple[str, int, str, str]]]:
    """Rows (input, status, field, message) collected by the catalogue test, written out at the end."""
    rows: list[tuple[str, int, str, str]] = []
    yield rows
    ARTIFACT.parent.mkdir(exist_ok=True)
    ARTIFACT.write_text(markdown_table(rows), encoding="utf-8")


def markdown_table(rows: list[tuple[str, int, str, str]]) -> str:
    """The catalogue as a markdown table (pipes in messages escaped)."""
    lines = ["| input | status | field | message |", "| --- | --- | --- | --- |"]
    for label, status, field_, message in rows:
        cells = [label, str(status), f"`{field_}`", message]
        lines.append("| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def send(client: TestClient, bad: BadInput):
    """Send one bad request as described."""
    if bad.method == "GET":
        return client.get(bad.path, params=bad.params, headers=bad.headers)
    if bad.form is not None:
        return client.post(bad.path, data=bad.form, headers=bad.headers)
    if bad.content is not None:
        return client.post(bad.path, content=bad.content, headers=bad.headers)
    return client.post(bad.path, json=bad.json_body, headers=bad.headers)


def error_of(response) -> tuple[str, str]:
    """(field, message) from a JSON error body or from the form's inline error fragment."""
    if response.headers["content-type"].startswith("application/json"):
        body = response.json()
        assert body["detail"] == f"{body['field']}: {body['message']}"
        return body["field"], body["message"]
    page = response.text
    assert 'class="form-error"' in page, page[:500]
    field_ = page.split('data-field="', 1)[1].split('"', 1)[0]
    message = page.split("</strong>:", 1)[1].split("</div>", 1)[0].strip()
    return html.unescape(field_), html.unescape(message)


@pytest.mark.parametrize("bad", CATALOGUE, ids=[bad.name for bad in CATALOGUE])
def test_bad_input_gets_its_status_and_field_and_stores_nothing(client, table, bad: BadInput):
    before = client.app.state.store.count()
    response = send(client, bad)
    assert response.status_code == bad.status, response.text[:500]
    field_, message = error_of(response)
    assert field_ == bad.field
    assert message
    if bad.status == 413:
        assert str(LIMITS.max_body_bytes) in message
    assert "Traceback" not in response.text
    assert client.app.state.store.count() == before
    table.append((bad.name, response.status_code, field_, message))


def chunks(payload: bytes, size: int = 8192) -> Iterator[bytes]:
    """The payload in pieces: httpx sends a generator chunked, without Content-Length."""
    for start in range(0, len(payload), size):
        yield payload[start : start + size]


@pytest.mark.parametrize(
    ("path", "payload", "content_type"),
    [
        ("/lens", json.dumps({"text": "x" * (LIMITS.max_body_bytes * 2)}).encode(), "application/json"),
        ("/grid", b"method=logit&stride=10&n_future=1&text=" + b"x" * (LIMITS.max_body_bytes * 2), FORM_TYPE),
    ],
    ids=["json", "form"],
)
def test_chunked_body_over_the_limit_is_413_and_stores_nothing(client, path, payload, content_type):
    before = client.app.state.store.count()
    response = client.post(path, content=chunks(payload), headers={"content-type": content_type})
    assert response.status_code == 413
    body = response.json()
    assert body["field"] == "body"
    assert str(LIMITS.max_body_bytes) in body["message"]
    assert client.app.state.store.count() == before


def test_a_body_of_exactly_the_limit_is_accepted(client):
    """Whitespace padding makes a valid request exactly `max_body_bytes` long: it is computed as usual."""
    request = json.dumps({"text": "Hello there", "method": "logit", "layers": [0, 29], "top_k": 2}).encode()
    padded = request + b" " * (LIMITS.max_body_bytes - len(request))
    assert len(padded) == LIMITS.max_body_bytes
    before = client.app.state.store.count()
    for content in (padded, chunks(padded)):
        response = client.post("/lens", content=content, headers={"content-type": "application/json"})
        assert response.status_code == 200, response.text
        assert response.json()["layers"] == [0, 29]
    assert client.app.state.store.count() == before + 1


def test_booleans_are_not_numbers() -> None:
    """Found by schemathesis: `true` must not pass as N or top_k = 1."""
    from future_lens.service import InvalidRequestError, parse_request

    for name in ("n_future", "top_k"):
        with pytest.raises(InvalidRequestError, match=name):
            parse_request(text="hi", **{name: True})
