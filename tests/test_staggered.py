"""Staggered decoding (waves entering one running decode) must give what the naive per-cell oracle gives
(`tests/reference.py`: its own states and contexts)."""

from __future__ import annotations

import pytest
import torch

from future_lens.lens.architectures import attention_window
from future_lens.lens.engine import CellPredictions, CellReference, PatchedCells
from future_lens.lens.grid import first_rows, stream_waves
from future_lens.lens.interventions import on_block_outputs
from future_lens.lens.lenses import FixedPromptLens, FutureLens, LogitLens
from future_lens.lens.models import LoadedModel
from future_lens.lens.source import run_source_pass, tokenize
from future_lens.lens.staggered import can_stagger, decode_staggered
from tests import reference as oracle
from tests.conftest import ALL_ARCHITECTURES, words
from tests.test_engine import assert_same, grid_predictions, naive_grid_cells, random_prompts, texts_for


def grid_cells(lens: FutureLens | FixedPromptLens, text: str, layers: list[int]):
    """Every (layer, token) cell of `text`, layer-major: the engine's cells (from its own source pass and lens), their
    context keys and the statistics reference."""
    model = lens.model
    source = run_source_pass(model, tokenize(model, text))
    pairs = [(layer, t) for layer in layers for t in range(len(source.token_ids))]
    states = torch.stack([source.hidden[layer, t] for layer, t in pairs])
    layer_ids = torch.tensor([layer for layer, _ in pairs])
    reference = CellReference(source.next_log_probs, source.next_token_ids, torch.tensor([t for _, t in pairs]))
    cells, keys = lens.patched_cells(states, layer_ids, reference)
    return cells, keys, reference


def waves_of(n_cells: int, sizes_at: dict[int, int]) -> list[torch.Tensor]:
    """Cell indices 0.. split in order into waves: `sizes_at[k]` cells entering at forward k (others empty)."""
    entering, start = [], 0
    for k in range(max(sizes_at) + 1):
        size = sizes_at.get(k, 0)
        entering.append(torch.arange(start, min(start + size, n_cells)))
        start += size
    assert start >= n_cells
    return entering


def collect(steps) -> tuple[dict[int, CellPredictions], list[list[int]]]:
    """The predictions of every wave, and which waves each step finished."""
    by_wave, finished_at = {}, []
    for finished in steps:
        finished_at.append([index for index, _ in finished])
        by_wave.update(finished)
    return by_wave, finished_at


@pytest.mark.parametrize("tiny_model", ALL_ARCHITECTURES, indirect=True)
@pytest.mark.parametrize("n_future", [1, 3])
def test_waves_match_the_naive_reference_on_every_architecture(tiny_model: LoadedModel, n_future: int) -> None:
    n_layers = tiny_model.adapter.n_layers
    layers = list(range(n_layers))
    lens = FutureLens(tiny_model, random_prompts(tiny_model, layers, seed=3))
    text = texts_for(tiny_model)[2]
    cells, _, reference = grid_cells(lens, text, layers)
    n_cells = len(cells.states)
    entering = waves_of(n_cells, {0: 2, 1: 3, 3: 1, 4: n_cells})  # uneven waves, a gap, the rest last
    window = attention_window(tiny_model.hf.config)
    staggerable = can_stagger(tiny_model, cells, n_future)
    assert staggerable == (window is None or window >= 10 + n_future - 1), "a shorter sliding window must not stagger"
    by_wave, _ = collect(lens.predict_waves(cells.states, cells.layers, entering, n_future, 4, reference))
    assert sorted(by_wave) == [k for k, members in enumerate(entering) if len(members)]
    naive = naive_grid_cells(lens, text, layers, n_future, 4)  # layer-major, as `grid_cells`
    for index, predictions in by_wave.items():
        assert_same(predictions, naive.take(entering[index]))


@pytest.mark.parametrize("model_name", ["tiny_llama", "tiny_gptj", "tiny_gpt2"])
def test_each_wave_finishes_n_forwards_after_it_enters(request: pytest.FixtureRequest, model_name: str) -> None:
    model: LoadedModel = request.getfixturevalue(model_name)
    layers = list(range(model.adapter.n_layers))
    lens = FutureLens(model, random_prompts(model, layers, seed=4))
    cells, _, _ = grid_cells(lens, words(5, seed=6), layers)
    entering = waves_of(len(cells.states), {0: 1, 2: 4, 3: len(cells.states)})
    assert can_stagger(model, cells, 3)
    forwards = []
    with on_block_outputs(model.adapter, [0], lambda _layer, hidden: forwards.append(hidden.shape[0])):
        _, finished_at = collect(decode_staggered(model, cells, entering, n_future=3, top_k=2))
    assert finished_at == [[], [], [0], [], [2], [3]]  # wave k leaves after forward k + N - 1; 3 + 3 forwards
    n_rest = len(cells.states) - 5
    assert forwards[0] == len(cells.contexts), "the contexts' shared prefix first (no store given)"
    assert forwards[1:] == [1, 1, 5, 4 + n_rest, 4 + n_rest, n_rest], "each forward carries exactly its waves' rows"


