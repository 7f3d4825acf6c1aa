"""Bounded input, bounded cost: the largest and the most hostile value of every field every route parses gets a
small 4xx answer, fast, without the process growing (issue 23: `layers: "0-50000000"` once answered a 977 MB 422
after 56 s).

The table of what was sent and how big and slow each answer was goes to tests/artifacts/bounds.md (and the worst
figures to the test output) for the issue's closing note. Runs on a tiny random GPT-J (3 blocks).
"""

from __future__ import annotations

import html
import json
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from fastapi.testclient import TestClient

from future_lens.defaults import DEFAULT_LIMITS
from future_lens.lens.layers import LayerSpecError, max_list_entries, max_spec_chars, parse_layers
from future_lens.server.config import Settings
from future_lens.server.web.app import create_app
from future_lens.server.web.errors import MAX_FIELD_CHARS, first_validation_error
from future_lens.service import GridRequest, LensService
from tests.conftest import words

LIMITS = DEFAULT_LIMITS
ARTIFACT = Path(__file__).parent / "artifacts" / "bounds.md"
MAX_BODY = 4096  # bytes: every error answer below is smaller
SANITY_S = 5.0  # seconds: a generous bound, not a timing test (the worst time is printed)
MAX_RSS_GROWTH_MB = 50
HOSTILE_LAYERS = ["0-50000000", "-50000000-0", "0:50000000:1", "1," * 30_000, "9" * 60_000]
#: The same in a query: the test client refuses URL parts over 64 kB (servers refuse far less), and `,` is `%2C`.
HOSTILE_QUERY_LAYERS = [*HOSTILE_LAYERS[:3], "1," * 12_000, "9" * 60_000]
HUGE_NUMBERS = [10**30, -(10**30), 1e308, "NaN", "9" * 50_000]
FORM = {"text": words(3), "method": "logit", "n_future": "1", "stride": "1"}
HTMX = {"HX-Request": "true"}
BASE = "/g/{id}"


@dataclass(frozen=True)
class Case:
    """One hostile request: where it goes, what it sends, and the field its error must name."""

    label: str
    path: str
    field: str
    method: str = "GET"
    kind: str = "json"  # json: a JSON error body; html: the form's error fragment or page; sse: a `failed` event
    params: object = None
    json_body: object = None
    data: dict[str, str] | None = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    statuses: tuple[int, ...] = (422, 413)

    @property
    def name(self) -> str:
        return f"{self.method} {self.path}: {self.label}"


def short(value: object) -> str:
    """A value as a label: `10^30` for a huge number, the length for a long text."""
    if isinstance(value, int) and abs(value) > 10**6:
        return f"{'-' if value < 0 else ''}10^{len(str(abs(value))) - 1}"
    text = str(value)
    return text if len(text) <= 24 else f"{text[:12]!r}… ({len(text)} chars)"


def fits_a_query(params: dict[str, str]) -> bool:
    """Whether the test client sends these query parameters (it refuses a query over 64 kB)."""
    return len(urlencode(params)) < 65_000


