"""Every registered lens through every door that serves a grid, generated from the lens registry.

For each method (the fixed prompt twice: the paper's and a custom one; plus a toy lens registered only here, to
show that a registration is all a new lens needs) and each door (the page in Chromium, SSE, POST /lens as JSON
and NDJSON, GET /lens, permalink, compare, the four exports, track, the CLI and the notebook client), the grid
that comes out has the cells of the plain `Lens.grid()` of the same request. A door that cannot serve a method
(track for a lens with no first-token distribution) answers a clear 4xx, checked too.

One tiny random Llama (SmolLM2's real tokenizer, saved to disk so the CLI loads it like a user's model), random
soft prompts and linear maps, one short text and two layers keep the matrix fast.
"""

from __future__ import annotations

import html
import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from transformers import AutoTokenizer, LlamaForCausalLM
from typer.testing import CliRunner

from future_lens.export.csv import grid_from_csv
from future_lens.lens.engine import CellPredictions, CellReference
from future_lens.lens.grid import Grid
from future_lens.lens.layers import strided_layers
from future_lens.lens.lenses import Lens
from future_lens.lens.linear import LinearMaps, save_linear_maps
from future_lens.lens.models import LoadedModel, load_model
from future_lens.lens.prompts import PromptArtifactError
from future_lens.lens.registry import LensSpec, lens_spec, lens_specs, registered
from future_lens.server.cli import cli
from future_lens.server.config import Settings
from future_lens.server.web.app import create_app
from future_lens.server.web.ratelimit import model_time_routes
from future_lens.service import InvalidRequestError, LensService, parse_request
from tests.conftest import tiny_llama_config
from tests.server_helpers import serving
from tests.test_browser import Watched, browser  # noqa: F401 (fixture)
from tests.webapp_helpers import random_prompt_dir

TEXT = "Marty McFly from the"
STRIDE = 2  # the page's layer stride: layers 0 and 2 of the tiny model's 3
N_FUTURE = 3
TOP_K = 4
CUSTOM_PROMPT = "Tell me about"
#: Streamed rows share their forwards with other rows: the same tokens, probabilities equal to float noise.
PROB_TOLERANCE = 1e-4


class RawUnembedLens(Lens):
    """A toy lens known only to this test module: the unembedding of the raw state (no final norm)."""

    method = "toy-raw"
    max_future = 1

    @torch.inference_mode()
    def predict(
        self,
        states: torch.Tensor,
        layers: torch.Tensor,
        n_future: int,
        top_k: int,
        reference: CellReference | None = None,
    ) -> CellPredictions:
        logits = self.model.hf.get_output_embeddings()(states.to(self.model.device, self.model.dtype))
        topk_probs, topk_ids = torch.softmax(logits.float(), dim=-1).topk(top_k, dim=-1)
        return CellPredictions(topk_ids[:, :1], topk_probs[:, :1], topk_ids, topk_probs).cpu()


TOY = LensSpec(
    RawUnembedLens,
    label="Toy: raw unembedding",
    description="the unembedding of the state without the final norm (a test lens)",
    build=lambda ctx: RawUnembedLens(ctx.model),
)


@dataclass(frozen=True)
class Case:
    """One method as a request asks for it."""

    method: str
    prompt: str | None = None

    @property
    def id(self) -> str:
        return self.method + ("-custom-prompt" if self.prompt else "")

    def fields(self) -> dict[str, object]:
        """The API request of this case (its layers: the page's stride)."""
        fields = {"text": TEXT, "method": self.method, "n_future": N_FUTURE, "top_k": TOP_K}
        return fields | ({"prompt": self.prompt} if self.prompt else {})


def registry_cases() -> list[Case]:
    """Every registered method (the toy included), and the fixed prompt with a custom prompt."""
    cases = [Case(spec.name) for spec in lens_specs()]
    return cases + [Case(spec.name, CUSTOM_PROMPT) for spec in lens_specs() if spec.takes_prompt]


with registered(TOY):
    CASES = registry_cases()


@pytest.fixture(scope="module", autouse=True)
def toy_registered() -> Iterator[None]:
    with registered(TOY):
        yield


