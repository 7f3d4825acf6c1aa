"""The batched engine must give exactly what the naive per-cell oracle gives (ids equal, probs within 1e-4).

The oracle (tests/reference.py) computes its own hidden states, target contexts, patch and decode from the model
object alone, so the engine's source pass, tokenization and contexts are checked too, not fed to both sides."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

import future_lens.lens.grid
import future_lens.lens.source
from future_lens.lens.architectures import ARCHITECTURES
from future_lens.lens.engine import CellPredictions, PatchedCells, decode_patched
from future_lens.lens.lenses import FixedPromptLens, FutureLens, PatchedContextLens
from future_lens.lens.models import LoadedModel, wrap_model
from future_lens.lens.prompts import SoftPromptSet
from future_lens.lens.source import tokenize
from tests import reference as oracle
from tests.conftest import ALL_ARCHITECTURES, TEST_DEVICE, tiny_model_named, words


def random_prompts(model: LoadedModel, layers: list[int], length: int = 10, seed: int = 0) -> SoftPromptSet:
    generator = torch.Generator().manual_seed(seed)
    d_model = model.adapter.d_model
    return SoftPromptSet(None, {layer: torch.randn(length, d_model, generator=generator) for layer in layers})


def assert_same(engine: CellPredictions, naive: CellPredictions | oracle.OracleCells) -> None:
    assert torch.equal(engine.token_ids, naive.token_ids)
    assert torch.equal(engine.topk_ids, naive.topk_ids)
    torch.testing.assert_close(engine.probs, naive.probs, atol=1e-4, rtol=0)
    torch.testing.assert_close(engine.topk_probs, naive.topk_probs, atol=1e-4, rtol=0)


def oracle_target(lens: PatchedContextLens) -> oracle.Target:
    """What the oracle needs to know of a lens: its soft prompts' raw tensors, or its prompt's text."""
    if isinstance(lens, FutureLens):
        return oracle.SoftPrompts(lens.prompts.prompts)
    if isinstance(lens, FixedPromptLens):
        return oracle.TextPrompt(lens.prompt)
    raise TypeError(f"no oracle target for {type(lens).__name__}")


def naive_grid_cells(lens: PatchedContextLens, text: str, layers: list[int], n_future: int, top_k: int):
    """The oracle's cells for one text's grid, layer-major like the grid (its own states and contexts)."""
    return oracle.grid_cells(lens.model, oracle_target(lens), text, layers, n_future, top_k)


def grid_predictions(grid) -> CellPredictions:
    ids = [[t.id for t in cell.tokens] for row in grid.cells for cell in row]
    probs = [[t.prob for t in cell.tokens] for row in grid.cells for cell in row]
    topk_ids = [[t.id for t in cell.topk] for row in grid.cells for cell in row]
    topk_probs = [[t.prob for t in cell.topk] for row in grid.cells for cell in row]
    return CellPredictions(torch.tensor(ids), torch.tensor(probs), torch.tensor(topk_ids), torch.tensor(topk_probs))


def texts_for(model: LoadedModel) -> list[str]:
    if model.id.startswith("tiny-llama"):
        return ["The cat sat on the mat", "Hi", "Paris is the capital of France and"]
    return [words(6, seed=1), words(1, seed=2), words(9, seed=3)]


@pytest.mark.parametrize("tiny_model", ALL_ARCHITECTURES, indirect=True)
@pytest.mark.parametrize(("n_future", "layer_pick"), [(1, "all"), (3, "subset")])
def test_future_lens_matches_naive_on_tiny_models(tiny_model: LoadedModel, n_future: int, layer_pick: str) -> None:
    n_layers = tiny_model.adapter.n_layers
    layers = list(range(n_layers)) if layer_pick == "all" else [0, n_layers - 1]
    lens = FutureLens(tiny_model, random_prompts(tiny_model, layers), chunk_rows=7)  # several chunks per call
    texts = texts_for(tiny_model)
    grids = lens.grids(texts, layers=layers, n_future=n_future, top_k=4)  # texts of different lengths together
    for text, grid in zip(texts, grids, strict=True):
        assert len(grid.cells) == len(layers)
        assert all(len(row) == len(grid.tokens) for row in grid.cells)
        assert_same(grid_predictions(grid), naive_grid_cells(lens, text, layers, n_future, 4))


@pytest.mark.parametrize("tiny_model", ALL_ARCHITECTURES, indirect=True)
def test_fixed_prompt_lens_matches_naive(tiny_model: LoadedModel) -> None:
    prompt = "Hello! Could you please tell me more about" if tiny_model.id == "tiny-llama" else words(5, seed=9)
    lens = FixedPromptLens(tiny_model, prompt)
    layers = list(range(tiny_model.adapter.n_layers))
    text = texts_for(tiny_model)[0]
    grid = lens.grids([text], layers=layers, n_future=2, top_k=3)[0]
    assert_same(grid_predictions(grid), naive_grid_cells(lens, text, layers, 2, 3))


def test_every_advertised_architecture_has_a_tiny_model(request: pytest.FixtureRequest) -> None:
    """The equivalence tests above run one tiny model of each family `ARCHITECTURES` lists, of that very type."""
    model_types = [tiny_model_named(request, name).hf.config.model_type for name in ALL_ARCHITECTURES]
    assert sorted(model_types) == sorted(ARCHITECTURES)


def test_prompt_fallback_to_nearest_layer_matches_naive(tiny_gptj: LoadedModel) -> None:
    prompts = random_prompts(tiny_gptj, [0], seed=5)  # only layer 0 trained: layers 1 and 2 borrow it
    lens = FutureLens(tiny_gptj, prompts)
    grid = lens.grids([words(4, seed=4)], layers=[0, 1, 2], n_future=2, top_k=2)[0]
    assert grid.prompt_layers == [0, 0, 0]
    assert_same(grid_predictions(grid), naive_grid_cells(lens, words(4, seed=4), [0, 1, 2], 2, 2))


def test_stored_prefixes_are_reused_across_requests(tiny_gptj: LoadedModel) -> None:
    """A lens keeps each context's prefix keys/values: later calls mix stored and new contexts, results unchanged."""
    lens = FutureLens(tiny_gptj, random_prompts(tiny_gptj, [0, 1, 2], seed=11), chunk_rows=5)
    lens.grids([words(3, seed=12)], layers=[1], n_future=2, top_k=3)  # stores layer 1's prefix only
    assert lens.prefixes.stored_keys() == {1}
    text = words(5, seed=13)
    grid = lens.grid(text, layers=[2, 1, 0], n_future=2, top_k=3)
    assert lens.prefixes.stored_keys() == {0, 1, 2} and grid.layers == [0, 1, 2]
    assert_same(grid_predictions(grid), naive_grid_cells(lens, text, grid.layers, 2, 3))


