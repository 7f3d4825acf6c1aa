"""Web app API tests (FastAPI TestClient) on the embedded model with random soft prompts: /lens, permalinks,
the store surviving a restart, 422s naming the field, the form fragment, escaping, /about."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from markupsafe import escape

from future_lens.defaults import DEFAULT_LIMITS
from future_lens.lens.lenses import PAPER_FIXED_PROMPT
from future_lens.lens.source import tokenize
from future_lens.server.config import Settings
from future_lens.server.store import is_grid_id
from future_lens.server.web.app import create_app
from future_lens.server.web.render import MIN_BIN_CELLS
from future_lens.server.web.reports import CALIBRATION_N, PLOTS, EvalReport, ReportTable, layer_ranges, report_method
from future_lens.service import LensService
from future_lens.training.metrics import MAX_N
from tests.report_helpers import FIRST_TOKEN_BINS, MEAN_PROB_BINS, PROTOCOL, write_report
from tests.webapp_helpers import PROMPT_LAYERS, random_prompt_dir, service_with_prompts

pytestmark = pytest.mark.embedded

TEXT = "Marty McFly from"
REQUEST = {"text": TEXT, "method": "future", "n_future": 3, "layers": "0,15,29", "top_k": 4}


@pytest.fixture(scope="module")
def service(smollm2, tmp_path_factory) -> LensService:
    return service_with_prompts(tmp_path_factory.mktemp("prompts"), smollm2)


@pytest.fixture(scope="module")
def db_path(tmp_path_factory):
    return tmp_path_factory.mktemp("db") / "grids.sqlite3"


@pytest.fixture(scope="module")
def client(service, db_path) -> TestClient:
    return TestClient(create_app(Settings(db_path=db_path), service=service))


@pytest.fixture(scope="module")
def posted(client):
    """One future-lens grid, computed once for the module."""
    response = client.post("/lens", json=REQUEST)
    assert response.status_code == 200, response.text
    return response


def stored_count(client: TestClient) -> int:
    return client.app.state.store.count()


# ---------- /lens ----------


def test_post_lens_returns_layers_by_tokens_by_n(posted, smollm2):
    grid = posted.json()
    n_tokens = len(tokenize(smollm2, TEXT))
    assert grid["schema"] == "future-lens.grid/3"
    assert grid["method"] == "future"
    assert grid["layers"] == [0, 15, 29]
    assert len(grid["tokens"]) == n_tokens
    assert len(grid["next_tokens"]) == n_tokens
    assert len(grid["cells"]) == 3
    for row in grid["cells"]:
        assert len(row) == n_tokens
        for cell in row:
            assert len(cell["tokens"]) == 3
            assert len(cell["topk"]) == 4
            assert 0.0 <= cell["mean_prob"] <= 1.0
    assert grid["prompt_layers"] == [0, 15, 29]
    assert grid["model"]["fingerprint"] == smollm2.fingerprint
    assert is_grid_id(grid["id"])
    assert grid["permalink"] == f"/g/{grid['id']}"
    assert posted.headers["x-future-lens-cache"] == "miss"


def test_grid_json_states_the_weights_quantisation(posted):
    assert "Q4_1" in posted.json()["model"]["quantization"]


def test_identical_request_is_served_from_the_store(client, posted):
    before = stored_count(client)
    again = client.post("/lens", json=REQUEST)
    assert again.status_code == 200
    assert again.headers["x-future-lens-cache"] == "hit"
    assert again.content == posted.content
    assert stored_count(client) == before


def test_equivalent_requests_share_one_permalink(client):
    """Layers are resolved and N is capped per lens before hashing: `all` == 0..29, logit N=4 == N=1."""
    first = client.post("/lens", json={"text": "Hello", "method": "logit", "layers": "all", "n_future": 4}).json()
    second = client.post("/lens", json={"text": "Hello", "method": "logit", "layers": list(range(30)), "n_future": 1})
    assert second.headers["x-future-lens-cache"] == "hit"
    assert second.json()["id"] == first["id"]
    different = client.post("/lens", json={"text": "Hello!", "method": "logit", "layers": "all"}).json()
    assert different["id"] != first["id"]


def test_get_lens_with_query_matches_post(client):
    query = client.get("/lens", params={"text": "Hi there", "method": "logit", "layers": "0,29", "top_k": 3})
    assert query.status_code == 200, query.text
    body = client.post("/lens", json={"text": "Hi there", "method": "logit", "layers": [0, 29], "top_k": 3})
    assert body.headers["x-future-lens-cache"] == "hit"
    assert body.content == query.content
    assert [len(row) for row in query.json()["cells"]] == [2, 2]


def test_fixed_prompt_grid_records_the_prompt(client):
    response = client.post(
        "/lens", json={"text": "Hi", "method": "fixed", "prompt": "Tell me about", "layers": [5], "n_future": 2}
    )
    assert response.status_code == 200, response.text
    assert response.json()["prompt"] == "Tell me about"


# ---------- permalinks ----------


def test_permalink_json_equals_the_post_result(client, posted):
    grid_id_ = posted.json()["id"]
    stored = client.get(f"/g/{grid_id_}.json")
    assert stored.status_code == 200
    assert stored.headers["content-type"].startswith("application/json")
    assert stored.content == posted.content
    assert stored.json() == posted.json()


def test_permalink_page_renders_the_stored_grid(client, posted):
    grid = posted.json()
    page = client.get(grid["permalink"])
    assert page.status_code == 200
    html = page.text
    assert html.count('class="cell ') == len(grid["layers"]) * len(grid["tokens"])
    assert html.count('class="tok-head"') == len(grid["tokens"])
    assert html.count('class="layer-head"') == len(grid["layers"])
    assert f'data-copy="{grid["permalink"]}"' in html
    assert "Content-Security-Policy" in page.headers
    assert ">\nMarty McFly from</textarea>" in html  # the form shows what was asked


def test_stored_grids_survive_a_new_app_on_the_same_db(service, db_path, posted):
    restarted = TestClient(create_app(Settings(db_path=db_path), service=service))
    grid_id_ = posted.json()["id"]
    again = restarted.get(f"/g/{grid_id_}.json")
    assert again.status_code == 200
    assert again.content == posted.content
    assert restarted.get(f"/g/{grid_id_}").status_code == 200
    hit = restarted.post("/lens", json=REQUEST)
    assert hit.headers["x-future-lens-cache"] == "hit"
    assert hit.content == posted.content


def test_retrained_prompts_get_a_new_id_and_old_links_keep_their_grid(smollm2, db_path, posted, tmp_path):
    retrained = service_with_prompts(tmp_path / "retrained", smollm2, seed=1)
    other = TestClient(create_app(Settings(db_path=db_path), service=retrained))
    fresh = other.post("/lens", json=REQUEST)
    assert fresh.status_code == 200
    assert fresh.json()["id"] != posted.json()["id"]
    assert other.get(f"/g/{posted.json()['id']}.json").content == posted.content


@pytest.mark.parametrize("path", ["/g/aaaaaaaaaaaa", "/g/aaaaaaaaaaaa.json", "/g/..%2Fetc.json", "/g/x"])
def test_unknown_permalinks_are_404(client, path):
    response = client.get(path)
    assert response.status_code == 404
    if path.endswith(".json"):
        assert response.json()["message"]
    if path == "/g/aaaaaaaaaaaa.json":
        assert response.json()["field"] == "id"


# ---------- rejected requests ----------

LIMITS = DEFAULT_LIMITS
BAD_REQUESTS = [
    ({"text": ""}, "text"),
    ({}, "text"),
    ({"text": "x" * (LIMITS.max_text_chars + 1)}, "text"),
    ({"text": "word " * (LIMITS.max_text_tokens + 5)}, "text"),
    ({"text": "hi", "n_future": 0}, "n_future"),
    ({"text": "hi", "n_future": LIMITS.max_n_future + 1}, "n_future"),
    ({"text": "hi", "n_future": "four"}, "n_future"),
    ({"text": "hi", "layers": "99"}, "layers"),
    ({"text": "hi", "layers": "1-x"}, "layers"),
    ({"text": "hi", "layers": [-1]}, "layers"),
    ({"text": "hi", "top_k": 0}, "top_k"),
    ({"text": "hi", "top_k": LIMITS.max_top_k + 1}, "top_k"),
    ({"text": "hi", "method": "bogus"}, "method"),
    ({"text": "hi", "model": "gpt-j-6b"}, "model"),
    ({"text": "hi", "method": "fixed", "prompt": ""}, "prompt"),
    ({"text": "hi", "method": "fixed", "prompt": "p" * (LIMITS.max_prompt_chars + 1)}, "prompt"),
    ([1, 2], "body"),
]


@pytest.mark.parametrize(("payload", "field"), BAD_REQUESTS, ids=[f for _, f in BAD_REQUESTS])
def test_invalid_post_is_422_naming_the_field_and_stores_nothing(client, payload, field):
    before = stored_count(client)
    response = client.post("/lens", json=payload)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["field"] == field
    assert body["message"]
    assert body["detail"].startswith(f"{field}: ")
    assert stored_count(client) == before


def test_malformed_json_is_422_on_body(client):
    response = client.post("/lens", content=b'{"text": ', headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["field"] == "body"


@pytest.mark.parametrize(
    ("params", "field"),
    [({}, "text"), ({"text": "hi", "n_future": "x"}, "n_future"), ({"text": "hi", "layers": "40"}, "layers")],
)
def test_invalid_get_lens_is_422(client, params, field):
    response = client.get("/lens", params=params)
    assert response.status_code == 422
    assert response.json()["field"] == field


def test_future_lens_without_prompts_is_422_on_method(smollm2, tmp_path):
    bare = TestClient(create_app(Settings(db_path=tmp_path / "g.sqlite3"), LensService(smollm2, tmp_path / "none")))
    response = bare.post("/lens", json={"text": "hi", "method": "future"})
    assert response.status_code == 422
    assert response.json()["field"] == "method"
    assert "no trained soft prompts" in response.json()["message"]
    assert bare.app.state.store.count() == 0


# ---------- the page and its form ----------


def test_index_defaults_to_the_future_lens_when_prompts_exist(client):
    page = client.get("/")
    assert page.status_code == 200
    assert '<option value="future" selected>' in page.text
    assert ">\nMarty McFly from</textarea>" in page.text
    assert "Future lens unavailable" not in page.text


def test_index_falls_back_to_the_logit_lens_without_prompts(smollm2, tmp_path):
    bare = TestClient(create_app(Settings(db_path=tmp_path / "g.sqlite3"), LensService(smollm2, tmp_path / "none")))
    page = bare.get("/")
    assert re.search(r'<option value="future"[^>]* disabled[ >]', page.text)
    assert re.search(r'<option value="tuned"[^>]* disabled[ >]', page.text)  # no fitted maps in that folder
    assert re.search(r'<option value="identity"\s*>', page.text)  # training-free: always offered
    assert '<option value="logit" selected>' in page.text
    assert "Future lens unavailable" in page.text
    assert bare.get("/healthz").json()["prompt_layers"] == []


def test_htmx_form_returns_the_grid_fragment_and_pushes_the_permalink(client):
    form = {"text": "One two", "method": "logit", "n_future": "1", "stride": "10"}
    response = client.post("/grid", data=form, headers={"HX-Request": "true"})
    assert response.status_code == 200
    grid_id_ = response.headers["hx-push-url"].removeprefix("/g/")
    assert is_grid_id(grid_id_)
    assert "<html" not in response.text
    stored = client.get(f"/g/{grid_id_}.json").json()
    assert stored["layers"] == [0, 10, 20, 29]
    assert response.text.count('class="cell ') == 4 * len(stored["tokens"])


def test_plain_form_post_redirects_to_the_permalink(client):
    form = {"text": "One two", "method": "logit", "n_future": "1", "stride": "10"}
    response = client.post("/grid", data=form, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/g/")


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"text": "hi", "method": "logit", "n_future": "1", "stride": "0"}, "stride"),
        ({"text": "hi", "method": "logit", "n_future": "1", "stride": "two"}, "stride"),
        ({"text": "hi", "method": "logit", "n_future": "0", "stride": "1"}, "n_future"),
        ({"text": "", "method": "logit", "n_future": "1", "stride": "1"}, "text"),
        (
            {
                "text": "hi",
                "method": "fixed",
                "n_future": "1",
                "stride": "1",
                "prompt": "p" * (LIMITS.max_prompt_chars + 1),
            },
            "prompt",
        ),
    ],
)
def test_invalid_form_shows_the_message_inline(client, form, field):
    before = stored_count(client)
    fragment = client.post("/grid", data=form, headers={"HX-Request": "true"})
    assert fragment.status_code == 422
    assert f'data-field="{field}"' in fragment.text
    page = client.post("/grid", data=form)
    assert page.status_code == 422
    assert f'data-field="{field}"' in page.text and "<textarea" in page.text
    assert stored_count(client) == before


def test_token_text_is_escaped_in_the_page(client):
    text = "<script>alert(1)</script> <img src=x onerror=alert(1)>"
    grid = client.post("/lens", json={"text": text, "method": "logit", "layers": [0, 29]}).json()
    page = client.get(grid["permalink"])
    html = page.text
    assert "<script>alert" not in html
    assert "<img src=x" not in html
    assert html.count("<script") == 3  # htmx, lens.js and cells.js, nothing else
    assert "&lt;" in html
    island = re.search(r'<template id="grid-data">(.*?)</template>', html, re.S).group(1)
    assert "<" not in island
    assert json.loads(island)["tokens"] == [token["text"] for token in grid["tokens"]]
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp


# ---------- token text, line ends and whitespace-only text ----------

LOGIT_LAYERS = [0, 10, 20, 29]  # what the form's stride 10 means on 30 layers


def token_texts(grid: dict) -> list[str]:
    return [token["text"] for token in grid["tokens"]]


def test_crlf_and_lf_give_the_same_tokens_and_permalink_in_api_and_form(client):
    lf = client.post("/lens", json={"text": "One\ntwo\n\nthree", "method": "logit", "layers": LOGIT_LAYERS}).json()
    crlf = client.post("/lens", json={"text": "One\r\ntwo\r\n\r\nthree", "method": "logit", "layers": LOGIT_LAYERS})
    assert crlf.headers["x-future-lens-cache"] == "hit"
    assert crlf.json()["id"] == lf["id"]
    assert "".join(token_texts(lf)) == "One\ntwo\n\nthree"
    form = {"text": "One\r\ntwo\r\n\r\nthree", "method": "logit", "n_future": "1", "stride": "10"}
    fragment = client.post("/grid", data=form, headers={"HX-Request": "true"})
    assert fragment.status_code == 200
    assert fragment.headers["hx-push-url"] == lf["permalink"]


def test_whitespace_only_text_gives_a_grid_in_api_form_and_page(client):
    grid = client.post("/lens", json={"text": "\n\n", "method": "logit", "layers": [0, 29]})
    assert grid.status_code == 200, grid.text
    tokens = grid.json()["tokens"]
    assert "".join(token["text"] for token in tokens) == "\n\n"
    assert all(token["piece"] for token in tokens)
    page = client.get(grid.json()["permalink"])
    assert page.status_code == 200
    header = re.search(r'<th class="tok-head".*?<span class="tok">(.*?)</span></th>', page.text, re.S).group(1)
    assert header == '<span class="ws">↵</span>' * 2
    assert ">\n\n\n</textarea>" in page.text  # the textarea gives back both newlines (HTML drops the first one)
    form = {"text": "\r\n\r\n", "method": "logit", "n_future": "1", "stride": "10"}
    fragment = client.post("/grid", data=form, headers={"HX-Request": "true"})
    assert fragment.status_code == 200, fragment.text[:300]
    assert client.get(fragment.headers["hx-push-url"] + ".json").json()["tokens"] == tokens


def test_split_characters_show_byte_escapes_on_the_page(client, smollm2):
    text = "a 日本語 <b>"
    grid = client.post("/lens", json={"text": text, "method": "logit", "layers": [0, 29]}).json()
    texts = token_texts(grid)
    assert " \\xe6" in texts and not any("�" in t for t in texts)
    assert [token["piece"] for token in grid["tokens"]] == smollm2.tokenizer.convert_ids_to_tokens(
        [token["id"] for token in grid["tokens"]]
    )
    html = client.get(grid["permalink"]).text
    assert '<span class="ws">·</span>\\xe6' in html
    assert "<b>" not in html and "&lt;" in html
    island = re.search(r'<template id="grid-data">(.*?)</template>', html, re.S).group(1)
    assert json.loads(island)["tokens"] == texts


def test_healthz_reports_the_model_and_prompt_layers(client, smollm2):
    health = client.get("/healthz").json()
    assert health["model"] == smollm2.id
    assert health["fingerprint"] == smollm2.fingerprint
    assert health["device"] == "cpu" and health["dtype"] == "float32"
    assert "Q4_1" in health["quantization"]  # the embedded weights are a 4-bit GGUF, and every reader is told
    assert health["prompt_layers"] == list(PROMPT_LAYERS)


def test_openapi_has_lens_examples(client):
    schema = client.get("/openapi.json").json()
    post = schema["paths"]["/lens"]["post"]
    examples = post["requestBody"]["content"]["application/json"]["examples"]
    assert {"future", "logit", "fixed"} <= set(examples)
    assert "422" in post["responses"]
    assert "/g/{grid_id}.json" in schema["paths"]
    assert "/grid" not in schema["paths"]
    assert client.get("/docs").status_code == 200


def test_static_assets_are_served_locally(client):
    htmx = client.get("/static/vendor/htmx.min.js")
    assert htmx.status_code == 200
    assert "htmx" in htmx.text[:200]
    assert client.get("/static/lens.js").status_code == 200


# ---------- /about ----------


def app_with_reports(service: LensService, tmp_path: Path, report: bool = True) -> TestClient:
    """A client whose app reads reports from `tmp_path/reports` (with a current-format report unless told not)."""
    app = create_app(Settings(db_path=tmp_path / "g.sqlite3"), service=service)
    app.state.reports_dir = tmp_path / "reports"
    if report:
        write_report(app.state.reports_dir, service.model.id, service.model.fingerprint, list(PROMPT_LAYERS))
    return TestClient(app)


def esc(text: str) -> str:
    """`text` as the templates write it."""
    return str(escape(text))


def report_json(client: TestClient) -> Path:
    return client.app.state.reports_dir / client.app.state.service.model.id / "eval.json"


def test_about_renders_without_a_report(service, tmp_path):
    client = app_with_reports(service, tmp_path, report=False)
    page = client.get("/about")
    assert page.status_code == 200
    assert "No evaluation report" in page.text
    assert "arxiv.org/abs/2311.04897" in page.text
    for stem in PLOTS:
        assert client.get(f"/about/{stem}.png").status_code == 404


def test_about_shows_the_committed_report(client):
    page = client.get("/about")
    assert page.status_code == 200 and "No evaluation report" not in page.text
    assert client.get("/about/eval.png").headers["content-type"] == "image/png"
    # the committed report is either in the current format (tables) or said to predate it
    assert 'data-table="per_layer"' in page.text or "predates the current format" in page.text


def table_rows(html: str, name: str) -> list[list[str]]:
    """The cell texts of the report table `name` on the page (header row first)."""
    table = html.split(f'data-table="{name}"', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)
    return [re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S) for row in rows]


def test_about_renders_every_report_table_with_its_caption(service, tmp_path):
    client = app_with_reports(service, tmp_path)
    report = json.loads(report_json(client).read_text())
    page = client.get("/about")
    assert page.status_code == 200 and "No evaluation report" not in page.text
    for table in report["tables"]:
        assert f">{esc(table['caption'])}</h3>" in page.text
        assert table_rows(page.text, table["name"]) == [table["columns"], *table["rows"]]
    names = re.findall(r'data-table="([a-z_]+)"', page.text)
    assert names == [table["name"] for table in report["tables"]]  # reading order kept
    per_layer = table_rows(page.text, "per_layer")
    assert [row[0] for row in per_layer[1:]] == [str(layer) for layer in PROMPT_LAYERS]
    assert "predates" not in page.text


def test_about_states_the_reports_facts(service, tmp_path):
    page = app_with_reports(service, tmp_path).get("/about").text
    facts = dict(re.findall(r'<tr><th scope="row">([^<]*)</th><td>([^<]*)</td></tr>', page))
    assert facts["dev examples (held out)"] == "192"
    assert facts["train examples"] == "1600"
    training = "1440 examples per layer · learning rate 0.002 · objective kl(p_original||p_patched), teacher-forced"
    assert facts["prompt training"] == esc(training)
    assert facts["protocol"] == esc(PROTOCOL)
    assert "Q4_1" in facts["weights evaluated"]
    assert facts["layers evaluated"] == "0, 15, 29 (3)"
    assert facts["weights fingerprint"] == f"{service.model.fingerprint} (the served weights)"


def test_about_states_the_served_weights_quantisation(client, smollm2):
    page = client.get("/about").text
    row = re.search(r'<tr><th scope="row">weights</th><td>([^<]*)</td></tr>', page)
    assert row and row.group(1) == esc(smollm2.quantization) and "Q4_1" in row.group(1)
    assert "prompt from layer" in page  # how borrowed rows look, in the method's description


def test_about_shows_and_serves_the_three_plots(service, tmp_path):
    client = app_with_reports(service, tmp_path)
    page = client.get("/about").text
    folder = report_json(client).parent
    for stem in PLOTS:
        assert f'src="/about/{stem}.png"' in page
        plot = client.get(f"/about/{stem}.png")
        assert plot.status_code == 200 and plot.headers["content-type"] == "image/png"
        assert plot.content == (folder / f"{stem}.png").read_bytes()


@pytest.mark.parametrize("path", ["/about/eval.json", "/about/..%2Feval.json", "/about/other.png", "/about/eval.svg"])
def test_about_serves_no_other_file(service, tmp_path, path):
    client = app_with_reports(service, tmp_path)
    (report_json(client).parent / "other.png").write_bytes(b"\x89PNG")
    assert client.get(path).status_code == 404


def test_report_text_is_escaped(service, tmp_path):
    client = app_with_reports(service, tmp_path)
    report = json.loads(report_json(client).read_text())
    report["tables"][0]["caption"] = "<script>alert(1)</script>"
    report["tables"][0]["rows"][0][0] = "<img src=x onerror=alert(1)>"
    report["protocol"] = "<b>bold</b>"
    report_json(client).write_text(json.dumps(report))
    page = client.get("/about").text
    assert "<script>alert(1)" not in page and "<img src=x" not in page and "<b>bold" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;img src=x onerror=alert(1)&gt;" in page


def test_a_report_without_tables_is_said_to_predate_the_format(service, tmp_path):
    client = app_with_reports(service, tmp_path)
    report = json.loads(report_json(client).read_text())
    del report["tables"]
    report_json(client).write_text(json.dumps(report))
    page = client.get("/about")
    assert page.status_code == 200
    assert "predates the current format" in page.text
    assert "data-table=" not in page.text
    assert "1440" in page.text and 'src="/about/eval.png"' in page.text  # facts and plots still shown


@pytest.mark.parametrize(
    ("content", "note"),
    [
        ("{not json", "could not be read"),
        ("[1, 2, 3]", "not a JSON object"),
        ('{"tables": [{"name": "x"}, 7]}', "could not be read and are left out"),
        ('{"tables": "nope"}', "could not be read and are left out"),
    ],
)
def test_a_malformed_report_is_a_note_not_an_error(service, tmp_path, content, note):
    client = app_with_reports(service, tmp_path)
    report_json(client).write_text(content)
    page = client.get("/about")
    assert page.status_code == 200
    assert note in page.text


def test_a_report_on_other_weights_says_so(service, tmp_path):
    client = app_with_reports(service, tmp_path)
    report = json.loads(report_json(client).read_text())
    report["model_fingerprint"] = "0123456789abcdef"
    report_json(client).write_text(json.dumps(report))
    page = client.get("/about").text
    assert "0123456789abcdef (not the served weights)" in page
    assert "may not describe the served weights" in page


def test_report_sections_put_plots_after_their_tables():
    tables = [ReportTable(name, "", [], []) for name in ("headline_free_running", "calibration", "per_layer")]
    report = EvalReport(True, ["eval", "calibration", "learning_curve"], tables)
    assert [(table.name if table else None, plots) for table, plots in report.sections()] == [
        ("headline_free_running", ["eval"]),
        ("calibration", ["calibration"]),
        ("per_layer", []),
        (None, ["learning_curve"]),
    ]
    assert EvalReport(True, ["eval"]).sections() == [(None, ["eval"])]


def test_layer_ranges_are_compact():
    assert layer_ranges([0, 1, 2, 5, 7, 8]) == "0–2, 5, 7–8"
    assert layer_ranges(list(range(30))) == "0–29"
    assert layer_ranges([3]) == "3"


# ---------- the legend's measured calibration ----------


def grid_page(client: TestClient, request: dict) -> str:
    """The permalink page of the grid `request` computes."""
    grid = client.post("/lens", json=request)
    assert grid.status_code == 200, grid.text
    page = client.get(grid.json()["permalink"])
    assert page.status_code == 200
    return page.text


def legend_shares(page: str) -> list[str]:
    return re.findall(r'<span class="share"[^>]*>.*?<span aria-hidden="true">([^<]*)</span></span>', page)


def expected_shares(bins: list[tuple[int, float]]) -> list[str]:
    return [f"{accuracy * 100:.0f}%" if count >= MIN_BIN_CELLS else "–" for count, accuracy in bins]


@pytest.mark.parametrize(
    ("request_", "bins"),
    [
        ({"method": "future", "n_future": 4}, MEAN_PROB_BINS),
        ({"method": "fixed", "n_future": 4}, MEAN_PROB_BINS),
        ({"method": "logit"}, FIRST_TOKEN_BINS),
    ],
)
def test_legend_says_how_often_each_shade_was_right(service, tmp_path, request_, bins):
    client = app_with_reports(service, tmp_path)
    page = grid_page(client, {"text": TEXT, "layers": "0,29", **request_})
    assert "right on held-out text" in page
    assert legend_shares(page) == expected_shares(bins)
    assert legend_shares(page)[:5] == ["4%", "11%", "19%", "27%", "38%"] or bins is FIRST_TOKEN_BINS
    assert legend_shares(page)[-1] == "–"  # 1 or 7 cells: too few to say
    assert f"Second row: of {sum(count for count, _ in bins)} held-out cells" in page


def test_legend_reads_the_report_again_when_it_changes(service, tmp_path):
    client = app_with_reports(service, tmp_path)
    request = {"text": TEXT, "layers": "0,29", "method": "logit"}
    assert legend_shares(grid_page(client, request))[0] == "6%"
    report = json.loads(report_json(client).read_text())
    report["methods"]["logit_lens"]["calibration"]["first_token"]["bins"][0]["accuracy"] = 0.5
    report_json(client).write_text(json.dumps(report))
    os.utime(report_json(client), ns=(1, 1))  # a different mtime whatever the clock's resolution
    assert legend_shares(grid_page(client, request))[0] == "50%"


def test_legend_mentions_a_different_n(service, tmp_path):
    page = grid_page(
        app_with_reports(service, tmp_path), {"text": TEXT, "layers": "0", "method": "future", "n_future": 2}
    )
    assert "N = 4 tokens each" in page and "This grid has N = 2" in page


@pytest.mark.parametrize(
    ("change", "request_"),
    [
        (None, {"method": "fixed", "prompt": "Tell me about"}),  # not the prompt the report measured
        ("no report", {"method": "future"}),
        ("other weights", {"method": "future"}),
        ("no calibration", {"method": "future"}),
        ("short bins", {"method": "future"}),
        ("odd bins", {"method": "future"}),
    ],
)
def test_legend_without_a_matching_measurement_shows_probability_only(service, tmp_path, change, request_):
    client = app_with_reports(service, tmp_path, report=change != "no report")
    if change not in (None, "no report"):
        report = json.loads(report_json(client).read_text())
        if change == "other weights":
            report["model_fingerprint"] = "0123456789abcdef"
        elif change == "no calibration":
            del report["methods"]["learned_prompt"]["calibration"]
        elif change == "short bins":
            report["methods"]["learned_prompt"]["calibration"]["mean_prob"]["bins"] = [{"low": 0}]
        else:
            report["methods"]["learned_prompt"]["calibration"]["mean_prob"]["bins"] = ["x"] * 10
        report_json(client).write_text(json.dumps(report))
    page = grid_page(client, {"text": TEXT, "layers": "0,29", "n_future": 2, **request_})
    assert "mean probability of the N tokens" in page
    assert "right on held-out text" not in page and not legend_shares(page)


def test_calibration_n_is_what_the_evaluation_measures():
    assert CALIBRATION_N == MAX_N + 1


def test_report_method_maps_grids_to_measurements():
    assert report_method("future", None) == ("learned_prompt", "mean_prob")
    assert report_method("fixed", PAPER_FIXED_PROMPT) == ("fixed_prompt", "mean_prob")
    assert report_method("fixed", "Tell me about") is None
    assert report_method("logit", None) == ("logit_lens", "first_token")


# ---------- borrowed prompts ----------


@pytest.fixture(scope="module")
def layer3_client(smollm2, tmp_path_factory) -> TestClient:
    """An app whose only trained prompt is layer 3's: every other layer borrows it."""
    prompts = random_prompt_dir(tmp_path_factory.mktemp("layer3"), smollm2, layers=(3,))
    service = LensService(smollm2, prompt_dir=prompts)
    return TestClient(create_app(Settings(db_path=tmp_path_factory.mktemp("db3") / "g.sqlite3"), service=service))


def test_borrowed_rows_are_grey_and_labelled(layer3_client):
    page = grid_page(layer3_client, {"text": TEXT, "method": "future", "layers": "2,3", "n_future": 1})
    rows = re.findall(
        r"<tr data-row=\"\d+\" class=\"(borrowed)?[^\"]*\">\s*<th class=\"layer-head\" scope=\"row\">(.*?)</th>",
        page,
        re.S,
    )
    assert [(bool(borrowed), head) for borrowed, head in rows] == [
        (True, '<span class="layer-num">2</span><span class="borrowed-label">prompt from layer 3</span>'),
        (False, '<span class="layer-num">3</span>'),
    ]
    assert "grey row: this layer has no trained prompt of its own" in page


def test_rows_with_their_own_prompt_are_not_marked(client, posted):
    page = client.get(posted.json()["permalink"]).text
    assert 'class="borrowed"' not in page and "prompt from layer" not in page
    assert "grey row" not in page
