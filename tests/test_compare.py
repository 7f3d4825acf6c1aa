"""Comparing two grids: the pure diff (future_lens/lens/diff.py) on hand-made grids, checked against an independent
reading of the grids' JSON; and the compare pages and JSON (`/compare/{a}/{b}`, `.json`, `POST /compare`)."""

from __future__ import annotations

import itertools
import json
import re

import pytest
from fastapi.testclient import TestClient

from future_lens.lens.diff import DIFF_SCHEMA, diff_grids, select_rows
from future_lens.lens.grid import Cell, Grid, ModelInfo, TokenProb, TokenText
from future_lens.server.config import Settings
from future_lens.server.web.app import create_app
from tests.webapp_helpers import service_with_prompts

MODEL = ModelInfo(id="m", n_layers=6, d_model=4, dtype="float32", fingerprint="0" * 16)


def token(token_id: int, prob: float = 0.5) -> TokenProb:
    return TokenProb(id=token_id, text=f"<t{token_id}>", piece=f"t{token_id}", prob=prob)


def cell(ids: list[int], first_prob: float) -> Cell:
    tokens = [token(i, first_prob if step == 0 else 0.3) for step, i in enumerate(ids)]
    return Cell(tokens=tokens, mean_prob=sum(t.prob for t in tokens) / len(tokens), topk=tokens[:1])


def grid(text_ids: list[int], layers: list[int], cells: dict[tuple[int, int], Cell], n_future: int = 2) -> Grid:
    """A grid whose cell (layer, t) is `cells[(layer, t)]`, else a default cell (ids t, t+1, …; prob 0.5)."""
    default = {
        (layer, t): cell([t + k for k in range(n_future)], 0.5) for layer in layers for t in range(len(text_ids))
    }
    default.update(cells)
    return Grid(
        model=MODEL,
        method="future",
        n_future=n_future,
        top_k=1,
        tokens=[TokenText(id=i, text=f"<w{i}>", piece=f"w{i}") for i in text_ids],
        layers=layers,
        context_prefix=[],
        next_tokens=[token(i) for i in text_ids],
        cells=[[default[(layer, t)] for t in range(len(text_ids))] for layer in layers],
        timings_ms={},
    )


def expected_differing(doc_a: dict, doc_b: dict, threshold: float) -> set[tuple[int, int]]:
    """(layer, position) of the cells that differ, read straight from the two grids' JSON (the rule of the docs)."""
    steps = min(doc_a["n_future"], doc_b["n_future"])
    width = min(len(doc_a["tokens"]), len(doc_b["tokens"]))
    out = set()
    for layer in set(doc_a["layers"]) & set(doc_b["layers"]):
        row_a, row_b = doc_a["cells"][doc_a["layers"].index(layer)], doc_b["cells"][doc_b["layers"].index(layer)]
        for t in range(width):
            ids_a = [x["id"] for x in row_a[t]["tokens"][:steps]]
            ids_b = [x["id"] for x in row_b[t]["tokens"][:steps]]
            delta = row_b[t]["tokens"][0]["prob"] - row_a[t]["tokens"][0]["prob"]
            if ids_a != ids_b or abs(delta) > threshold:
                out.add((layer, t))
    return out


def differing_of(diff) -> set[tuple[int, int]]:
    return {(diff.rows[r].layer, diff.columns[t].position) for r, t in diff.differing()}


def test_identical_grids_have_no_differing_cell_at_any_threshold() -> None:
    a = grid([1, 2, 3], [0, 2, 4], {})
    for threshold in (0.0, 0.1, 1.0):
        diff = diff_grids(a, a.model_copy(deep=True), threshold)
        assert diff.n_differ == 0 and len(diff.rows) == 3 and len(diff.columns) == 3


def test_a_phrase_difference_marks_the_cell_whatever_the_threshold_and_names_the_step() -> None:
    a = grid([1, 2, 3], [0, 2], {})
    b = grid([1, 2, 3], [0, 2], {(2, 1): cell([1, 99], 0.5)})  # step 1 differs, first-token probability equal
    for threshold in (0.0, 0.5, 1.0):
        diff = diff_grids(a, b, threshold)
        assert diff.differing() == [(1, 1)]
        assert diff.cells[1][1].steps_differ == [1] and diff.cells[1][1].prob_delta == 0


def test_a_probability_change_marks_the_cell_only_beyond_the_threshold() -> None:
    a = grid([1, 2], [0], {(0, 0): cell([0, 1], 0.25)})
    b = grid([1, 2], [0], {(0, 0): cell([0, 1], 0.5)})  # same phrase, first token +0.25 (exact in binary)
    assert diff_grids(a, b, 0.2).differing() == [(0, 0)]
    assert diff_grids(a, b, 0.25).differing() == [], "a change of exactly the threshold is not beyond it"
    assert diff_grids(a, b, 0.3).differing() == []
    assert diff_grids(b, a, 0.2).cells[0][0].prob_delta == -0.25