@dataclass
class World:
    """The served app and everything a door needs."""

    base: str
    http: httpx.Client
    app: FastAPI
    service: LensService
    model_dir: Path
    artifacts: Path
    layers: list[int]
    plain: Callable[[Case], Grid]


def tiny_model_dir(directory: Path, tokenizer_dir: Path) -> Path:
    """A 3-block random Llama with SmolLM2's tokenizer, saved as a local HF directory (safetensors)."""
    torch.manual_seed(5)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = tiny_llama_config(len(tokenizer), n_layers=3)
    LlamaForCausalLM(config).save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def fitted_artifacts(directory: Path, model: LoadedModel) -> Path:
    """Random prompts (layers 0 and 2) and random near-identity linear maps, stamped for `model`."""
    random_prompt_dir(directory, model, layers=(0, 2))
    n, d = model.adapter.n_layers, model.adapter.d_model
    generator = torch.Generator().manual_seed(7)
    for kind in ("tuned", "jacobian"):
        weight = torch.eye(d).expand(n, d, d) + 0.3 * torch.randn(n, d, d, generator=generator)
        save_linear_maps(directory, model, LinearMaps(kind, weight, 0.1 * torch.randn(n, d, generator=generator)))
    return directory


@pytest.fixture(scope="module")
def world(tmp_path_factory, embedded_dir) -> Iterator[World]:
    model_dir = tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"), embedded_dir)
    model = load_model(str(model_dir), device="cpu", dtype="float32")
    artifacts = fitted_artifacts(tmp_path_factory.mktemp("artifacts"), model)
    service = LensService(model, artifacts)
    layers = strided_layers(model.adapter.n_layers, STRIDE)
    app = create_app(Settings(db_path=tmp_path_factory.mktemp("db") / "grids.sqlite3"), service=service)
    plain_grids: dict[Case, Grid] = {}

    def plain(case: Case) -> Grid:
        """The plain `Lens.grid()` of the case's request (computed once)."""
        if case not in plain_grids:
            lens = service.lens_for(parse_request(**case.fields()))
            plain_grids[case] = lens.grid(TEXT, layers=layers, n_future=N_FUTURE, top_k=TOP_K)
        return plain_grids[case]

    with serving(app) as base, httpx.Client(base_url=base, timeout=120) as client:
        yield World(base, client, app, service, model_dir, artifacts, layers, plain)


# ---------- comparing cells ----------


def assert_cells(cells: list[list[dict]], plain: Grid) -> None:
    """Document cells (`Grid` JSON) equal the plain grid's: the same token ids, probabilities within float noise."""
    assert len(cells) == len(plain.cells)
    for row, plain_row in zip(cells, plain.cells, strict=True):
        assert len(row) == len(plain_row)
        for cell, expected in zip(row, plain_row, strict=True):
            assert [t["id"] for t in cell["tokens"]] == [t.id for t in expected.tokens]
            assert [t["id"] for t in cell["topk"]] == [t.id for t in expected.topk]
            got = [t["prob"] for t in cell["tokens"] + cell["topk"]]
            want = [t.prob for t in expected.tokens + expected.topk]
            assert got == pytest.approx(want, abs=PROB_TOLERANCE)


def assert_document(document: dict, case: Case, world: World) -> None:
    """A grid document of `case` with the plain grid's cells."""
    plain = world.plain(case)
    assert document["method"] == case.method
    assert document["layers"] == world.layers
    assert document["n_future"] == plain.n_future
    assert document.get("prompt") == plain.prompt
    assert_cells(document["cells"], plain)


def assert_popover_data(data: dict, plain: Grid) -> None:
    """A page's or file's data island (texts and rounded probabilities) shows the plain grid's cells."""
    for row, plain_row in zip(data["cells"], plain.cells, strict=True):
        for cell, expected in zip(row, plain_row, strict=True):
            assert [text for text, _ in cell["t"]] == [t.text for t in expected.tokens]
            assert [p for _, p in cell["t"]] == pytest.approx([t.prob for t in expected.tokens], abs=PROB_TOLERANCE)


def data_island(page: str) -> dict:
    found = re.search(r'<template id="grid-data">(.*?)</template>', page, re.S)
    assert found, "no grid data in the page"
    return json.loads(html.unescape(found.group(1)))