def lens_cases() -> Iterator[Case]:
    """POST /lens (JSON) and GET /lens (query): layers, n_future, top_k, text, prompt, track, model, method."""
    for spec in HOSTILE_LAYERS:
        yield Case(f"layers {short(spec)}", "/lens", "layers", "POST", json_body={"text": "hi", "layers": spec})
    for spec in HOSTILE_QUERY_LAYERS:
        yield Case(f"layers {short(spec)}", "/lens", "layers", params={"text": "hi", "layers": spec})
    yield Case("layers: 100000 ints", "/lens", "body", "POST", json_body={"text": "hi", "layers": [0] * 100_000})
    yield Case("layers: 12000 ints", "/lens", "layers", "POST", json_body={"text": "hi", "layers": [0] * 12_000})
    yield Case("layers: [10^30]", "/lens", "layers", "POST", json_body={"text": "hi", "layers": [10**30]})
    for name in ("n_future", "top_k"):
        for value in HUGE_NUMBERS:
            yield Case(f"{name} {short(value)}", "/lens", name, "POST", json_body={"text": "hi", name: value})
            yield Case(f"{name} {short(value)}", "/lens", name, params={"text": "hi", name: str(value)})
        nan = f'{{"text": "hi", "{name}": NaN}}'.encode()
        yield Case(
            f"{name} NaN literal", "/lens", name, "POST", content=nan, headers={"content-type": "application/json"}
        )
    at_limit = ("w2 " * LIMITS.max_text_chars)[: LIMITS.max_text_chars]  # at the character limit: too many tokens
    for label, text in [
        (f"text at {LIMITS.max_text_chars} chars", at_limit),
        (f"text of {LIMITS.max_text_chars + 1} chars", "x" * (LIMITS.max_text_chars + 1)),
        ("text of 30000 \\r", "\r" * 30_000),
        ("text of 60000 \\r", "\r" * 60_000),
        ("text of 20000 \\r", "\r" * 20_000),
        ("text of 60000 chars", "x" * 60_000),
    ]:
        yield Case(label, "/lens", "text", "POST", json_body={"text": text})
        if fits_a_query({"text": text}):
            yield Case(label, "/lens", "text", params={"text": text})
    for label, prompt in [
        (f"prompt of {LIMITS.max_prompt_chars + 1} chars", "p" * (LIMITS.max_prompt_chars + 1)),
        ("prompt of 60000 chars", "p" * 60_000),
    ]:
        body = {"text": "hi", "method": "fixed", "prompt": prompt}
        yield Case(label, "/lens", "prompt", "POST", json_body=body)
        yield Case(label, "/lens", "prompt", params=body)
    for label, track in [
        ("track: 100000 ids", list(range(100_000))),
        (f"track: {LIMITS.max_track_tokens + 1} ids", list(range(LIMITS.max_track_tokens + 1))),
        ("track: [10^30]", [10**30]),
        ("track: 8 × 10^30", [10**30 + i for i in range(8)]),
    ]:
        yield Case(label, "/lens", "track", "POST", json_body={"text": "hi", "method": "logit", "track": track})
    for name in ("model", "method"):
        yield Case(f"{name} of 30000 chars", "/lens", name, "POST", json_body={"text": "hi", name: "m" * 30_000})
        yield Case(f"{name} of 60000 chars", "/lens", name, params={"text": "hi", name: "m" * 60_000})


def form_cases() -> Iterator[Case]:
    """POST /grid (the form, htmx fragment), GET /grid/stream (SSE) and POST /compare (the form + grid A)."""
    changes = [
        ("stride", "9" * 50_000),
        ("stride", "-" + "9" * 50_000),
        ("stride", "1e308"),
        ("n_future", "9" * 50_000),
        ("n_future", "NaN"),
        ("text", "\r" * 20_000),
        ("text", "x" * 60_000),
        ("method", "m" * 50_000),
        ("prompt", "p" * 50_000),
    ]
    for name, value in changes:
        form = {**FORM, name: value, **({"method": "fixed"} if name == "prompt" else {})}
        label = f"{name} {short(value)}"
        yield Case(label, "/grid", name, "POST", "html", data=form, headers=HTMX)
        yield Case(label, "/grid/stream", name, kind="sse", params=form)
        yield Case(label, "/compare", name, "POST", "html", data={**form, "a": "{id}"})
    yield Case("text of 60000 \\r", "/grid", "body", "POST", "html", data={**FORM, "text": "\r" * 60_000})
    yield Case("a of 50000 chars", "/compare", "a", "POST", "html", data={**FORM, "a": "x" * 50_000}, statuses=(404,))