def test_contexts_of_different_lengths_in_one_call(tiny_llama: LoadedModel) -> None:
    generator = torch.Generator().manual_seed(7)
    d_model = tiny_llama.adapter.d_model
    contexts = [torch.randn(length, d_model, generator=generator) for length in (10, 1, 4, 10)]
    hidden = oracle.hidden_states(tiny_llama, "one two three")
    index = [0, 1, 2, 3, 1, 0]
    layers = [0, 1, 1, 0, 0, 1]
    states = torch.stack([hidden[layer, i % 3] for i, layer in enumerate(layers)])
    cells = PatchedCells(contexts, torch.tensor(index), torch.tensor(layers), states)
    engine = decode_patched(tiny_llama, cells, n_future=3, top_k=4, chunk_rows=2)
    assert_same(engine, oracle.cells(tiny_llama, contexts, index, layers, states, 3, 4))


@pytest.mark.embedded
def test_embedded_model_future_and_fixed_match_naive(smollm2: LoadedModel) -> None:
    text = "The Eiffel Tower is in"
    layers = [0, 7, 15, 29]
    future = FutureLens(smollm2, random_prompts(smollm2, [0, 15, 29], seed=3))
    for lens, n_future in [(future, 3), (FixedPromptLens(smollm2), 2)]:
        grid = lens.grid(text, layers=layers, n_future=n_future, top_k=5)
        assert_same(grid_predictions(grid), naive_grid_cells(lens, text, layers, n_future, 5))


@pytest.mark.embedded
def test_one_token_text_and_single_layer(smollm2: LoadedModel) -> None:
    lens = FixedPromptLens(smollm2)
    grid = lens.grid("Hello", layers=[29], n_future=1, top_k=3)
    assert len(grid.tokens) == 1 and len(grid.cells) == 1 and len(grid.cells[0][0].tokens) == 1
    assert_same(grid_predictions(grid), naive_grid_cells(lens, "Hello", [29], 1, 3))


def test_n_future_must_be_positive(tiny_gpt2: LoadedModel) -> None:
    context = [torch.zeros(3, tiny_gpt2.adapter.d_model)]
    with pytest.raises(ValueError, match="n_future"):
        cells = PatchedCells(context, torch.tensor([0]), torch.tensor([0]), torch.zeros(1, 64))
        decode_patched(tiny_gpt2, cells, n_future=0)


HALF_TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 5e-3}  # a few units in the last place of a probability


def streamed_grids(lens: FutureLens, texts: list[str], layers: list[int], n_future: int, top_k: int):
    """Each text's grid as the page streams it (staggered waves, the continuation in the first forwards)."""
    grids = []
    for text in texts:
        stream = lens.stream(text, layers=layers, n_future=n_future, top_k=top_k)
        list(stream.rows())
        grids.append(stream.grid())
    return grids