# ---------- the doors ----------


def stored(world: World, case: Case) -> dict:
    """The case's grid through POST /lens (JSON): the document, with its permalink id."""
    answer = world.http.post("/lens", json=case.fields() | {"layers": world.layers})
    assert answer.status_code == 200, answer.text
    return answer.json()


def door_post_json(world: World, case: Case) -> None:
    assert_document(stored(world, case), case, world)


def door_post_ndjson(world: World, case: Case) -> None:
    body = case.fields() | {"layers": world.layers}
    with world.http.stream("POST", "/lens", json=body, headers={"Accept": "application/x-ndjson"}) as answer:
        assert answer.status_code == 200
        lines = [json.loads(line) for line in answer.iter_lines() if line]
    assert all(line.get("kind") != "error" for line in lines), lines[-1]
    assert "schema" in lines[-1], f"the stream ended without the final document: {lines[-1]}"
    if len(lines) > 1:  # computed now: the frame, every row, then the document
        assert lines[0]["kind"] == "head"
        assert sorted(line["row"] for line in lines if line.get("kind") == "row") == list(range(len(world.layers)))
    assert_document(lines[-1], case, world)


def door_get_lens(world: World, case: Case) -> None:
    query = case.fields() | {"layers": ",".join(map(str, world.layers))}
    answer = world.http.get("/lens", params=query)
    assert answer.status_code == 200, answer.text
    assert_document(answer.json(), case, world)


def sse_events(world: World, case: Case) -> list[tuple[str, dict]]:
    """The page's own stream of the case's form: (event, data) to the end."""
    form = {"text": TEXT, "method": case.method, "n_future": N_FUTURE, "stride": STRIDE}
    form |= {"prompt": case.prompt} if case.prompt else {}
    events, name = [], None
    with world.http.stream("GET", "/grid/stream", params=form) as answer:
        assert answer.status_code == 200
        for line in answer.iter_lines():
            if line.startswith("event:"):
                name = line.removeprefix("event:").strip()
            elif line.startswith("data:") and name:
                events.append((name, json.loads(line.removeprefix("data:").strip())))
                if name in ("done", "failed"):
                    break
    return events


def door_sse(world: World, case: Case) -> None:
    events = sse_events(world, case)
    assert events and events[-1][0] == "done", f"the stream ended with {events[-1][0] if events else 'nothing'}"
    permalink = events[-1][1]["permalink"].split("?")[0]  # the page's permalink may carry the form's own N
    answer = world.http.get(permalink + ".json")
    document = answer.json()
    # the page's grid uses the default top-k: compare it with the plain grid of that request
    top_k = document["top_k"]
    plain = world.service.lens_for(parse_request(**case.fields())).grid(
        TEXT, layers=world.layers, n_future=N_FUTURE, top_k=top_k
    )
    assert document["method"] == case.method and document["layers"] == world.layers
    assert_cells(document["cells"], plain)


def door_permalink(world: World, case: Case) -> None:
    document = stored(world, case)
    again = world.http.get(f"/g/{document['id']}.json")
    assert again.status_code == 200 and again.json() == document
    page = world.http.get(f"/g/{document['id']}")
    assert page.status_code == 200
    assert html.escape(lens_spec(case.method).label) in page.text
    assert_popover_data(data_island(page.text), world.plain(case))