def test_stopping_after_the_first_wave_runs_no_more_forwards(tiny_llama: LoadedModel) -> None:
    layers = list(range(tiny_llama.adapter.n_layers))
    lens = FutureLens(tiny_llama, random_prompts(tiny_llama, layers, seed=5))
    cells, _, _ = grid_cells(lens, "Paris is the capital of France", layers)
    entering = waves_of(len(cells.states), {0: 3, 1: len(cells.states)})
    forwards = []
    with on_block_outputs(tiny_llama.adapter, [0], lambda _layer, hidden: forwards.append(hidden.shape[0])):
        for finished in decode_staggered(tiny_llama, cells, entering, n_future=4, top_k=2):
            if finished:
                break
    assert len(forwards) == 1 + 4, "the prefix, then wave 0 done after N forwards; nothing once the consumer stops"


def test_first_token_statistics_of_waves_match_a_whole_batch(tiny_llama: LoadedModel) -> None:
    layers = list(range(tiny_llama.adapter.n_layers))
    lens = FixedPromptLens(tiny_llama, "Hello! Could you please tell me more about")
    text = "The cat sat on the mat"
    cells, _, reference = grid_cells(lens, text, layers)
    n_cells = len(cells.states)
    entering = waves_of(n_cells, {0: 4, 2: n_cells})
    by_wave, _ = collect(lens.predict_waves(cells.states, cells.layers, entering, 2, 3, reference))
    whole = lens.predict(cells.states, cells.layers, 2, 3, reference)
    for index, predictions in by_wave.items():
        want = whole.take(entering[index])
        assert_same(predictions, want)
        assert torch.equal(predictions.stats.next_rank, want.stats.next_rank)
        torch.testing.assert_close(predictions.stats.entropy, want.stats.entropy, atol=1e-4, rtol=0)
        torch.testing.assert_close(predictions.stats.kl, want.stats.kl, atol=1e-4, rtol=0)
    naive = naive_grid_cells(lens, text, layers, 2, 3)
    assert_same(CellPredictions.concat([by_wave[0], by_wave[2]]), naive)


def test_cells_that_cannot_stagger_are_decoded_wave_after_wave(tiny_llama: LoadedModel) -> None:
    generator = torch.Generator().manual_seed(8)
    d_model = tiny_llama.adapter.d_model
    contexts = [torch.randn(length, d_model, generator=generator) for length in (10, 4)]
    source = run_source_pass(tiny_llama, tokenize(tiny_llama, "one two three"))
    states = source.hidden[0, :3]
    cells = PatchedCells(contexts, torch.tensor([0, 1, 0]), torch.tensor([0, 0, 1]), states)
    assert not can_stagger(tiny_llama, cells, 2)
    with pytest.raises(ValueError, match="staggered"):
        next(decode_staggered(tiny_llama, cells, [torch.arange(3)], n_future=2))


def test_lenses_without_decoding_yield_one_wave_per_step(tiny_gpt2: LoadedModel) -> None:
    lens = LogitLens(tiny_gpt2)
    source = run_source_pass(tiny_gpt2, tokenize(tiny_gpt2, words(4, seed=2)))
    states, layers = source.hidden[:2].reshape(-1, source.hidden.shape[-1]), torch.tensor([0] * 4 + [1] * 4)
    entering = [torch.arange(4, 8), torch.tensor([], dtype=torch.long), torch.arange(4)]
    steps = list(lens.predict_waves(states, layers, entering, 1, 3))
    assert [[index for index, _ in step] for step in steps] == [[0], [2]]
    whole = lens.predict(states, layers, 1, 3)
    assert torch.equal(steps[0][0][1].topk_ids, whole.topk_ids[4:]) and torch.equal(
        steps[1][0][1].topk_ids, whole.topk_ids[:4]
    )
    assert lens.staggered(states, layers, 1, None) is None


def test_stream_waves_start_with_rows_spread_over_depth_then_the_rest_as_they_leave() -> None:
    assert stream_waves(16, 4) == [[8], [], [], [], [r for r in range(16) if r != 8]]
    assert stream_waves(30, 4) == [[14], [], [], [], [r for r in range(30) if r != 14]]
    assert stream_waves(16, 1) == [[8], [r for r in range(16) if r != 8]], "N=1: the rest right after"
    assert stream_waves(16, 4, count=2) == [[5, 10], [], [], [], [r for r in range(16) if r not in (5, 10)]]
    assert stream_waves(16, 4, count=3) == [[4, 8, 11], [], [], [], [r for r in range(16) if r not in (4, 8, 11)]]
    assert stream_waves(1, 4) == [[0]]
    assert stream_waves(2, 4) == [[0], [], [], [], [1]]
    assert stream_waves(2, 4, count=2) == [[0, 1]], "two rows, two first: nothing left"
    for n_rows in range(1, 40):
        for n_future in (1, 2, 3, 4, 6):
            waves = stream_waves(n_rows, n_future)
            assert sorted(row for wave in waves for row in wave) == list(range(n_rows)), (n_rows, n_future)
            assert len(waves) in (1, n_future + 1) and waves[0] == first_rows(n_rows)