def test_texts_of_different_lengths_align_from_the_start_and_mark_the_extra_positions() -> None:
    a = grid([1, 2, 3], [0, 1], {})
    b = grid([1, 7, 3, 4, 5], [0, 1], {})
    diff = diff_grids(a, b)
    assert [c.position for c in diff.columns] == [0, 1, 2, 3, 4]
    assert [c.same_token for c in diff.columns] == [True, False, True, False, False]
    assert [c.matched for c in diff.columns] == [True, True, True, False, False]
    assert diff.columns[3].a is None and diff.columns[3].b.id == 4
    assert all(row[3] is None and row[4] is None for row in diff.cells)
    assert all(row[t] is not None for row in diff.cells for t in range(3))


def test_rows_are_the_layers_both_grids_have_and_a_layer_subset_keeps_some() -> None:
    a = grid([1, 2], [0, 2, 4, 5], {})
    b = grid([1, 2], [0, 1, 4, 5], {(5, 0): cell([8, 9], 0.5)})
    diff = diff_grids(a, b)
    assert [(p.layer, p.a, p.b) for p in diff.rows] == [(0, 0, 0), (4, 2, 2), (5, 3, 3)]
    assert diff.a_only_layers == [2] and diff.b_only_layers == [1]
    subset = diff_grids(a, b, layers=[4, 5, 1])
    assert [p.layer for p in subset.rows] == [4, 5] and differing_of(subset) == {(5, 0)}
    assert select_rows(a, [4, 5]).layers == [4, 5] and select_rows(a, [4, 5]).cells == a.cells[2:]


def test_different_n_compares_the_shorter_phrase() -> None:
    a = grid([1, 2], [0], {(0, 1): cell([1, 2, 3, 4], 0.5)}, n_future=4)
    b = grid([1, 2], [0], {(0, 1): cell([1], 0.5)}, n_future=1)
    diff = diff_grids(a, b, 0.1)
    assert diff.compared_steps == 1 and diff.n_differ == 0


def test_threshold_must_be_a_probability_difference() -> None:
    a = grid([1], [0], {})
    for bad in (-0.01, 1.5):
        with pytest.raises(ValueError, match="between 0 and 1"):
            diff_grids(a, a, bad)


def test_the_diff_agrees_with_the_grids_json_on_many_random_grids() -> None:
    """Random changes of phrases and probabilities; the diff is checked against the JSON rule above."""
    import random

    rng = random.Random(0)
    for trial in range(40):
        layers_a = sorted(rng.sample(range(6), 4))
        layers_b = sorted(rng.sample(range(6), 4))
        ids_a = [rng.randrange(5) for _ in range(rng.randint(1, 6))]
        ids_b = [rng.randrange(5) for _ in range(rng.randint(1, 6))]
        changes = {
            (layer, t): cell([rng.randrange(3), rng.randrange(3)], rng.choice([0.1, 0.3, 0.5, 0.55, 0.9]))
            for layer, t in itertools.product(range(6), range(6))
            if rng.random() < 0.5 and t < len(ids_b)
        }
        a, b = grid(ids_a, layers_a, {}), grid(ids_b, layers_b, changes)
        threshold = rng.choice([0.0, 0.05, 0.2, 1.0])
        doc_a, doc_b = (json.loads(g.model_dump_json(by_alias=True)) for g in (a, b))
        diff = diff_grids(Grid.model_validate(doc_a), Grid.model_validate(doc_b), threshold)
        assert differing_of(diff) == expected_differing(doc_a, doc_b, threshold), trial


# ---------- the web: pages and JSON over stored grids ----------

XSS = "<img src=x onerror=alert(1)> said that she"


@pytest.fixture(scope="module")
def client(smollm2, tmp_path_factory) -> TestClient:
    service = service_with_prompts(tmp_path_factory.mktemp("prompts"), smollm2)
    return TestClient(create_app(Settings(db_path=tmp_path_factory.mktemp("db") / "g.sqlite3"), service=service))


def stored(client: TestClient, text: str, **extra: object) -> dict:
    body = {"text": text, "method": "logit", "layers": "0,10,20,29", "top_k": 3, **extra}
    response = client.post("/lens", json=body)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.embedded