@pytest.mark.parametrize("dtype", list(HALF_TOLERANCE), ids=str)
@pytest.mark.parametrize("how", ["batched", "streamed"])
def test_half_precision_engine_agrees_with_naive(tiny_model: LoadedModel, dtype: torch.dtype, how: str) -> None:
    """In bf16/fp16 batching and caching change rounding, so exact equality is replaced by near-argmax agreement."""
    if dtype == torch.float16 and TEST_DEVICE == "cpu":
        pytest.skip("float16 is a GPU dtype; CPU inference uses float32 or bfloat16")
    half = wrap_model(tiny_model.id, copy.deepcopy(tiny_model.hf).to(dtype), tiny_model.tokenizer)
    half.context_prefix = list(tiny_model.context_prefix)  # the same model in another dtype (catalog entry's prefix)
    layers = list(range(half.adapter.n_layers))
    lens = FutureLens(half, random_prompts(half, layers), chunk_rows=7)
    texts = texts_for(half)
    if how == "batched":
        grids = lens.grids(texts, layers=layers, n_future=3, top_k=4)
    else:
        grids = streamed_grids(lens, texts, layers, 3, 4)
    engine = CellPredictions.concat([grid_predictions(grid) for grid in grids])
    naive = oracle.OracleCells.concat([naive_grid_cells(lens, text, layers, 3, 4) for text in texts])
    tolerance = HALF_TOLERANCE[dtype]
    torch.testing.assert_close(engine.topk_probs, naive.topk_probs, atol=tolerance, rtol=0)
    # The engine's first token is a top token of the naive distribution, up to rounding (exact ties are common).
    chosen = engine.token_ids[:, :1] == naive.topk_ids
    assert chosen.any(dim=1).all()
    chosen_prob = (naive.topk_probs * chosen).sum(dim=1)
    assert (chosen_prob >= naive.topk_probs[:, 0] - tolerance).all()
    same = (engine.token_ids == naive.token_ids).all(dim=1)
    assert same.float().mean() >= 0.8, "rounding may flip near-ties, not most phrases"
    torch.testing.assert_close(engine.probs[same], naive.probs[same], atol=tolerance, rtol=0)


def test_chunk_rows_are_sized_from_the_model_shape_and_free_memory(embedded_dir) -> None:
    """GPT-J-6B in bf16 at P=10, N=8: ~8 GB of KV cache per 1024 rows; chunks fit the memory share and the caps."""
    from transformers import AutoConfig, GPTJConfig

    from future_lens.lens.engine import MAX_CHUNK_ROWS, MEMORY_SHARE, bytes_per_row, rows_that_fit

    gptj = bytes_per_row(GPTJConfig(), torch.bfloat16, positions=10 + 8 - 1)
    kv_only = 28 * 2 * 16 * 256 * 17 * 2  # blocks × (K, V) × heads × head_dim × positions × bytes
    assert kv_only < gptj < kv_only * 1.1 and 7.5e9 < 1024 * kv_only < 8.5e9
    assert rows_that_fit(gptj, 139 << 30, "cuda") == MAX_CHUNK_ROWS["cuda"]  # an idle H200: the cap
    rows = rows_that_fit(gptj, 8 << 30, "cuda")
    assert 500 < rows < 1024 and rows * gptj <= MEMORY_SHARE["cuda"] * (8 << 30)
    smol = AutoConfig.from_pretrained(embedded_dir)  # 30 blocks, 3 KV heads of 64, vocab 49152
    per_row = bytes_per_row(smol, torch.float32, positions=13)
    assert 30 * 2 * 3 * 64 * 13 * 4 < per_row < 2e6
    assert rows_that_fit(per_row, 16 << 30, "cpu") == MAX_CHUNK_ROWS["cpu"]
    assert 8 <= rows_that_fit(per_row, 100 << 20, "cpu") < 32  # little memory free: small chunks
    assert bytes_per_row(smol, torch.float32, 20) > per_row  # longer N, fewer rows


# The oracle stands apart: it catches bugs the engine's own parts would share with a reference fed by them, and it
# is itself what a hand computation gives.


def engine_fed_reference(lens: PatchedContextLens, text: str, layers: list[int], n_future: int, top_k: int):
    """What the old reference checked: the naive decode fed the engine's own source pass, tokens and contexts."""
    model = lens.model
    source = future_lens.lens.source.run_source_pass(model, tokenize(model, text))
    pairs = [(layer, t) for layer in layers for t in range(len(source.token_ids))]
    contexts = [lens.context_embeddings(layer) for layer, _ in pairs]
    states = torch.stack([source.hidden[layer, t] for layer, t in pairs])
    return oracle.cells(
        model, contexts, list(range(len(pairs))), [layer for layer, _ in pairs], states, n_future, top_k
    )