def export_cases() -> Iterator[Case]:
    """GET /g/{id}.svg|png|csv|html: layers, tokens, scale, chars; and a hostile id."""
    for fmt in ("svg", "png", "csv", "html"):
        path = f"{BASE}.{fmt}"
        for spec in HOSTILE_QUERY_LAYERS:
            yield Case(f"layers {short(spec)}", path, "layers", params={"layers": spec})
        for spec in ("0:99999999", "-99999999:", "1," * 12_000, "0-" + "9" * 60_000):
            yield Case(f"tokens {short(spec)}", path, "tokens", params={"tokens": spec})
        if fmt in ("svg", "png"):
            for value in (10**30, -(10**30), "9" * 50_000, "NaN"):
                yield Case(f"chars {short(value)}", path, "chars", params={"chars": str(value)})
        if fmt == "png":
            for value in (1e308, -1e308, "NaN", "inf", "9" * 50_000):
                yield Case(f"scale {short(value)}", path, "scale", params={"scale": str(value)})
    yield Case("id of 50000 chars", "/g/" + "x" * 50_000 + ".svg", "id", statuses=(404,))


def compare_cases() -> Iterator[Case]:
    """GET /compare/{a}/{b}.json and the page: t, layers, view; and a hostile id."""
    pair = "/compare/{id}/{id}"
    for path, kind in ((f"{pair}.json", "json"), (pair, "html")):
        for value in ("9" * 50_000, "1e308", "-1e308", "NaN", "inf"):
            yield Case(f"t {short(value)}", path, "t", kind=kind, params={"t": value})
        for spec in HOSTILE_QUERY_LAYERS:
            yield Case(f"layers {short(spec)}", path, "layers", kind=kind, params={"layers": spec})
    yield Case("view of 50000 chars", pair, "view", kind="html", params={"view": "v" * 50_000})
    yield Case("b of 50000 chars", "/compare/{id}/" + "x" * 50_000 + ".json", "b", statuses=(404,))


def cell_cases() -> Iterator[Case]:
    """GET /g/{id}/track.json|svg (token, position) and /g/{id}/code.py (layer, position)."""
    for path in (f"{BASE}/track.json", f"{BASE}/track.svg"):
        for value in (10**30, -(10**30), "9" * 50_000, "NaN"):
            yield Case(f"token {short(value)}", path, "token", params={"token": str(value)})
    yield Case("token × 7000", f"{BASE}/track.json", "token", params=[("token", "0")] * 7_000)  # a 56 kB query
    for value in (10**30, "9" * 50_000):
        yield Case(f"position {short(value)}", f"{BASE}/track.svg", "position", params={"token": 5, "position": value})
    for name in ("layer", "position"):
        for value in (10**30, -(10**30), "9" * 50_000, "NaN"):
            params = {"layer": 0, "position": 0, name: str(value)}
            yield Case(f"{name} {short(value)}", f"{BASE}/code.py", name, params=params)


CASES = [*lens_cases(), *form_cases(), *export_cases(), *compare_cases(), *cell_cases()]


@pytest.fixture(scope="module")
def client(tiny_gptj, tmp_path_factory) -> TestClient:
    app = create_app(Settings(db_path=tmp_path_factory.mktemp("db") / "grids.sqlite3"), service=LensService(tiny_gptj))
    return TestClient(app)


@pytest.fixture(scope="module")
def grid_id(client) -> str:
    """A stored grid for the /g/{id} and /compare routes; every route is visited once so later RSS is steady."""
    response = client.post("/lens", json={"text": words(5), "method": "logit", "top_k": 3})
    assert response.status_code == 200, response.text
    stored = response.json()["id"]
    for path in (
        ".svg",
        ".png",
        ".csv",
        ".html",
        "/track.json?token=5",
        "/track.svg?token=5",
        "/code.py?layer=0&position=0",
    ):
        assert client.get(f"/g/{stored}{path}").status_code == 200, path
    for path in (f"/compare/{stored}/{stored}", f"/compare/{stored}/{stored}.json"):
        assert client.get(path).status_code == 200, path
    assert client.post("/grid", data={**FORM, "stride": "x"}, headers=HTMX).status_code == 422
    assert client.post("/compare", data={**FORM, "stride": "x", "a": stored}).status_code == 422
    assert "event: failed" in client.get("/grid/stream", params={**FORM, "stride": "x"}).text
    return stored


@dataclass
class Answer:
    """What one case got back (checked later, each case in its own test)."""

    case: Case
    response: Any  # the test client's response
    seconds: float

    @property
    def status(self) -> int:
        return self.response.status_code

    @property
    def size(self) -> int:
        return len(self.response.content)