def test_stream_stops_between_forwards_when_asked(tiny_llama: LoadedModel) -> None:
    layers = list(range(tiny_llama.adapter.n_layers))
    lens = FutureLens(tiny_llama, random_prompts(tiny_llama, layers, seed=9))
    text = "Paris is the capital of France and"
    lens.grid(text, n_future=1)  # the contexts' prefixes are stored: every forward from here on is a decode's
    stream = lens.stream(text, layers="all", n_future=3, waves=[[0], [], [], [1]])
    asked, forwards = [], []
    with on_block_outputs(tiny_llama.adapter, [0], lambda _layer, hidden: forwards.append(hidden.shape[0])):
        stream.head()  # the source pass, then the N-1 forwards that decode the model's continuation
        tokens = len(stream.head().tokens)
        assert forwards == [1, 2 * tokens, 2 * tokens], "the text (a batch of 1), then continuation rows + first wave"
        rows = list(stream.rows(stop=lambda: asked.append(len(forwards)) or len(asked) == 3))
    assert asked == [3, 3, 4] and len(forwards) == 4, "asked after each forward; nothing runs after it says stop"
    assert [row.index for row in rows] == [0] and stream.rows_done == 1
    with pytest.raises(RuntimeError, match="rows are computed"):
        stream.grid()


def test_staggered_stats_use_the_cells_own_reference(tiny_llama: LoadedModel) -> None:
    """The statistics of a wave are measured against its own cells' positions, not the first cells'."""
    layers = list(range(tiny_llama.adapter.n_layers))
    lens = FutureLens(tiny_llama, random_prompts(tiny_llama, layers, seed=10))
    cells, _, reference = grid_cells(lens, "The cat sat on the mat", layers)
    n_cells = len(cells.states)
    entering = waves_of(n_cells, {0: 2, 1: n_cells})
    by_wave, _ = collect(lens.predict_waves(cells.states, cells.layers, entering, 2, 5, reference))
    for index, members in enumerate(entering):
        first_is_next = by_wave[index].topk_ids[:, 0] == reference.next_ids[reference.index[members]]
        assert torch.equal(by_wave[index].stats.next_rank == 1, first_is_next), "rank 1 exactly where top-1 = next"


@pytest.mark.embedded
def test_embedded_model_streamed_waves_match_naive(smollm2: LoadedModel) -> None:
    """The page's default schedule on the real model: every cell as the naive per-cell patch gives it."""
    text = "The Eiffel Tower is in"
    layers = [0, 7, 15, 22, 29]
    lens = FutureLens(smollm2, random_prompts(smollm2, [0, 15, 29], seed=3))
    stream = lens.stream(text, layers=layers, n_future=3, top_k=5)
    assert stream.waves == [[2], [], [], [0, 1, 3, 4]]
    rows = list(stream.rows())
    assert [row.index for row in rows] == [2, 0, 1, 3, 4]
    assert_same(grid_predictions(stream.grid()), naive_grid_cells(lens, text, layers, 3, 5))


@pytest.mark.parametrize("tiny_model", ALL_ARCHITECTURES, indirect=True)
def test_continuation_decoded_with_the_first_wave_matches_naive(tiny_model: LoadedModel) -> None:
    """A streamed grid decodes the model's own continuation in its first forwards (where no sliding window is
    shorter than the text): the same tokens and probabilities as the naive decode, and the same cells."""
    layers = list(range(tiny_model.adapter.n_layers))
    lens = FutureLens(tiny_model, random_prompts(tiny_model, layers, seed=12))
    long_text = (
        "The cat sat on the mat and the dog sat on the rug while the bird sang in the old tree"
        if tiny_model.id.startswith("tiny-llama")
        else words(18, seed=5)
    )  # longer than the 10-position context: the continuation rows hold more slots than the cells
    for text, n_future in [(texts_for(tiny_model)[2], 3), (long_text, 4), (texts_for(tiny_model)[0], 1)]:
        stream = lens.stream(text, layers="all", n_future=n_future, top_k=3)
        head = stream.head()
        naive_ids, naive_probs = oracle.continuation(tiny_model, text, n_future)
        assert [[t.id for t in row] for row in head.continuations] == naive_ids.tolist()
        probs = torch.tensor([[t.prob for t in row] for row in head.continuations])
        torch.testing.assert_close(probs, naive_probs, atol=1e-4, rtol=0)
        list(stream.rows())
        grid = stream.grid()
        assert grid.continuations == head.continuations
        assert_same(grid_predictions(grid), naive_grid_cells(lens, text, layers, n_future, 3))
