"""The grid as one nnsight session (future_lens/lens/session.py) gives the engine's grid, in one request.

Every lens is compared with `Lens.grid` on the same tiny model: token ids exactly, probabilities and statistics within
1e-4, every other field of the grid equal. The simulated-remote runs (`RequestMeter`: nnsight serializes the request,
deserializes it with our modules hidden, as NDIF would, and runs it) show the request is self-contained."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from future_lens.lens.grid import Grid
from future_lens.lens.lenses import FixedPromptLens, FutureLens, IdentityPatchscope, Lens, LogitLens
from future_lens.lens.linear import JacobianLens, LinearMaps, TunedLens
from future_lens.lens.models import LoadedModel
from future_lens.lens.prompts import SoftPromptSet
from future_lens.lens.session import RequestMeter, run_session, session_grid, session_plan
from future_lens.lens.source import tokenize
from tests.conftest import words
from tests.test_engine import assert_same, grid_predictions, random_prompts, texts_for
from tests.test_linear_lenses import random_maps

N_FUTURE, TOP_K = 3, 4
#: Lenses by method: how a test builds each on a tiny model (random soft prompts and maps, as the engine tests do).
LENSES: dict[str, Callable[[LoadedModel], Lens]] = {
    "logit": LogitLens,
    "identity": IdentityPatchscope,
    "fixed": lambda model: FixedPromptLens(model, fixed_prompt(model)),
    "future": lambda model: FutureLens(model, random_prompts(model, list(range(model.adapter.n_layers)))),
    "tuned": lambda model: TunedLens(model, residual_maps(model)),
    "jacobian": lambda model: JacobianLens(model, random_maps(model, "jacobian", seed=1)),
}
#: Grid fields that are the computation's own (compared with tolerances, or not at all).
COMPUTED = {"cells", "next_tokens", "continuations", "timings_ms"}


def residual_maps(model: LoadedModel) -> LinearMaps:
    """Random tuned-lens maps in the residual form (`h + Δh + b`), Δ in float16 as a loaded artifact holds it."""
    maps = random_maps(model, "tuned")
    delta = (maps.weight - torch.eye(model.adapter.d_model)).half().float()
    return LinearMaps("tuned", delta, maps.bias, residual=True)


def fixed_prompt(model: LoadedModel) -> str:
    return "Hello! Could you please tell me more about" if model.id == "tiny-llama" else words(5, seed=9)


def token_lists(tokens: list[list]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([[t.id for t in row] for row in tokens]), torch.tensor(
        [[t.prob for t in row] for row in tokens]
    )


def cell_stats(grid: Grid) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Next-token rank, entropy and KL (NaN where absent) of every cell, layer-major."""
    cells = [cell for row in grid.cells for cell in row]
    nan = float("nan")
    return (
        torch.tensor([cell.next_rank for cell in cells]),
        torch.tensor([cell.entropy for cell in cells]),
        torch.tensor([nan if cell.kl is None else cell.kl for cell in cells]),
    )


def assert_same_grid(session: Grid, engine: Grid) -> None:
    """Cells (ids exactly, probabilities and statistics within 1e-4), the model's own next tokens and continuation,
    and every other field equal."""
    assert_same(grid_predictions(session), grid_predictions(engine))
    (s_rank, s_entropy, s_kl), (e_rank, e_entropy, e_kl) = cell_stats(session), cell_stats(engine)
    assert torch.equal(s_rank, e_rank)
    torch.testing.assert_close(s_entropy, e_entropy, atol=1e-4, rtol=0)
    torch.testing.assert_close(s_kl, e_kl, atol=1e-4, rtol=0, equal_nan=True)
    for ours, theirs in ((session.continuations, engine.continuations), ([session.next_tokens], [engine.next_tokens])):
        (our_ids, our_probs), (their_ids, their_probs) = token_lists(ours), token_lists(theirs)
        assert torch.equal(our_ids, their_ids)
        torch.testing.assert_close(our_probs, their_probs, atol=1e-5, rtol=0)
    session_rest = session.model_dump(exclude=COMPUTED)
    assert session_rest == engine.model_dump(exclude=COMPUTED)