@pytest.mark.parametrize("tiny_model", ["tiny_gptj", "tiny_llama"], indirect=True)
def test_oracle_catches_source_states_off_by_one_position(
    tiny_model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug injected into the engine's source pass (each column reads the block outputs of the position before it)
    makes the engine disagree with the oracle; a reference fed the engine's source pass agrees with the bug."""
    layers = list(range(tiny_model.adapter.n_layers))
    lens = FutureLens(tiny_model, random_prompts(tiny_model, layers, seed=21))
    text = texts_for(tiny_model)[0]
    assert_same(
        grid_predictions(lens.grid(text, layers=layers, n_future=2, top_k=3)),
        naive_grid_cells(lens, text, layers, 2, 3),
    )

    real = future_lens.lens.source.run_source_pass

    def off_by_one(model, token_ids, keep_cache=False):
        source = real(model, token_ids, keep_cache=keep_cache)
        source.hidden = torch.cat([source.hidden[:, :1], source.hidden[:, :-1]], dim=1)
        return source

    monkeypatch.setattr(future_lens.lens.source, "run_source_pass", off_by_one)
    monkeypatch.setattr(future_lens.lens.grid, "run_source_pass", off_by_one)
    faulty = grid_predictions(lens.grid(text, layers=layers, n_future=2, top_k=3))
    assert_same(faulty, engine_fed_reference(lens, text, layers, 2, 3))  # the old reference: blind to it
    with pytest.raises(AssertionError):
        assert_same(faulty, naive_grid_cells(lens, text, layers, 2, 3))


def test_oracle_catches_a_dropped_context_prefix(tiny_llama: LoadedModel) -> None:
    """An engine that forgets the context prefix (in the source pass, the fixed prompt and the continuation) is
    caught by the oracle, which starts texts and prompts with the document-start token itself; the old reference,
    taking the prefix, states and contexts from the engine, agreed with it."""
    dropped = dataclasses.replace(tiny_llama, context_prefix=[])
    text, layers = "The cat sat on the mat", [0, 1]
    lens = FixedPromptLens(dropped, "Hello! Could you please tell me more about")
    grid = lens.grid(text, layers=layers, n_future=2, top_k=3)
    assert_same(grid_predictions(grid), engine_fed_reference(lens, text, layers, 2, 3))
    with pytest.raises(AssertionError):
        assert_same(grid_predictions(grid), naive_grid_cells(lens, text, layers, 2, 3))
    continuation = [[token.id for token in row] for row in grid.continuations]
    assert continuation != oracle.continuation(dropped, text, 2)[0].tolist()


@pytest.mark.parametrize("tiny_model", ALL_ARCHITECTURES, indirect=True)
def test_oracle_agrees_with_hand_computations(tiny_model: LoadedModel) -> None:
    """The oracle's parts against what the HF model says directly: its block outputs are HF's hidden states, the
    logit lens at the last block is the model's own next-token logits, and patching the context's last position
    with its own state changes nothing (with another state, it does)."""
    assert oracle.context_prefix(tiny_model) == tiny_model.context_prefix == [0], "the document-start token"
    text = texts_for(tiny_model)[2]
    ids = torch.tensor([oracle.context_prefix(tiny_model) + oracle.text_ids(tiny_model, text)], device=TEST_DEVICE)
    hidden = oracle.hidden_states(tiny_model, text)
    with torch.inference_mode():
        out = tiny_model.hf(input_ids=ids, output_hidden_states=True)
    assert hidden.shape == (len(oracle.blocks_of(tiny_model)), ids.shape[1] - 1, hidden.shape[-1])
    for layer in range(hidden.shape[0] - 1):  # HF's last entry has the final norm applied
        torch.testing.assert_close(hidden[layer], out.hidden_states[layer + 1][0, 1:].cpu())
    torch.testing.assert_close(oracle.logit_lens_logits(tiny_model, hidden[-1]), out.logits[0, 1:].float().cpu())

    prompt = oracle.TextPrompt(text)
    context = oracle.target_context(tiny_model, prompt, 0)
    assert context.shape[0] == ids.shape[1]
    own_next = torch.softmax(out.logits[0, -1].float(), dim=-1).cpu()
    for layer in range(hidden.shape[0]):
        torch.testing.assert_close(oracle.first_probs(tiny_model, context, layer, hidden[layer, -1]), own_next)
        other = oracle.first_probs(tiny_model, context, layer, hidden[layer, 0])
        assert (other - own_next).abs().max() > 1e-3, "the patch applies"
