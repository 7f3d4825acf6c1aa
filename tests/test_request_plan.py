"""One request, one plan: the text is normalised once (by the request), tokenised once (planning and computing share
the model's remembered token ids), its limits checked against the `Limits` the service was given, not a global."""

from __future__ import annotations

import dataclasses

import pytest

from future_lens.defaults import Limits
from future_lens.service import InvalidRequestError, LensService, parse_request


class CountingTokenizer:
    """The model's tokenizer, counting the calls per text."""

    def __init__(self, tokenizer):
        self.tokenizer, self.calls = tokenizer, {}

    def __call__(self, text, *args, **kwargs):
        self.calls[text] = self.calls.get(text, 0) + 1
        return self.tokenizer(text, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_planning_and_computing_tokenise_the_text_once(tiny_llama) -> None:
    counting = CountingTokenizer(tiny_llama.tokenizer)
    model = dataclasses.replace(tiny_llama, tokenizer=counting, _token_ids=None)
    service = LensService(model)
    request = parse_request(text="w3 w5\r\nw7 w9", method="logit", layers=[0, 1])
    planned = service.plan(request)
    grid = planned.compute()
    assert request.text == "w3 w5\nw7 w9"  # normalised once, by the request
    assert counting.calls == {request.text: 1}
    assert planned.n_tokens == len(grid.tokens) and planned.cells == 2 * len(grid.tokens)


def test_the_services_own_limits_apply(tiny_llama) -> None:
    strict = LensService(tiny_llama, limits=Limits(max_text_tokens=2, max_n_future=2))
    with pytest.raises(InvalidRequestError) as too_long:
        strict.plan(parse_request(text="w3 w5 w7", method="logit", n_future=1))
    assert too_long.value.field == "text" and "limit is 2" in too_long.value.message
    with pytest.raises(InvalidRequestError) as too_many:
        strict.plan(parse_request(text="w3", method="logit", n_future=3))
    assert too_many.value.field == "n_future"
    relaxed = LensService(tiny_llama).plan(parse_request(text="w3 w5 w7", method="logit", n_future=3))
    assert relaxed.n_tokens == len(tiny_llama.token_ids("w3 w5 w7")) > 2


def test_limits_refuse_bounds_below_one() -> None:
    with pytest.raises(ValueError, match="max_top_k"):
        Limits(max_top_k=0)