@pytest.mark.parametrize("model_name", ["tiny_gptj", "tiny_llama"])
@pytest.mark.parametrize("method", list(LENSES))
def test_session_grid_is_the_engines_grid(request: pytest.FixtureRequest, model_name: str, method: str) -> None:
    model = request.getfixturevalue(model_name)
    lens = LENSES[method](model)
    text = texts_for(model)[0]
    session = session_grid(lens, text, n_future=N_FUTURE, top_k=TOP_K)
    assert session.sessions == 1
    assert_same_grid(session.grid, lens.grid(text, n_future=N_FUTURE, top_k=TOP_K))


@pytest.mark.parametrize("method", list(LENSES))
def test_the_request_is_self_contained(tiny_gptj: LoadedModel, method: str) -> None:
    """Serialized, deserialized without our modules and run (nnsight's local simulation of NDIF): the same grid."""
    lens = LENSES[method](tiny_gptj)
    text = words(5, seed=4)
    meter = RequestMeter(tiny_gptj)
    session = session_grid(lens, text, layers=[0, 2], n_future=2, top_k=TOP_K, meter=meter)
    assert len(meter.sizes) == 1 and session.request_bytes == meter.sizes and meter.sizes[0] > 0
    assert_same_grid(session.grid, lens.grid(text, layers=[0, 2], n_future=2, top_k=TOP_K))


def test_contexts_of_different_lengths_and_small_batches(tiny_gptj: LoadedModel) -> None:
    """Soft prompts of two lengths (two generate groups) split into one-row batches: cells come back in grid order."""
    generator = torch.Generator().manual_seed(3)
    d_model = tiny_gptj.adapter.d_model
    prompts = {layer: torch.randn(length, d_model, generator=generator) for layer, length in ((0, 10), (1, 4), (2, 7))}
    lens = FutureLens(tiny_gptj, SoftPromptSet(None, prompts))
    text = words(6, seed=5)
    n_tokens = len(tokenize(tiny_gptj, text))
    session = session_grid(lens, text, n_future=N_FUTURE, top_k=TOP_K, chunk_rows=n_tokens)
    assert session.traces == 1 + (N_FUTURE - 1) + 3
    assert_same_grid(session.grid, lens.grid(text, n_future=N_FUTURE, top_k=TOP_K))


@pytest.mark.parametrize("method", ["logit", "future", "tuned"])
def test_one_request_per_grid_whatever_the_cells(
    tiny_gptj: LoadedModel, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One session per grid, and the same traces inside it, for 1 layer x 2 tokens as for 3 layers x 12 tokens; the
    traces the model really ran are the ones the plan counts."""
    envoy = tiny_gptj.nnsight
    ran = []
    interleave = type(envoy).interleave

    def counted(self, *args, **kwargs):
        ran.append(1)
        return interleave(self, *args, **kwargs)

    monkeypatch.setattr(type(envoy), "interleave", counted)
    lens = LENSES[method](tiny_gptj)
    counts = []
    for layers, n_words in (([1], 2), (None, 12)):
        meter = RequestMeter(tiny_gptj)
        ran.clear()
        session = session_grid(lens, words(n_words, seed=6), layers=layers, n_future=N_FUTURE, top_k=2, meter=meter)
        assert session.sessions == len(meter.sizes) == 1
        assert len(ran) == session.traces
        counts.append(session.traces)
    n_future = lens.effective_future(N_FUTURE)
    expected = 1 + (n_future - 1) + (1 if method == "future" else 0)
    assert counts == [expected, expected]


def test_no_state_or_distribution_comes_back(tiny_gptj: LoadedModel) -> None:
    """What the session returns is per cell and per token: nothing as wide as the model or the vocabulary."""
    lens = LENSES["future"](tiny_gptj)
    token_ids = tokenize(tiny_gptj, words(5, seed=7))
    plan = session_plan(lens, token_ids, [0, 1, 2], N_FUTURE, TOP_K, chunk_rows=1024)
    results = run_session(tiny_gptj, plan)
    tensors = [value for value in results.values() if isinstance(value, torch.Tensor)] + list(results["stats"])
    wide = {tiny_gptj.adapter.d_model, tiny_gptj.adapter.vocab_size}
    assert tensors and all(not wide & set(tensor.shape) for tensor in tensors)
    per_cell, per_token = 2 * N_FUTURE + 2 * TOP_K + 3, 2 + 2 * N_FUTURE  # cells: ids, probs, top-k, 3 statistics
    n_tokens = len(token_ids)
    assert sum(tensor.numel() for tensor in tensors) == 3 * n_tokens * per_cell + n_tokens * per_token
