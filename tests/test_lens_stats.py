"""Per-cell statistics, the model's own continuation and streamed grids, each against an independent naive
computation (the oracle, `tests/reference.py`: its own states and contexts, no cache, no batching, one cell or
position at a time)."""

from __future__ import annotations

import pytest
import torch

from future_lens.lens.continuation import model_continuations
from future_lens.lens.grid import SCHEMA, Grid
from future_lens.lens.lenses import FixedPromptLens, FutureLens, LogitLens, PatchedContextLens
from future_lens.lens.models import LoadedModel
from future_lens.lens.source import run_source_pass, tokenize
from tests import reference as oracle
from tests.conftest import ALL_ARCHITECTURES, words
from tests.test_engine import oracle_target, random_prompts, texts_for


def naive_stats(lens, text: str, layers: list[int]) -> list[tuple[int, float, float]]:
    """(rank, entropy, KL) of every cell of the grid, layer-major, from the oracle's first-token distributions."""
    model = lens.model
    hidden = oracle.hidden_states(model, text)
    model_probs = oracle.model_next_probs(model, text)
    out = []
    for layer in layers:
        context = (
            oracle.target_context(model, oracle_target(lens), layer) if isinstance(lens, PatchedContextLens) else None
        )
        for t in range(hidden.shape[1]):
            state = hidden[layer, t]
            if context is not None:
                first = oracle.first_probs(model, context, layer, state)
            else:
                first = torch.softmax(oracle.logit_lens_logits(model, state[None])[0].double(), dim=-1)
            next_id = int(model_probs[t].argmax())
            out.append(oracle.first_token_stats(first, model_probs[t], next_id))
    return out


def grid_stats(grid: Grid) -> list[tuple[int, float, float | None]]:
    return [(cell.next_rank, cell.entropy, cell.kl) for row in grid.cells for cell in row]


def assert_stats_match(grid: Grid, naive: list[tuple[int, float, float]], with_kl: bool) -> None:
    got = grid_stats(grid)
    assert len(got) == len(naive)
    assert [g[0] for g in got] == [n[0] for n in naive], "ranks of the actual next token"
    torch.testing.assert_close(
        torch.tensor([g[1] for g in got]), torch.tensor([n[1] for n in naive]).float(), atol=2e-4, rtol=1e-4
    )
    if with_kl:
        torch.testing.assert_close(
            torch.tensor([g[2] for g in got]), torch.tensor([n[2] for n in naive]).float(), atol=2e-4, rtol=1e-4
        )
    else:
        assert all(g[2] is None for g in got)


@pytest.mark.parametrize("tiny_model", ALL_ARCHITECTURES, indirect=True)
def test_future_lens_statistics_match_naive(tiny_model: LoadedModel) -> None:
    layers = list(range(tiny_model.adapter.n_layers))
    lens = FutureLens(tiny_model, random_prompts(tiny_model, layers), chunk_rows=5)
    text = texts_for(tiny_model)[0]
    grid = lens.grid(text, layers=layers, n_future=2, top_k=3)
    assert grid.schema_id == SCHEMA == "future-lens.grid/3"
    assert_stats_match(grid, naive_stats(lens, text, layers), with_kl=True)


def test_fixed_and_logit_statistics_match_naive(tiny_llama: LoadedModel) -> None:
    text = "The cat sat on the mat"
    layers = [0, 1]
    fixed = FixedPromptLens(tiny_llama, "Hello! Could you please tell me more about")
    assert_stats_match(fixed.grid(text, layers=layers, n_future=2), naive_stats(fixed, text, layers), with_kl=True)
    logit = LogitLens(tiny_llama)
    assert_stats_match(logit.grid(text, layers=layers), naive_stats(logit, text, layers), with_kl=False)