def sse_failed(text: str) -> dict:
    """The data of the stream's one `failed` event (the stream is nothing else)."""
    events = [block for block in text.replace("\r\n", "\n").split("\n\n") if block.strip()]
    assert len(events) == 1, text[:500]
    lines = dict(line.split(": ", 1) for line in events[0].splitlines() if ": " in line)
    assert lines.get("event") == "failed", events[0][:500]
    return json.loads(lines["data"])


def error_of(case: Case, response) -> tuple[str | None, str]:
    """(field, message) of an error answer, whatever its kind (a 413 is always the JSON shape)."""
    if response.headers["content-type"].startswith("application/json"):
        body = response.json()
        assert body["detail"] == (f"{body['field']}: {body['message']}" if body["field"] else body["message"])
        return body["field"], body["message"]
    if case.kind == "sse":
        data = sse_failed(response.text)
        return data["field"], data["html"]
    page = response.text
    assert case.kind == "html" and 'class="form-error"' in page, page[:500]
    field_ = page.split('data-field="', 1)[1].split('"', 1)[0]
    message = page.split("</strong>:", 1)[1].split("</div>", 1)[0].strip()
    return html.unescape(field_), html.unescape(message)


def send(client: TestClient, case: Case, grid_id: str) -> Answer:
    """Send one case (`{id}` in its path or form is the stored grid)."""
    data = None if case.data is None else {k: v.replace("{id}", grid_id) for k, v in case.data.items()}
    start = time.perf_counter()
    response = client.request(
        case.method,
        case.path.replace("{id}", grid_id),
        params=case.params,  # type: ignore[arg-type]
        json=case.json_body,
        data=data,
        content=case.content,
        headers=case.headers,
    )
    return Answer(case, response, time.perf_counter() - start)


def check(answer: Answer) -> None:
    """A 4xx (a stream with one `failed` event), small, fast, naming the field (`body` when the body limit answered
    first)."""
    case, response = answer.case, answer.response
    if case.kind == "sse":
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    else:
        assert response.status_code in case.statuses, response.text[:500]
    assert answer.size < MAX_BODY, f"{case.name}: {answer.size} bytes"
    assert answer.seconds < SANITY_S, f"{case.name}: {answer.seconds:.1f} s"
    field_, message = error_of(case, response)
    assert field_ == ("body" if answer.status == 413 else case.field), (case.name, field_, message)
    assert message and "Traceback" not in response.text


@dataclass(frozen=True)
class Run:
    """Every case's answer, in order, and the process's peak RSS (kB) before and after sending them all."""

    answers: list[Answer]
    rss_before_kb: int
    rss_after_kb: int

    def summary(self) -> str:
        slowest = max(self.answers, key=lambda a: a.seconds)
        largest = max(self.answers, key=lambda a: a.size)
        return (
            f"{len(self.answers)} hostile requests; peak RSS {self.rss_before_kb / 1024:.0f} → "
            f"{self.rss_after_kb / 1024:.0f} MB; slowest {slowest.seconds * 1000:.0f} ms ({slowest.case.name[:80]}); "
            f"largest answer {largest.size} bytes ({largest.case.name[:80]})"
        )


@pytest.fixture(scope="module")
def run(client, grid_id) -> Run:
    """Every case sent once, in a row; the table written to ARTIFACT."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    answers = [send(client, case, grid_id) for case in CASES]
    result = Run(answers, before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    lines = [result.summary(), "", "| request | status | bytes | ms |", "| --- | --- | --- | --- |"]
    for a in answers:
        cells = [a.case.name[:100], str(a.status), str(a.size), f"{a.seconds * 1000:.1f}"]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    ARTIFACT.parent.mkdir(exist_ok=True)
    ARTIFACT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return result


def test_the_whole_hostile_set_keeps_the_peak_rss(run, capsys):
    """All cases in a row: the process's peak RSS does not jump (the old layer parser took gigabytes)."""
    with capsys.disabled():
        print(f"\n[bounds] {run.summary()}")
    assert (run.rss_after_kb - run.rss_before_kb) / 1024 < MAX_RSS_GROWTH_MB


