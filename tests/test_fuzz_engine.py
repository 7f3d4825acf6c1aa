"""Property tests: any Unicode text either becomes a well-formed grid or a clear InvalidRequestError."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from future_lens.defaults import DEFAULT_LIMITS
from future_lens.lens.models import LoadedModel
from future_lens.service import InvalidRequestError, LensService, parse_request

texts = st.one_of(
    st.text(max_size=80),
    st.text(alphabet=st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp"]), max_size=20),  # controls, RTL marks
    st.text(alphabet="👩‍🔬🇫🇷 \u202e\u0301e\ufeff", max_size=30),  # emoji sequences, overrides, combining marks
    st.builds(lambda c, n: c * n, st.characters(), st.integers(1, 300)),  # very long single "tokens"
)


@pytest.fixture(scope="module")
def service(request) -> LensService:
    return LensService(request.getfixturevalue("tiny_llama"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=texts, method=st.sampled_from(["logit", "fixed"]), n_future=st.integers(1, 3))
def test_any_text_gives_a_grid_or_a_named_error(service: LensService, text: str, method: str, n_future: int) -> None:
    try:
        request = parse_request(text=text, method=method, n_future=n_future, layers="all", top_k=3)
        grid = service.compute(request)
    except InvalidRequestError as error:
        assert error.field in {"text", "prompt"}
        return
    model: LoadedModel = service.model
    n_tokens = len(model.tokenizer(text, add_special_tokens=False).input_ids)
    assert 0 < n_tokens <= DEFAULT_LIMITS.max_text_tokens
    assert len(grid.tokens) == n_tokens
    assert len(grid.cells) == model.adapter.n_layers
    for row in grid.cells:
        assert len(row) == n_tokens
        for cell in row:
            assert len(cell.tokens) == (1 if method == "logit" else n_future)
            assert all(0.0 <= t.prob <= 1.0 for t in cell.tokens)
    grid.model_dump_json()  # serialisable, whatever the token text