def test_compare_json_is_the_diff_of_the_two_stored_documents(client) -> None:
    a = stored(client, "The doctor said that he")
    b = stored(client, "The doctor said that she", layers="0,5,10,29")
    response = client.get(f"/compare/{a['id']}/{b['id']}.json?t=0.05")
    assert response.status_code == 200, response.text
    diff = response.json()
    assert diff["schema"] == DIFF_SCHEMA and diff["threshold"] == 0.05
    assert diff["permalink"] == f"/compare/{a['id']}/{b['id']}"
    assert diff["grids"] == {"a": f"/g/{a['id']}", "b": f"/g/{b['id']}"}
    assert [row["layer"] for row in diff["rows"]] == [0, 10, 29] and diff["a_only_layers"] == [20]
    doc_a, doc_b = (client.get(f"/g/{d['id']}.json").json() for d in (a, b))
    got = {
        (diff["rows"][r]["layer"], t)
        for r, row in enumerate(diff["cells"])
        for t, cell in enumerate(row)
        if cell and cell["differs"]
    }
    assert got == expected_differing(doc_a, doc_b, 0.05) and diff["n_differ"] == len(got)
    subset = client.get(f"/compare/{a['id']}/{b['id']}.json?layers=10-29").json()
    assert [row["layer"] for row in subset["rows"]] == [10, 29]


@pytest.mark.embedded
def test_compare_answers_404_naming_the_missing_grid_and_422_naming_a_bad_parameter(client) -> None:
    a = stored(client, "The doctor said that he")
    missing = "a" * 12
    for path, field in [(f"/compare/{missing}/{a['id']}", "a"), (f"/compare/{a['id']}/{missing}", "b")]:
        response = client.get(path + ".json")
        assert response.status_code == 404 and response.json()["field"] == field
        page = client.get(path)
        assert page.status_code == 404 and "No such grid" in page.text and missing in page.text
    assert client.get(f"/compare/../{a['id']}.json").status_code == 404
    for query, field in [("t=2", "t"), ("t=abc", "t"), ("layers=40", "layers"), ("layers=x", "layers")]:
        response = client.get(f"/compare/{a['id']}/{a['id']}.json?{query}")
        assert response.status_code == 422 and response.json()["field"] == field, query
        page = client.get(f"/compare/{a['id']}/{a['id']}?{query}")
        assert page.status_code == 422 and f'data-field="{field}"' in page.text
    page = client.get(f"/compare/{a['id']}/{a['id']}?view=nope")
    assert page.status_code == 422 and 'data-field="view"' in page.text


@pytest.mark.embedded
def test_compare_pages_escape_token_text_and_mark_exactly_the_differing_cells(client) -> None:
    a = stored(client, "<b>The doctor</b> said that he")
    b = stored(client, XSS)
    page = client.get(f"/compare/{a['id']}/{b['id']}?t=0.2")
    assert page.status_code == 200
    assert "<img src=x" not in page.text and "&lt;img src=x" in page.text and "<b>The" not in page.text
    marked = {
        (int(r), int(c))
        for r, c in re.findall(r'class="cell diff-cell differs"[^>]*data-r="(\d+)" data-c="(\d+)"', page.text)
    }
    doc_a, doc_b = (client.get(f"/g/{d['id']}.json").json() for d in (a, b))
    layers = sorted(set(doc_a["layers"]) & set(doc_b["layers"]))
    assert {(layers[r], c) for r, c in marked} == expected_differing(doc_a, doc_b, 0.2)
    side = client.get(f"/compare/{a['id']}/{b['id']}?view=side&layers=0,29")
    assert side.status_code == 200 and side.text.count('data-pane="') == 2
    assert 'id="grid-data-a"' in side.text and 'id="grid-data-b"' in side.text and "<img src=x" not in side.text
    assert side.text.count('<tr data-row="') == 4, "two rows in each pane"


@pytest.mark.embedded
def test_compare_with_from_a_grid_computes_b_and_opens_the_comparison(client) -> None:
    a = stored(client, "The doctor said that he", layers=None)
    grid_page = client.get(f"/g/{a['id']}")
    assert 'class="compare-with"' in grid_page.text and f'name="a" value="{a["id"]}"' in grid_page.text
    form = {"a": a["id"], "text": "The doctor said that she", "method": "logit", "n_future": "1", "stride": "2"}
    response = client.post("/compare", data=form, follow_redirects=False)
    assert response.status_code == 303
    match = re.fullmatch(rf"/compare/{a['id']}/([a-z2-7]{{12}})", response.headers["location"])
    assert match, response.headers["location"]
    assert client.get(f"/g/{match.group(1)}.json").json()["tokens"][-1]["text"] == " she"
    bad = client.post("/compare", data={**form, "stride": "0"})
    assert bad.status_code == 422 and 'data-field="stride"' in bad.text
    gone = client.post("/compare", data={**form, "a": "b" * 12})
    assert gone.status_code == 404 and 'data-field="a"' in gone.text
