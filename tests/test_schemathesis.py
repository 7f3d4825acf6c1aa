"""schemathesis against the app's own OpenAPI schema, in process (ASGI, no network), on the embedded model.

Every generated request, valid or not, must get no 5xx and a response that matches the schema (status, content
type, headers, body). Bodies and queries that would select much work are narrowed before they are sent (at most
two layers, N ≤ 2, a short text) so each call costs well under a second on a CPU; values that are invalid stay as
generated, so the 422 paths are exercised as generated.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from future_lens.lens.layers import LayerSpecError, parse_layers
from future_lens.server.config import Settings
from future_lens.server.web.app import create_app
from future_lens.service import LensService
from tests.webapp_helpers import service_with_prompts

pytestmark = pytest.mark.embedded

CHEAP_TEXT_CHARS = 12
CHEAP_N_FUTURE = 2
CHEAP_LAYERS = 2
N_LAYERS = 30  # the embedded model's blocks


def cheap_layers(layers: object) -> object:
    """At most two layers: a missing spec (all layers) becomes `[0]`; invalid specs are left to be rejected."""
    if layers is None:
        return [0]
    if isinstance(layers, list):
        return layers[:CHEAP_LAYERS]
    if isinstance(layers, str):
        try:
            return layers if len(parse_layers(layers, N_LAYERS)) <= CHEAP_LAYERS else "0"
        except LayerSpecError:
            return layers
    return layers


def cheap(fields: dict[str, Any]) -> dict[str, Any]:
    """A grid request narrowed to little work (short text, few layers, small N); other fields untouched."""
    narrowed = dict(fields)
    if isinstance(narrowed.get("text"), str):
        narrowed["text"] = narrowed["text"][:CHEAP_TEXT_CHARS]
    if "layers" in narrowed or "text" in narrowed:
        narrowed["layers"] = cheap_layers(narrowed.get("layers"))
    n_future = narrowed.get("n_future")
    if isinstance(n_future, int) and not isinstance(n_future, bool) and n_future > CHEAP_N_FUTURE:
        narrowed["n_future"] = CHEAP_N_FUTURE if n_future <= 8 else n_future
    return narrowed


@pytest.fixture(scope="module")
def service(smollm2, tmp_path_factory) -> LensService:
    return service_with_prompts(tmp_path_factory.mktemp("prompts"), smollm2)


@pytest.fixture
def api_schema(service, tmp_path):
    """A fresh app's schema, loaded from its own /openapi.json, with the narrowing hooks for `/lens`.

    One app per test: schemathesis ends the app's lifespan after each test, which closes its store.
    """
    app = create_app(Settings(db_path=tmp_path / "grids.sqlite3"), service=service)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    # Unknown query parameters are ignored, as HTTP APIs usually do (e.g. a cache-busting `?_=1`), not rejected.
    schema.config.generation.update(allow_extra_parameters=False)

    @schema.hook
    def map_body(_context, body: Any) -> Any:
        return cheap(body) if isinstance(body, dict) else body

    @schema.hook
    def map_query(_context, query: Any) -> Any:
        return cheap(query) if isinstance(query, dict) else query

    return schema


EXPORTS = [("GET", f"/g/{{grid_id}}.{fmt}") for fmt in ("svg", "png", "csv", "html")]
CELL_TOOLS = [("GET", f"/g/{{grid_id}}/{tool}") for tool in ("track.json", "track.svg", "code.py")]
OPERATIONS = [
    ("POST", "/lens"),
    ("GET", "/lens"),
    ("GET", "/g/{grid_id}.json"),
    ("GET", "/healthz"),
    ("GET", "/compare/{id_a}/{id_b}.json"),
    *EXPORTS,
    *CELL_TOOLS,
]
# Nothing schemathesis can make invalid (no input; one string path segment): positive runs only.
POSITIVE_ONLY = {("GET", "/healthz"), ("GET", "/g/{grid_id}.json")}
RUNS = [
    (method, path, mode)
    for method, path in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or (method, path) not in POSITIVE_ONLY
]


def test_every_operation_is_fuzzed(api_schema):
    """The list below covers the whole schema, so a new operation cannot go untested."""
    found = {(operation.method.upper(), operation.path) for operation in map(ok, api_schema.get_all_operations())}
    assert found == set(OPERATIONS)


def ok(result: Any) -> Any:
    """The operation inside schemathesis' Result (an invalid schema fails the test)."""
    return result.ok()


@pytest.mark.parametrize(("method", "path", "mode"), RUNS, ids=[f"{m} {p} {mode.value}" for m, p, mode in RUNS])
def test_api_conforms_to_its_schema_and_never_fails(api_schema, method: str, path: str, mode: GenerationMode):
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=50, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def call(case) -> None:
        if isinstance(case.body, dict) and isinstance(case.body.get("text"), str):
            assert len(case.body["text"]) <= CHEAP_TEXT_CHARS  # the narrowing hooks are in force
        # The schema does not spell out every rule of the service (the layer spec grammar, a whitespace-only
        # text, the limits), so schema-valid data may rightly get a 422: that check is left out, all others run.
        case.call_and_validate(excluded_checks=[positive_data_acceptance])

    call()