def test_statistics_are_sane_on_a_sharp_cell(tiny_gpt2: LoadedModel) -> None:
    """Rank 1 exactly where the first token is the actual next token; entropies within [0, log V]; KL >= 0."""
    lens = FixedPromptLens(tiny_gpt2, words(4, seed=3))
    grid = lens.grid(words(7, seed=8), layers="all", n_future=1, top_k=2)
    vocab = tiny_gpt2.adapter.vocab_size
    for row in grid.cells:
        for cell, actual in zip(row, grid.next_tokens, strict=True):
            assert (cell.next_rank == 1) == (cell.tokens[0].id == actual.id)
            assert 0 <= cell.entropy <= torch.log(torch.tensor(float(vocab))).item() + 1e-4
            assert cell.kl >= -1e-5


@pytest.mark.parametrize("tiny_model", ALL_ARCHITECTURES, indirect=True)
def test_model_continuation_matches_naive(tiny_model: LoadedModel) -> None:
    """Batched (masked rows) or one position at a time (short sliding windows), from its own forward over the text
    or from the source pass's keys/values: the same as the naive decode."""
    for text in texts_for(tiny_model):
        token_ids = tokenize(tiny_model, text)
        naive_ids, naive_probs = oracle.continuation(tiny_model, text, 3)
        source = run_source_pass(tiny_model, token_ids, keep_cache=True)
        assert source.cache is not None and source.cache.get_seq_length() == len(tiny_model.context_prefix + token_ids)
        for ids, probs in [
            model_continuations(tiny_model, token_ids, 3),
            model_continuations(tiny_model, token_ids, 3, source),
        ]:
            assert torch.equal(ids, naive_ids)
            torch.testing.assert_close(probs, naive_probs, atol=1e-4, rtol=0)


def test_grid_continuations_start_with_the_next_tokens(tiny_llama: LoadedModel) -> None:
    grid = FutureLens(tiny_llama, random_prompts(tiny_llama, [0, 1])).grid("Paris is the capital of", n_future=3)
    assert [row[0].id for row in grid.continuations] == [token.id for token in grid.next_tokens]
    assert all(len(row) == 3 for row in grid.continuations)


def test_streamed_grid_equals_the_whole_grid(tiny_llama: LoadedModel) -> None:
    lens = FutureLens(tiny_llama, random_prompts(tiny_llama, [0, 1]))
    text = "Paris is the capital of France and"
    whole = lens.grid(text, layers="all", n_future=3, top_k=4)
    stream = lens.stream(text, layers="all", n_future=3, top_k=4, waves=[[1], [0]])
    head = stream.head()
    assert head.cells == [[], []] and head.tokens == whole.tokens
    assert [[t.id for t in row] for row in head.continuations] == [[t.id for t in row] for row in whole.continuations]
    streamed_probs = torch.tensor([[t.prob for t in row] for row in head.continuations])
    torch.testing.assert_close(streamed_probs, torch.tensor([[t.prob for t in row] for row in whole.continuations]))
    rows = list(stream.rows())
    assert [row.index for row in rows] == [1, 0]
    streamed = stream.grid()
    ids = [[[t.id for t in c.tokens + c.topk] for c in r] for r in streamed.cells]
    assert ids == [[[t.id for t in c.tokens + c.topk] for c in r] for r in whole.cells]
    probs = torch.tensor([[t.prob for t in c.tokens + c.topk] for r in streamed.cells for c in r])
    whole_probs = torch.tensor([[t.prob for t in c.tokens + c.topk] for r in whole.cells for c in r])
    torch.testing.assert_close(probs, whole_probs, atol=1e-5, rtol=0)
    for got, want in zip(grid_stats(streamed), grid_stats(whole), strict=True):
        assert got[0] == want[0]
        assert got[1] == pytest.approx(want[1], abs=1e-5) and got[2] == pytest.approx(want[2], abs=1e-5)


def test_stream_refuses_to_finish_early_and_checks_passes(tiny_llama: LoadedModel) -> None:
    lens = LogitLens(tiny_llama)
    with pytest.raises(ValueError, match="waves"):
        lens.stream("a b", layers="all", waves=[[0]])
    stream = lens.stream("a b", layers="all")
    next(iter(stream.rows()))
    with pytest.raises(RuntimeError, match="rows are computed"):
        stream.grid()
