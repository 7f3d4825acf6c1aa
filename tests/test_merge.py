"""Merged requests: requests waiting together that differ only in their text are computed in one engine pass, and
each answer is the grid computing its request alone gives (compared cell by cell in the JSON documents), on a tiny
random model and on the embedded model."""

from __future__ import annotations

import json

import pytest

from future_lens.server.store import MemoryGridStore, grid_id
from future_lens.server.web.keeper import GridKeeper, KeptGrid, grid_document_json
from future_lens.server.worker import InferenceWorker
from future_lens.service import GridRequest, LensService, parse_request
from tests.test_concurrency import occupy
from tests.webapp_helpers import random_prompt_dir

#: Probabilities of a merged and a lone computation may differ in float32 rounding (rows are batched differently);
#: token ids, texts and everything else must be equal.
PROB_TOLERANCE = 1e-5
# An entropy sums p·log p over the whole vocabulary (49,152 terms for SmolLM2): float32 summation order alone moves it
# by ~1e-5 nats between batch shapes on some CPUs (seen: 1.3e-5 at 3.93 nats), so it is compared relatively.
ENTROPY_RELATIVE_TOLERANCE = 1e-5
TIMING = "timings_ms"


def merged(service: LensService, requests: list[GridRequest], cap: int = 100_000) -> tuple[list[KeptGrid], int]:
    """Queue every request while the worker is busy, then let it go: (answers in order, worker runs used)."""
    keeper = GridKeeper(service, MemoryGridStore(), InferenceWorker(max_queue=32, max_batch_cost=cap), b"s" * 32)
    release = occupy(keeper.worker)
    tickets = [keeper.lookup_or_submit(request) for request in requests]
    release.set()
    answers = [ticket.result(120) for ticket in tickets]
    runs = keeper.worker.runs - 1  # the occupying job
    keeper.worker.stop()
    return answers, runs


def assert_same_document(merged_json: str, alone_json: str, where: str = "") -> None:
    """Equal JSON documents up to timings, with probabilities equal within `PROB_TOLERANCE`."""
    merged_doc, alone_doc = json.loads(merged_json), json.loads(alone_json)
    merged_doc.pop(TIMING), alone_doc.pop(TIMING)
    assert_same_value(merged_doc, alone_doc, where or "document")


def assert_same_value(merged: object, alone: object, where: str) -> None:
    if isinstance(alone, float) and isinstance(merged, float) and where.endswith(".entropy"):
        assert merged == pytest.approx(alone, abs=PROB_TOLERANCE, rel=ENTROPY_RELATIVE_TOLERANCE), where
    elif isinstance(alone, float) and isinstance(merged, float):
        assert merged == pytest.approx(alone, abs=PROB_TOLERANCE, rel=0), where
    elif isinstance(alone, dict):
        assert isinstance(merged, dict) and merged.keys() == alone.keys(), where
        for key in alone:
            assert_same_value(merged[key], alone[key], f"{where}.{key}")
    elif isinstance(alone, list):
        assert isinstance(merged, list) and len(merged) == len(alone), where
        for index, (m, a) in enumerate(zip(merged, alone, strict=True)):
            assert_same_value(m, a, f"{where}[{index}]")
    else:
        assert merged == alone, where


def assert_merged_equals_alone(service: LensService, requests: list[GridRequest], answers: list[KeptGrid]) -> None:
    for request, answer in zip(requests, answers, strict=True):
        planned = service.plan(request)
        key = grid_id(planned.canonical(), b"s" * 32)
        assert answer.id == key and not answer.cached
        alone = grid_document_json(service.compute(planned), key)  # computed one at a time
        assert_same_document(answer.document_json, alone, request.text)


@pytest.fixture(scope="module")
def tiny_service(tiny_llama, tmp_path_factory) -> LensService:
    return LensService(tiny_llama, prompt_dir=random_prompt_dir(tmp_path_factory.mktemp("p"), tiny_llama, layers=(0,)))


TEXTS = ["The cat sat on the mat", "Hi", "Paris is the capital of France and", "Hi there"]


@pytest.mark.parametrize(
    "fields",
    [
        {"method": "future", "n_future": 3, "top_k": 4},
        {"method": "logit", "top_k": 5, "layers": "1"},
        {"method": "fixed", "n_future": 2, "prompt": "Tell me more about"},
    ],
    ids=lambda fields: fields["method"],
)
def test_merged_requests_equal_requests_computed_alone_on_a_tiny_model(tiny_service, fields) -> None:
    requests = [parse_request(text=text, **fields) for text in TEXTS]
    answers, runs = merged(tiny_service, requests)
    assert runs == 1, "the four requests were not merged into one pass"
    assert_merged_equals_alone(tiny_service, requests, answers)


def test_only_compatible_requests_merge(tiny_service) -> None:
    requests = [
        parse_request(text="one two", n_future=2),
        parse_request(text="three four", n_future=3),  # another N: its own pass
        parse_request(text="five six", n_future=2),
        parse_request(text="seven", n_future=2, layers="0"),  # other layers: its own pass
        parse_request(text="eight nine", n_future=2, top_k=2),  # another top-k: its own pass
    ]
    answers, runs = merged(tiny_service, requests)
    assert runs == 4
    assert_merged_equals_alone(tiny_service, requests, answers)


def test_the_cell_cap_splits_merged_passes(tiny_service) -> None:
    requests = [parse_request(text=text, method="logit") for text in ("a b c", "d e f", "g h i", "j k l")]
    cells = tiny_service.plan(requests[0]).cells  # 2 layers x 3 tokens
    answers, runs = merged(tiny_service, requests, cap=2 * cells)
    assert runs == 2
    assert_merged_equals_alone(tiny_service, requests, answers)


def test_a_merged_grid_is_stored_and_served_again(tiny_service) -> None:
    keeper = GridKeeper(tiny_service, MemoryGridStore(), InferenceWorker(max_batch_cost=1000))
    release = occupy(keeper.worker)
    tickets = [keeper.lookup_or_submit(parse_request(text=text)) for text in TEXTS[:2]]
    release.set()
    first = [ticket.result(60) for ticket in tickets]
    assert keeper.worker.merged == 2 and keeper.store.count() == 2
    again = [keeper.get_or_compute(parse_request(text=text)) for text in TEXTS[:2]]
    assert [a.cached for a in again] == [True, True]
    assert [a.document_json for a in again] == [f.document_json for f in first]
    assert keeper.lookup(first[1].id).document_json == first[1].document_json
    keeper.worker.stop()


@pytest.mark.embedded
def test_merged_requests_equal_requests_computed_alone_on_the_embedded_model(smollm2) -> None:
    service = LensService(smollm2)  # the shipped prompts
    texts = ["The Eiffel Tower is in", "Marty McFly from", "Hello"]
    requests = [parse_request(text=text, n_future=3, layers="::7", top_k=5) for text in texts]
    answers, runs = merged(service, requests)
    assert runs == 1
    assert_merged_equals_alone(service, requests, answers)
