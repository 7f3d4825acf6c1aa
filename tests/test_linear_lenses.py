"""Tuned lens, Jacobian lens and the identity patchscope against independent naive computations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from future_lens.lens.layers import parse_layers
from future_lens.lens.lenses import IDENTITY_PATCHSCOPE_PROMPT, IdentityPatchscope
from future_lens.lens.linear import (
    JacobianLens,
    LinearLensArtifactError,
    LinearMaps,
    TunedLens,
    linear_lens_file,
    load_linear_maps,
    save_linear_maps,
)
from future_lens.lens.models import LoadedModel
from future_lens.lens.source import tokenize
from future_lens.training.linear_fit import (
    ChunkedKLReadout,
    JacobianLensRecipe,
    TunedLensRecipe,
    fit_jacobian_lens,
    fit_tuned_lens,
    jacobian_rows,
    lens_kl_per_layer,
    token_windows,
    valid_positions,
)
from future_lens.training.objective import kl_divergence
from tests.conftest import words
from tests.test_engine import assert_same, grid_predictions, naive_grid_cells

TEXT = "The cat sat on the mat because"


def random_maps(model: LoadedModel, kind: str, seed: int = 0) -> LinearMaps:
    generator = torch.Generator().manual_seed(seed)
    n, d = model.adapter.n_layers, model.adapter.d_model
    weight = torch.eye(d) + 0.3 * torch.randn(n, d, d, generator=generator) / d**0.5
    return LinearMaps(kind, weight, 0.5 * torch.randn(n, d, generator=generator))


def hf_block_outputs(model: LoadedModel, text: str) -> list[torch.Tensor]:
    """Block outputs [T, d] at the text's positions from transformers' own `output_hidden_states` (all blocks but
    the last, whose entry there has the final norm applied)."""
    ids = torch.tensor([[*model.context_prefix, *tokenize(model, text)]], device=model.device)
    with torch.no_grad():
        hidden = model.hf(ids, output_hidden_states=True).hidden_states
    start = len(model.context_prefix)
    return [h[0, start:].float().cpu() for h in hidden[1:-1]]


def test_tuned_lens_cells_equal_a_hand_written_readout(tiny_llama: LoadedModel) -> None:
    """Each cell is softmax(lm_head(norm(A_l h + b_l))) of the state, written out with the Llama modules."""
    maps = random_maps(tiny_llama, "tuned")
    layers = list(range(tiny_llama.adapter.n_layers - 1))
    grid = TunedLens(tiny_llama, maps).grid(TEXT, layers=layers, n_future=3, top_k=4)
    assert all(len(cell.tokens) == 1 for row in grid.cells for cell in row)  # N = 0 only, whatever was asked
    for layer, states in zip(layers, hf_block_outputs(tiny_llama, TEXT), strict=False):
        translated = states @ maps.weight[layer].T + maps.bias[layer]
        with torch.no_grad():
            hf = tiny_llama.hf
            probs = torch.softmax(hf.lm_head(hf.model.norm(translated)).float(), -1)
        expected_probs, expected_ids = probs.topk(4, dim=-1)
        row = grid.cells[layers.index(layer)]
        assert [[t.id for t in cell.topk] for cell in row] == expected_ids.tolist()
        got = torch.tensor([[t.prob for t in cell.topk] for cell in row])
        torch.testing.assert_close(got, expected_probs, atol=1e-5, rtol=0)


def test_identity_maps_read_like_the_logit_lens(tiny_llama: LoadedModel) -> None:
    from future_lens.lens import LogitLens

    n, d = tiny_llama.adapter.n_layers, tiny_llama.adapter.d_model
    identity = LinearMaps("jacobian", torch.eye(d).repeat(n, 1, 1), torch.zeros(n, d))
    ours = JacobianLens(tiny_llama, identity).grid(TEXT, n_future=1, top_k=3)
    logit = LogitLens(tiny_llama).grid(TEXT, n_future=1, top_k=3)
    assert_same(grid_predictions(ours), grid_predictions(logit))


def naive_jacobian(model: LoadedModel, token_ids: list[int], skip_first: int) -> torch.Tensor:
    """[L, d, d]: Σ_{s∈V} Σ_{t∈V, t≥s} ∂h_final[t]/∂h_l[s] with V = skip_first .. T-2 of the whole sequence (context
    prefix included), one `autograd.functional.jacobian` per (l, s): block l's output at s is replaced by a free input
    and h_final read at every later position of V."""
    adapter = model.adapter
    n, d = adapter.n_layers, adapter.d_model
    ids = torch.tensor([[*model.context_prefix, *token_ids]], device=model.device)
    prefix, length = skip_first, ids.shape[1] - 1 - skip_first
    with torch.no_grad():
        original = [h[0] for h in model.hf(ids, output_hidden_states=True).hidden_states[1:]]
    last = _last_block_output(model, ids)  # hidden_states' last entry has the final norm applied
    final_block = adapter.blocks[n - 1]
    result = torch.zeros(n, d, d)
    for layer in range(n):
        for s in range(prefix, prefix + length):

            def final_outputs(x: torch.Tensor, layer: int = layer, s: int = s) -> torch.Tensor:
                captured = {}

                def replace(_module, _inputs, output):
                    hidden = output[0] if isinstance(output, tuple) else output
                    hidden = torch.cat([hidden[:, :s], x.view(1, 1, -1), hidden[:, s + 1 :]], dim=1)
                    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

                def grab(_module, _inputs, output):
                    captured["h"] = output[0] if isinstance(output, tuple) else output

                handles = [adapter.blocks[layer].register_forward_hook(replace)]
                handles.append(final_block.register_forward_hook(grab))
                try:
                    model.hf(ids, use_cache=False)
                finally:
                    for handle in handles:
                        handle.remove()
                return captured["h"][0, s : prefix + length]  # targets t >= s

            point = original[layer][s].detach().clone() if layer < n - 1 else last[s]
            jac = torch.autograd.functional.jacobian(final_outputs, point)  # [targets, d, d]
            result[layer] += jac.sum(0).cpu()
    return result


def _last_block_output(model: LoadedModel, ids: torch.Tensor) -> torch.Tensor:
    captured = {}
    block = model.adapter.blocks[model.adapter.n_layers - 1]
    handle = block.register_forward_hook(
        lambda _m, _i, out: captured.setdefault("h", out[0] if isinstance(out, tuple) else out)
    )
    try:
        with torch.no_grad():
            model.hf(ids, use_cache=False)
    finally:
        handle.remove()
    return captured["h"][0].detach().clone()


EXACT_JACOBIAN = JacobianLensRecipe(skip_first=2, dim_batch=24, autocast="float32")  # several VJP batches over d


def test_jacobian_rows_equal_autograd_per_position_pair(tiny_llama: LoadedModel) -> None:
    token_ids = tokenize(tiny_llama, "Paris is the capital of France")
    fitted = jacobian_rows(tiny_llama, token_ids, EXACT_JACOBIAN)
    naive = naive_jacobian(tiny_llama, token_ids, EXACT_JACOBIAN.skip_first)
    sources = len(valid_positions(len(tiny_llama.context_prefix) + len(token_ids), EXACT_JACOBIAN.skip_first))
    torch.testing.assert_close(fitted, naive[:-1] / sources, atol=1e-5, rtol=1e-4)  # mean over the sources


def test_jacobian_lens_averages_over_prompts_and_resumes(tiny_llama: LoadedModel, tmp_path: Path, monkeypatch) -> None:
    texts = [tokenize(tiny_llama, "Paris is the capital of France"), tokenize(tiny_llama, "Hi there, how are you")]
    texts.append([5])  # too short for any valid position: left out, as the authors' fit skips it
    maps = fit_jacobian_lens(tiny_llama, texts, EXACT_JACOBIAN, checkpoint_dir=tmp_path, progress=False)
    expected = (
        jacobian_rows(tiny_llama, texts[0], EXACT_JACOBIAN) + jacobian_rows(tiny_llama, texts[1], EXACT_JACOBIAN)
    ) / 2
    torch.testing.assert_close(maps.weight[:-1], expected)
    d = tiny_llama.adapter.d_model
    assert torch.equal(maps.weight[-1], torch.eye(d))  # the final layer is the model's own readout
    assert maps.kind == "jacobian" and not maps.bias.any() and maps.metadata["prompts"] == "2"
    monkeypatch.setattr("future_lens.training.linear_fit.jacobian_rows", lambda *a: pytest.fail("recomputed"))
    resumed = fit_jacobian_lens(tiny_llama, texts, EXACT_JACOBIAN, checkpoint_dir=tmp_path, progress=False)
    torch.testing.assert_close(resumed.weight, maps.weight)


@pytest.mark.parametrize("tiny_model", ["tiny_llama", "tiny_gptj"], indirect=True)
def test_identity_patchscope_matches_the_naive_patch(tiny_model: LoadedModel) -> None:
    lens = IdentityPatchscope(tiny_model)
    assert lens.prompt == IDENTITY_PATCHSCOPE_PROMPT and lens.method == "identity"
    layers = parse_layers(None, tiny_model.adapter.n_layers)
    text = TEXT if tiny_model.id == "tiny-llama" else words(5, seed=4)
    grid = lens.grid(text, layers=layers, n_future=2, top_k=3)
    assert_same(grid_predictions(grid), naive_grid_cells(lens, text, layers, 2, 3))


def test_linear_maps_round_trip_and_refuse_other_weights(tiny_llama: LoadedModel, tiny_gptj, tmp_path: Path) -> None:
    maps = random_maps(tiny_llama, "tuned")
    maps.metadata["examples"] = 12
    path = save_linear_maps(tmp_path, tiny_llama, maps)
    assert path == linear_lens_file(tmp_path, "tuned")
    loaded = load_linear_maps(tmp_path, tiny_llama, "tuned")
    torch.testing.assert_close(loaded.weight, maps.weight.half().float())  # stored in float16, read as float32
    assert loaded.weight.dtype == torch.float32
    torch.testing.assert_close(loaded.bias, maps.bias)
    assert loaded.metadata["model_fingerprint"] == tiny_llama.fingerprint and loaded.metadata["examples"] == "12"
    assert TunedLens(tiny_llama, tmp_path).maps.content_hash() == loaded.content_hash() != maps.content_hash()
    with pytest.raises(LinearLensArtifactError, match="fingerprint"):
        load_linear_maps(tmp_path, tiny_gptj, "tuned")
    with pytest.raises(LinearLensArtifactError, match="no jacobian lens"):
        JacobianLens(tiny_llama, tmp_path)
    with pytest.raises(LinearLensArtifactError, match="needs tuned maps"):
        TunedLens(tiny_llama, random_maps(tiny_llama, "jacobian"))


def test_logit_lens_kl_per_layer_equals_a_hand_computation(tiny_llama: LoadedModel) -> None:
    windows = [tokenize(tiny_llama, "Paris is the capital of France"), tokenize(tiny_llama, "Hi there, how are you?")]
    windows = [w[:5] for w in windows]
    got = lens_kl_per_layer(tiny_llama, windows, None, batch=1)
    expected = torch.zeros(tiny_llama.adapter.n_layers)
    hf = tiny_llama.hf
    for window in windows:
        ids = torch.tensor([[*tiny_llama.context_prefix, *window]])
        with torch.no_grad():
            out = hf(ids, output_hidden_states=True)
            log_p = torch.log_softmax(out.logits[0, 1:].float(), -1)
            for layer, hidden in enumerate(out.hidden_states[1:-1]):
                log_q = torch.log_softmax(hf.lm_head(hf.model.norm(hidden[0, 1:])).float(), -1)
                expected[layer] += (log_p.exp() * (log_p - log_q)).sum(-1).sum()
    expected /= sum(len(w) for w in windows)  # the last layer's KL is 0: the model's own readout
    torch.testing.assert_close(torch.tensor(got), expected, atol=1e-4, rtol=1e-4)


def test_chunked_kl_readout_matches_autograd_of_the_plain_kl(tiny_llama: LoadedModel) -> None:
    generator = torch.Generator().manual_seed(0)
    d, vocab = tiny_llama.adapter.d_model, tiny_llama.adapter.vocab_size
    weight = tiny_llama.adapter.unembed.weight.detach().to(torch.bfloat16)
    x = torch.randn(300, d, generator=generator, requires_grad=True)  # 3 chunks of 128 rows
    log_p = torch.log_softmax(torch.randn(300, vocab, generator=generator), -1)
    p = log_p.exp()
    ChunkedKLReadout.apply(x, p, (p * log_p).sum(-1), weight).sum().backward()
    ours = x.grad.clone()
    x.grad = None
    plain = kl_divergence(log_p, torch.log_softmax(x.to(torch.bfloat16).float() @ weight.float().T, -1))
    plain.sum().backward()
    torch.testing.assert_close(ours, x.grad, atol=2e-2 * x.grad.abs().max().item(), rtol=0)


def test_tuned_lens_fit_by_the_recipe_lowers_dev_kl_and_keeps_the_last_layer(tiny_gptj: LoadedModel, tmp_path) -> None:
    texts = [tokenize(tiny_gptj, words(40, seed=i)) for i in range(12)]
    train, dev = token_windows(texts[:10], 16), token_windows(texts[10:], 16)
    recipe = TunedLensRecipe(steps=30, tokens_per_step=64, window=16, eval_every=10)
    maps, curve = fit_tuned_lens(tiny_gptj, train, dev, recipe, checkpoint_dir=tmp_path, progress=False)
    n, d = tiny_gptj.adapter.n_layers, tiny_gptj.adapter.d_model
    assert [point["step"] for point in curve] == [0, 10, 20, 30]
    assert curve[0]["kl"] == lens_kl_per_layer(tiny_gptj, dev, None)  # identity at the start: the logit lens
    first, last = torch.tensor(curve[0]["kl"]), torch.tensor(curve[-1]["kl"])
    assert (last[:-1] < first[:-1]).all(), (first, last)
    assert maps.residual and not maps.weight[-1].any() and not maps.bias[-1].any()  # no final-layer translator
    assert maps.weight.shape == (n, d, d)
    resumed, again = fit_tuned_lens(tiny_gptj, train, dev, recipe, checkpoint_dir=tmp_path, progress=False)
    assert again == curve and torch.equal(resumed.weight, maps.weight)  # read back from the finished run


def test_residual_maps_round_trip_exactly_enough_for_a_cell(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    n, d = tiny_llama.adapter.n_layers, tiny_llama.adapter.d_model
    generator = torch.Generator().manual_seed(3)
    delta = 0.2 * torch.randn(n, d, d, generator=generator) / d**0.5
    delta[-1] = 0
    maps = LinearMaps("tuned", delta, 0.1 * torch.randn(n, d, generator=generator), residual=True)
    loaded = load_linear_maps(save_linear_maps(tmp_path, tiny_llama, maps).parent, tiny_llama, "tuned")
    assert loaded.residual and torch.equal(loaded.weight[-1], torch.zeros(d, d))
    before = TunedLens(tiny_llama, maps).grid(TEXT, top_k=5)
    after = TunedLens(tiny_llama, loaded).grid(TEXT, top_k=5)
    for row_before, row_after in zip(before.cells, after.cells, strict=True):
        for a, b in zip(row_before, row_after, strict=True):
            assert [t.id for t in a.topk] == [t.id for t in b.topk]
            assert max(abs(x.prob - y.prob) for x, y in zip(a.topk, b.topk, strict=True)) < 1e-4


def test_cli_fits_both_linear_lenses_and_evaluates_them(tiny_gptj: LoadedModel, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from future_lens.server.cli import cli

    model_dir = tmp_path / "tiny-gptj"
    tiny_gptj.hf.save_pretrained(model_dir)
    tiny_gptj.tokenizer.save_pretrained(model_dir)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": words(60, seed=i)}) + "\n" for i in range(20)))
    out, reports = tmp_path / "lenses", tmp_path / "reports"
    common = ["--model", str(model_dir), "--corpus", str(corpus), "--limit", "16", "--prompt-dir", str(out)]
    runner = CliRunner()
    tuned = runner.invoke(cli, ["train", *common, "--method", "tuned", "--steps", "3", "--tokens-per-step", "64"])
    assert tuned.exit_code == 0, tuned.output
    jacobian = runner.invoke(cli, ["train", *common, "--method", "jacobian", "--texts", "3", "--text-tokens", "20"])
    assert jacobian.exit_code == 0, jacobian.output
    assert load_linear_maps(out, load_model_dir(model_dir), "jacobian").metadata["prompts"] == "3"
    methods = "tuned_lens,jacobian_lens,identity_patchscope,logit_lens"
    result = runner.invoke(cli, ["eval", *common, "--report-dir", str(reports), "--methods", methods])
    assert result.exit_code == 0, result.output
    report = json.loads((reports / "eval.json").read_text())
    assert set(report["methods"]) == set(methods.split(","))
    assert set(report["methods"]["tuned_lens"]["layers"]["0"]) >= {"N0", "free"}
    assert "N1" not in report["methods"]["jacobian_lens"]["layers"]["0"]  # linear lenses read N=0 only
    assert "N1" in report["methods"]["identity_patchscope"]["layers"]["0"]
    assert "tuned lens" in (reports / "eval.md").read_text()
    bad = runner.invoke(cli, ["train", *common, "--method", "lasso"])
    assert bad.exit_code == 2 and "--method" in bad.output


def load_model_dir(path: Path) -> LoadedModel:
    from future_lens.lens import load_model

    return load_model(str(path))


def test_service_serves_the_new_methods_and_names_a_missing_artifact(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    from future_lens.service import GridRequest, InvalidRequestError, LensService

    service = LensService(tiny_llama, prompt_dir=tmp_path)
    assert service.available_methods() == ["logit", "fixed", "identity"]  # no prompts, no fitted maps yet
    with pytest.raises(InvalidRequestError) as missing:
        service.plan(GridRequest(text=TEXT, method="tuned"))
    assert missing.value.field == "method" and "tuned lens" in missing.value.message
    save_linear_maps(tmp_path, tiny_llama, random_maps(tiny_llama, "tuned"))
    save_linear_maps(tmp_path, tiny_llama, random_maps(tiny_llama, "jacobian", seed=1))
    fresh = LensService(tiny_llama, prompt_dir=tmp_path)
    assert fresh.available_methods() == ["logit", "fixed", "identity", "tuned", "jacobian"]
    tuned = fresh.plan(GridRequest(text=TEXT, method="tuned", n_future=3)).compute()
    assert tuned.method == "tuned" and all(len(cell.tokens) == 1 for row in tuned.cells for cell in row)
    jacobian = fresh.plan(GridRequest(text=TEXT, method="jacobian"))
    identity = fresh.plan(GridRequest(text=TEXT, method="identity"))
    canonical = [p.canonical() for p in (fresh.plan(GridRequest(text=TEXT, method="tuned")), jacobian, identity)]
    assert canonical[0]["tuned_hash"] and canonical[1]["jacobian_hash"] and canonical[2]["prompt"]  # in the id
    assert identity.compute().method == "identity"