def door_compare(world: World, case: Case) -> None:
    other = Case("logit" if case.method != "logit" else "fixed")
    a = stored(world, other)
    form = {"a": a["id"], "text": TEXT, "method": case.method, "n_future": N_FUTURE, "stride": STRIDE}
    form |= {"prompt": case.prompt} if case.prompt else {}
    answer = world.http.post("/compare", data=form, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    path = answer.headers["location"]
    id_a, id_b = path.removeprefix("/compare/").split("/")
    assert id_a == a["id"]
    b = world.http.get(f"/g/{id_b}.json").json()
    plain_b = world.service.lens_for(parse_request(**case.fields())).grid(
        TEXT, layers=world.layers, n_future=N_FUTURE, top_k=b["top_k"]
    )
    assert_cells(b["cells"], plain_b)
    assert world.http.get(path).status_code == 200
    diff = world.http.get(path + ".json").json()
    for row_pair, row in zip(diff["rows"], diff["cells"], strict=True):
        for t, cell in enumerate(row):
            assert cell["prob_a"] == pytest.approx(a["cells"][row_pair["a"]][t]["tokens"][0]["prob"])
            assert cell["prob_b"] == pytest.approx(b["cells"][row_pair["b"]][t]["tokens"][0]["prob"])


def door_svg(world: World, case: Case) -> None:
    document = stored(world, case)
    answer = world.http.get(f"/g/{document['id']}.svg")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("image/svg+xml")
    assert html.escape(lens_spec(case.method).label) in answer.text, "the figure's title names the lens by its label"


def door_png(world: World, case: Case) -> None:
    document = stored(world, case)
    answer = world.http.get(f"/g/{document['id']}.png")
    assert answer.status_code == 200 and answer.content.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(answer.content[16:20], "big"), int.from_bytes(answer.content[20:24], "big")
    assert width > 100 and height > 50


def door_csv(world: World, case: Case) -> None:
    document = stored(world, case)
    answer = world.http.get(f"/g/{document['id']}.csv")
    assert answer.status_code == 200
    grid = grid_from_csv(answer.text, document)
    assert_document(grid.model_dump(mode="json", by_alias=True), case, world)


def door_html(world: World, case: Case) -> None:
    document = stored(world, case)
    answer = world.http.get(f"/g/{document['id']}.html")
    assert answer.status_code == 200
    assert html.escape(lens_spec(case.method).label) in answer.text
    assert_popover_data(data_island(answer.text), world.plain(case))


def door_track(world: World, case: Case) -> None:
    document = stored(world, case)
    token = document["cells"][0][0]["topk"][0]["id"]
    answer = world.http.get(f"/g/{document['id']}/track.json", params={"token": token})
    posted = world.http.post("/lens", json=case.fields() | {"layers": world.layers, "track": [token]})
    if not lens_spec(case.method).tracks:
        for refused in (answer, posted):
            assert refused.status_code == 422, refused.text
            assert refused.json()["field"] in ("token", "track")
        return
    assert answer.status_code == 200, answer.text
    track = answer.json()
    assert posted.status_code == 200 and posted.json()["track"] == track
    (tracked,) = track["tokens"]
    for r, row in enumerate(world.plain(case).cells):
        for t, cell in enumerate(row):
            listed = {alt.id: alt.prob for alt in cell.topk}
            if token in listed:  # the tracked probability is the one the cell lists
                assert tracked["probs"][r][t] == pytest.approx(listed[token], abs=PROB_TOLERANCE)
                assert tracked["ranks"][r][t] == 1 + [alt.id for alt in cell.topk].index(token)


def door_cli(world: World, case: Case) -> None:
    layers = ",".join(map(str, world.layers))
    args = ["grid", TEXT, "--method", case.method, "--layers", layers, "-n", str(N_FUTURE), "--top-k", str(TOP_K)]
    args += ["--prompt-dir", str(world.artifacts), "--model", str(world.model_dir), "--device", "cpu", "--json"]
    args += ["--dtype", "float32", *(["--prompt", case.prompt] if case.prompt else [])]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert_document(json.loads(result.stdout), case, world)


def door_client(world: World, case: Case) -> None:
    from future_lens.client import lens

    fields = {k: v for k, v in case.fields().items() if k != "text"}
    remote = lens(TEXT, server=world.base, layers=world.layers, **fields)
    assert_document(remote.data, case, world)
    local = lens(
        TEXT, layers=world.layers, model=str(world.model_dir), prompt_dir=world.artifacts, device="cpu", **fields
    )
    assert_document(local.data, case, world)


DOORS: dict[str, Callable[[World, Case], None]] = {
    "post-json": door_post_json,
    "post-ndjson": door_post_ndjson,
    "get-lens": door_get_lens,
    "sse": door_sse,
    "permalink": door_permalink,
    "compare": door_compare,
    "svg": door_svg,
    "png": door_png,
    "csv": door_csv,
    "html": door_html,
    "track": door_track,
    "cli": door_cli,
    "client": door_client,
}


@pytest.mark.embedded
@pytest.mark.parametrize("door", list(DOORS))
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_every_lens_through_every_door(world: World, case: Case, door: str) -> None:
    DOORS[door](world, case)


# ---------- the page, in Chromium ----------


@pytest.mark.browser
@pytest.mark.embedded
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_every_lens_through_the_page(world: World, browser, case: Case) -> None:  # noqa: F811 (fixture)
    watched = Watched(browser)
    page = watched.page
    try:
        page.goto(world.base + "/")
        page.select_option("#method", case.method)
        page.fill("#n_future", str(N_FUTURE))
        page.fill("#stride", str(STRIDE))
        if case.prompt:
            page.fill("#prompt", case.prompt)
        page.fill("#text", TEXT)
        page.click("#submit")
        page.wait_for_selector("#result .result[data-grid-id] table.grid", timeout=60_000)  # streamed to the end
        assert "connection to the server was lost" not in page.inner_text("#result")
        grid_id = page.get_attribute("#result .result[data-grid-id]", "data-grid-id")
        document = world.http.get(f"/g/{grid_id}.json").json()
        plain = world.service.lens_for(parse_request(**case.fields())).grid(
            TEXT, layers=world.layers, n_future=N_FUTURE, top_k=document["top_k"]
        )
        assert document["method"] == case.method
        assert_cells(document["cells"], plain)
        island = page.evaluate("document.querySelector('#result template#grid-data').innerHTML")
        assert_popover_data(json.loads(html.unescape(island)), plain)
        assert not watched.problems, watched.problems
    finally:
        watched.close()


# ---------- what the registry feeds ----------


def test_a_registered_lens_appears_in_the_menu_the_schema_and_the_cli(world: World) -> None:
    page = world.http.get("/").text
    assert f'<option value="{TOY.name}"' in page and html.escape(TOY.label) in page
    openapi = world.http.get("/openapi.json").json()
    request_schema = openapi["components"]["schemas"]["GridRequest"]["properties"]["method"]
    assert TOY.name in request_schema["enum"] and TOY.description in request_schema["description"]
    get_lens = openapi["paths"]["/lens"]["get"]["parameters"]
    (method_param,) = [p for p in get_lens if p["name"] == "method"]
    assert TOY.name in method_param["schema"]["enum"]
    help_text = CliRunner().invoke(cli, ["grid", "--help"], terminal_width=200).output
    assert TOY.name in help_text
    assert TOY.name in world.service.available_methods()


def test_an_unregistered_method_is_refused_at_every_door(world: World) -> None:
    body = {"text": TEXT, "method": "no-such-lens"}
    for answer in (world.http.post("/lens", json=body), world.http.get("/lens", params=body)):
        assert answer.status_code == 422 and answer.json()["field"] == "method"
        assert len(answer.content) < 4000
    result = CliRunner().invoke(cli, ["grid", TEXT, "--method", "no-such-lens"])
    assert result.exit_code != 0 and "no-such-lens" in result.output


# ---------- streams never end silently ----------


class HalfwayFailingLens(Lens):
    """A lens whose streamed rows fail after the first wave (its plain grid works): a bug found halfway."""

    method = "toy-failing"
    max_future = 1
    measures_first_token = True

    def predict(self, states, layers, n_future, top_k, reference=None) -> CellPredictions:
        return RawUnembedLens.predict(self, states, layers, n_future, top_k)  # type: ignore[arg-type]

    def predict_waves(self, states, layers, entering, n_future, top_k, reference=None):
        first = True
        for index, members in enumerate(entering):
            if len(members) and not first:
                raise RuntimeError("toy failure halfway through the grid")
            if len(members):
                first = False
                yield [(index, self.predict(states[members], layers[members], n_future, top_k))]


FAILING = LensSpec(
    HalfwayFailingLens,
    label="Toy: fails halfway",
    description="a test lens whose stream fails after its first row",
    build=lambda ctx: HalfwayFailingLens(ctx.model),
)


@pytest.fixture
def failing_lens() -> Iterator[LensSpec]:
    with registered(FAILING) as spec:
        yield spec


@pytest.mark.embedded
def test_a_stream_that_fails_halfway_ends_with_its_cause(world: World, failing_lens: LensSpec) -> None:
    text = "A stream that fails"
    body = {"text": text, "method": failing_lens.name, "layers": [0, 1, 2]}
    with world.http.stream("POST", "/lens", json=body, headers={"Accept": "application/x-ndjson"}) as answer:
        lines = [json.loads(line) for line in answer.iter_lines() if line]
    assert [line["kind"] for line in lines[:2]] == ["head", "row"]  # the first row came, then the failure
    assert lines[-1]["kind"] == "error" and "toy failure halfway" in lines[-1]["message"]
    assert len(json.dumps(lines[-1])) < 4000
    form = {"text": text, "method": failing_lens.name, "n_future": 1, "stride": 1}
    with world.http.stream("GET", "/grid/stream", params=form) as answer:
        events = [line for line in answer.iter_lines() if line.startswith("event:")]
        assert events[-1] == "event: failed"
    # nothing was stored, and the worker takes the next job: the same grid, computed plainly now, is new
    plain = world.http.post("/lens", json=body)
    assert plain.status_code == 200 and plain.headers["X-Future-Lens-Cache"] == "miss"


@pytest.mark.browser
@pytest.mark.embedded
def test_the_page_shows_a_stream_failure(world: World, browser, failing_lens: LensSpec) -> None:  # noqa: F811
    watched = Watched(browser)
    page = watched.page
    try:
        page.goto(world.base + "/")
        page.select_option("#method", failing_lens.name)
        page.fill("#stride", "1")
        page.fill("#text", "The page sees the failure")
        page.click("#submit")
        page.wait_for_selector("#result .form-error", timeout=60_000)
        shown = page.inner_text("#result")
        assert "toy failure halfway" in shown and "connection to the server was lost" not in shown
    finally:
        watched.close()


# ---------- every route that spends model time is rate-limited ----------


def computing_doors(grid_id: str) -> dict[str, tuple[str, str, dict]]:
    """(HTTP method, path, request options) of every door that may run the model."""
    form = {"text": TEXT, "method": "logit", "n_future": 1, "stride": STRIDE}
    return {
        "POST /lens": ("POST", "/lens", {"json": {"text": TEXT, "method": "logit"}}),
        "GET /lens": ("GET", "/lens", {"params": {"text": TEXT, "method": "logit"}}),
        "POST /grid": ("POST", "/grid", {"data": form}),
        "GET /grid/stream": ("GET", "/grid/stream", {"params": form}),
        "POST /compare": ("POST", "/compare", {"data": form | {"a": grid_id}}),
        "GET /g/{grid_id}/track.json": ("GET", f"/g/{grid_id}/track.json", {"params": {"token": 5}}),
        "GET /g/{grid_id}/track.svg": ("GET", f"/g/{grid_id}/track.svg", {"params": {"token": 5}}),
    }


@pytest.mark.embedded
def test_every_route_that_spends_model_time_is_rate_limited(world: World, tmp_path) -> None:
    grid_id = stored(world, Case("logit"))["id"]
    doors = computing_doors(grid_id)
    marked = model_time_routes(world.app.routes)
    assert marked == set(doors), "a route that runs the model must depend on SPENDS_MODEL_TIME, and be tested here"
    settings = Settings(db_path=world.app.state.settings.db_path, rate_limit_per_minute=0.01, rate_limit_burst=1)
    for name, (method, path, options) in doors.items():
        with TestClient(create_app(settings, service=world.service), follow_redirects=False) as client:
            first = client.request(method, path, **options)
            assert first.status_code != 429, name
            second = client.request(method, path, **options)
            assert second.status_code == 429, name
            assert second.json()["field"] == "client" and int(second.headers["Retry-After"]) >= 1
            assert client.get(f"/g/{grid_id}.json").status_code == 200, "lookups are never limited"


# ---------- the one-worker rule ----------


@pytest.mark.embedded
def test_only_the_inference_worker_touches_the_model(world: World) -> None:
    seen: set[str] = set()
    hooks = [
        module.register_forward_pre_hook(lambda *_: seen.add(threading.current_thread().name))
        for module in world.service.model.hf.modules()
    ]
    text = "Only the worker runs the model"
    try:
        for case in (Case("fixed", "A prompt never embedded before"), Case("identity"), Case("tuned")):
            fields = case.fields() | {"text": text, "layers": world.layers}
            document = world.http.post("/lens", json=fields).json()
            world.http.post("/lens", json=fields | {"text": text + " again", "track": [5]})
            world.http.get(f"/g/{document['id']}/track.json", params={"token": 7})
            form = {"text": text + " streamed", "method": case.method, "n_future": 2, "stride": STRIDE}
            sse = world.http.get("/grid/stream", params=form | ({"prompt": case.prompt} if case.prompt else {}))
            assert "event: done" in sse.text
        world.http.get("/")
        world.http.get("/about")
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == {"inference-worker"}, f"the model ran on {sorted(seen)}"


# ---------- artifacts: checked from headers once, failures remembered ----------


def test_a_stale_artifact_is_refused_from_its_header_and_never_read(world: World, tmp_path, monkeypatch) -> None:
    import future_lens.lens.linear as linear

    other = LoadedModel(**{**vars(world.service.model), "fingerprint": "someone-else"})
    save_linear_maps(tmp_path, other, LinearMaps("tuned", torch.eye(64).expand(3, 64, 64), torch.zeros(3, 64)))
    reads: list[str] = []
    opened = linear.safe_open

    class Artifact:
        """A safetensors file that records which tensors are read from it."""

        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def get_tensor(self, name):
            reads.append(name)
            return self.inner.get_tensor(name)

    class Counting:
        def __init__(self, *args, **kwargs):
            self.inner = opened(*args, **kwargs)

        def __enter__(self):
            return Artifact(self.inner.__enter__())

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

    monkeypatch.setattr(linear, "safe_open", Counting)
    service = LensService(world.service.model, tmp_path)
    assert "fingerprint" in (service.problem("tuned") or "")
    for _ in range(3):
        assert "tuned" not in service.available_methods()
        with pytest.raises(InvalidRequestError):
            service.lens_for(parse_request(text=TEXT, method="tuned"))
    assert reads == [], "the tensors of a stale artifact were read"


def test_a_failed_load_is_remembered(world: World) -> None:
    builds: list[int] = []

    class BrokenLens(RawUnembedLens):
        method = "toy-broken"

    def broken(_: object) -> Lens:
        builds.append(1)
        raise PromptArtifactError("the artifact is truncated")

    with registered(LensSpec(BrokenLens, label="broken", description="a lens whose artifact fails", build=broken)):
        service = LensService(world.service.model, world.artifacts)
        for _ in range(3):
            with pytest.raises(InvalidRequestError, match="truncated"):
                service.lens_for(parse_request(text=TEXT, method=BrokenLens.method))
    assert builds == [1], "a failed load was tried again"


# ---------- the registry's other readers ----------


def test_the_docs_table_is_the_registry() -> None:
    import subprocess
    import sys

    with_toy_removed = [spec for spec in lens_specs() if spec.name != TOY.name]
    assert with_toy_removed  # the toy is registered for this module: the docs list the real ones
    shipped = Path(__file__).resolve().parents[1] / "docs" / "lenses.md"
    generated = subprocess.run(
        [sys.executable, "-m", "future_lens.lens.registry"],
        capture_output=True,
        text=True,
        check=True,
        cwd=shipped.parents[1],
    ).stdout
    assert shipped.read_text() == generated, (
        "docs/lenses.md is stale: python -m future_lens.lens.registry > docs/lenses.md"
    )
    for spec in with_toy_removed:
        assert f"`{spec.name}`" in generated and spec.label in generated


def test_a_lens_fact_the_grid_schema_lacks_is_an_error(world: World) -> None:
    class Talkative(RawUnembedLens):
        def describe(self, layers):
            return {"no_such_field": 1}

    with pytest.raises(TypeError, match="no_such_field"):
        Talkative(world.service.model).grid(TEXT, layers=[0])
    tuned = stored(world, Case("tuned"))
    assert tuned["lens_fit"] is not None, "the tuned lens's facts reach the document"
