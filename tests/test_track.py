"""Token trajectories (`Lens.track`) against independent computations: the grid's own top-k where the token is in
it, and a naive per-cell computation (nnsight patch without cache for the patched lenses; hidden states from
`output_hidden_states` through the model's norm and head for the logit lens) for any token."""

from __future__ import annotations

import pytest
import torch

from future_lens.lens import FixedPromptLens, FutureLens, Lens, LogitLens, Track
from future_lens.lens.architectures import block_output_tensor
from future_lens.lens.lenses import PatchedContextLens
from future_lens.lens.models import LoadedModel
from future_lens.lens.source import tokenize
from future_lens.lens.tracing import save
from tests.conftest import words
from tests.test_engine import random_prompts


def lenses_of(model: LoadedModel) -> list[Lens]:
    layers = list(range(model.adapter.n_layers))
    return [
        LogitLens(model),
        FixedPromptLens(model, "w5 w6 w7" if model.id != "tiny-llama" else "Tell me about"),
        FutureLens(model, random_prompts(model, layers, seed=7), chunk_rows=5),
    ]


def text_for(model: LoadedModel) -> str:
    return "The cat sat on the mat" if model.id == "tiny-llama" else words(5, seed=4)


def naive_distribution(lens: Lens, text: str, layer: int, position: int) -> torch.Tensor:
    """The first-token distribution of one cell, computed without the engine or the lens's helpers."""
    model = lens.model
    ids = torch.tensor([model.context_prefix + tokenize(model, text)], device=model.device)
    envoy = model.nnsight  # not `output_hidden_states`: its last entry is after the final norm
    with torch.inference_mode(), envoy.trace(ids):
        hidden = save(block_output_tensor(model.adapter.locate_blocks(envoy)[layer].output))
    state = hidden[0, len(model.context_prefix) + position]
    if isinstance(lens, LogitLens):
        with torch.inference_mode():
            logits = model.hf.lm_head(model.adapter.final_norm(state))
        return torch.softmax(logits.float(), dim=-1)
    assert isinstance(lens, PatchedContextLens)
    context = lens.context_embeddings(layer).to(model.device, model.dtype)
    with torch.inference_mode(), envoy.trace(inputs_embeds=context[None]):
        block_output_tensor(model.adapter.locate_blocks(envoy)[layer].output)[0, -1] = state
        logits = save(envoy.output.logits)
    return torch.softmax(logits[0, -1].float(), dim=-1)


def at(track: Track, m: int, row: int, column: int) -> tuple[float, int]:
    return track.tokens[m].probs[row][column], track.tokens[m].ranks[row][column]


@pytest.mark.parametrize("tiny_model", ["tiny_gptj", "tiny_llama", "tiny_gpt2"], indirect=True)
def test_tracked_topk_tokens_have_the_grids_probabilities_and_ranks(tiny_model: LoadedModel) -> None:
    text = text_for(tiny_model)
    for lens in lenses_of(tiny_model):
        grid = lens.grid(text, n_future=1, top_k=3)
        for row in range(len(grid.layers)):
            for column in range(len(grid.tokens)):
                topk = grid.cells[row][column].topk
                track = lens.track(text, [t.id for t in topk], layers=grid.layers)
                assert track.method == lens.method and track.layers == grid.layers
                for k, alternative in enumerate(topk):
                    prob, rank = at(track, k, row, column)
                    assert prob == pytest.approx(alternative.prob, abs=1e-5), (lens.method, row, column, k)
                    assert rank <= k + 1  # ties share the better rank


@pytest.mark.parametrize("tiny_model", ["tiny_gptj", "tiny_llama"], indirect=True)
def test_any_token_matches_a_naive_computation(tiny_model: LoadedModel) -> None:
    text = text_for(tiny_model)
    n_tokens = len(tokenize(tiny_model, text))
    chosen = [3, 17, tiny_model.adapter.vocab_size - 1]
    for lens in lenses_of(tiny_model):
        track = lens.track(text, chosen)
        assert track.positions == n_tokens and track.layers == list(range(tiny_model.adapter.n_layers))
        for row, layer in enumerate(track.layers):
            for column in range(n_tokens):
                naive = naive_distribution(lens, text, layer, column)
                for m, token_id in enumerate(chosen):
                    prob, rank = at(track, m, row, column)
                    expected = naive[token_id].item()
                    assert prob == pytest.approx(expected, abs=1e-5), (lens.method, layer, column, token_id)
                    # Ranks from the naive distribution, allowing for float noise at the boundary.
                    lower = int((naive > expected + 1e-6).sum()) + 1
                    upper = int((naive > expected - 1e-6).sum()) + 1
                    assert lower <= rank <= upper, (lens.method, layer, column, token_id, rank, lower, upper)


def test_embedded_model_future_lens_track_agrees_with_its_grid(smollm2: LoadedModel) -> None:
    lens = FutureLens(smollm2, random_prompts(smollm2, [0, 15, 29], seed=3))
    grid = lens.grid("Marty McFly from", layers=[0, 14, 29], n_future=1, top_k=2)
    ids = [grid.cells[1][2].topk[0].id, grid.next_tokens[2].id]
    track = lens.track("Marty McFly from", ids, layers=[0, 14, 29])
    assert at(track, 0, 1, 2)[0] == pytest.approx(grid.cells[1][2].topk[0].prob, abs=1e-5)
    assert at(track, 0, 1, 2)[1] == 1
    naive = naive_distribution(lens, "Marty McFly from", 29, 2)
    assert at(track, 1, 2, 2)[0] == pytest.approx(naive[ids[1]].item(), abs=1e-5)
    assert track.tokens[0].text == grid.cells[1][2].topk[0].text


@pytest.mark.parametrize("bad", [[-1], [10**9], [3, 3], [True]])
def test_token_ids_outside_the_vocabulary_or_repeated_are_refused(tiny_gpt2: LoadedModel, bad: list) -> None:
    with pytest.raises(ValueError, match=r"vocabulary|repeat"):
        LogitLens(tiny_gpt2).track(words(3), bad)