@pytest.mark.parametrize("index", range(len(CASES)), ids=[case.name[:90] for case in CASES])
def test_hostile_value_gets_a_small_fast_error_naming_the_field(run, index):
    check(run.answers[index])


@pytest.mark.skipif(GridRequest.model_config.get("extra") != "forbid", reason="GridRequest does not forbid extras yet")
def test_an_unknown_field_with_a_huge_name_is_named_briefly(client):
    key = "k" * 30_000
    response = client.post("/lens", json={"text": "hi", key: 1})
    assert response.status_code == 422
    assert len(response.content) < MAX_BODY
    body = response.json()
    assert body["field"].startswith("kkk") and len(body["field"]) <= MAX_FIELD_CHARS
    assert body["message"].startswith("unknown field; the fields are text, method")


def test_extra_forbidden_errors_name_the_key_and_the_fields():
    from pydantic import BaseModel, ConfigDict, ValidationError

    class Strict(BaseModel):
        model_config = ConfigDict(extra="forbid")
        text: str
        n_future: int = 4

    with pytest.raises(ValidationError) as error:
        Strict(text="hi", **{"x" * 30_000: 1})
    errors = [{**e, "loc": ("body", *e["loc"])} for e in error.value.errors()]
    field_, message = first_validation_error(errors, Strict)
    assert field_.startswith("xxx") and len(field_) <= MAX_FIELD_CHARS
    assert message == "unknown field; the fields are text, n_future"
    assert first_validation_error(errors)[1] == "unknown field"


# ---------- the layer parser itself ----------


def test_a_huge_range_is_refused_at_once_with_a_short_message():
    start = time.perf_counter()
    with pytest.raises(LayerSpecError) as error:
        parse_layers("0-50000000", 30)
    assert time.perf_counter() - start < 1.0
    assert str(error.value) == "layers 30..50000000 do not exist: the model has blocks 0..29"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("-50000000-0", "layer -50000000 does not exist: the model has blocks 0..29"),
        ("0:50000000:1", "stop 50000000 is outside -30..30"),
        ("30", "layer 30 does not exist"),
        ("-1", "layer -1 does not exist"),
        ([10**30], "layer 10000000000000000000… does not exist"),
        ([10**5000], "layer ≈2^16609 does not exist"),
        ("1," * 30_000, f"layer spec has 60000 characters; the limit is {max_spec_chars(30)}"),
        ("0-" + "9" * 100, "is far outside blocks 0..29"),
        ([0] * 100_000, f"at most {max_list_entries(30)} entries"),
        ("x" * 200, "bad layer spec 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx…'"),
        ("1:2:3:4", "bad slice '1:2:3:4'"),
        ("5-2", "bad range '5-2': 5 > 2"),
        ("::0", "step must not be 0"),
    ],
)
def test_bad_specs_get_short_messages(spec, message):
    with pytest.raises(LayerSpecError) as error:
        parse_layers(spec, 30)
    assert message in str(error.value)
    assert len(str(error.value)) < 200


def test_a_list_spec_is_read_no_further_than_its_bound():
    endless = iter(lambda: 0, 1)  # never ends
    with pytest.raises(LayerSpecError, match="too long"):
        parse_layers(endless, 30)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("all", list(range(30))),
        ("0-29", list(range(30))),
        ("::3", list(range(0, 30, 3))),
        ("10:", list(range(10, 30))),
        ("0-5,20:30:2", [0, 1, 2, 3, 4, 5, 20, 22, 24, 26, 28]),
        ("-3:", [27, 28, 29]),
        ("0 - 2 ,\t29", [0, 1, 2, 29]),
        ("0:30", list(range(30))),
        ("5:2,7", [7]),
        ([29, 0, 0], [0, 29]),
        (range(3), [0, 1, 2]),
    ],
)
def test_valid_specs_parse_as_before(spec, expected):
    assert parse_layers(spec, 30) == expected
