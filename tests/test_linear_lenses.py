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
from future_lens.training.data import DataConfig, prepare_dataset
from future_lens.training.linear_fit import fit_jacobian_lens, fit_tuned_lens, jacobian_sums, tuned_lens_loss
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


def naive_jacobian(model: LoadedModel, token_ids: list[int]) -> torch.Tensor:
    """[L, d, d]: Σ over text positions s <= t of ∂h_final[t]/∂h_l[s], one `autograd.functional.jacobian` per (l, s):
    block l's output at s is replaced by a free input and h_final read at every later position."""
    adapter = model.adapter
    n, d = adapter.n_layers, adapter.d_model
    ids = torch.tensor([[*model.context_prefix, *token_ids]], device=model.device)
    prefix, length = len(model.context_prefix), len(token_ids)
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


def test_jacobian_sums_equal_autograd_per_position_pair(tiny_llama: LoadedModel) -> None:
    token_ids = tokenize(tiny_llama, "Paris is the capital")
    fitted = jacobian_sums(tiny_llama, token_ids, rows_per_pass=24)  # several passes over the d rows
    naive = naive_jacobian(tiny_llama, token_ids)
    torch.testing.assert_close(fitted, naive, atol=1e-4, rtol=1e-4)
    n = tiny_llama.adapter.n_layers
    # the last block's output is h_final itself: the sum over s <= t of δ_st I is T copies of the identity
    torch.testing.assert_close(fitted[n - 1], len(token_ids) * torch.eye(tiny_llama.adapter.d_model))


def test_jacobian_lens_averages_over_texts_and_position_pairs(tiny_llama: LoadedModel) -> None:
    texts = [tokenize(tiny_llama, "Paris is the capital"), tokenize(tiny_llama, "Hi there")]
    maps = fit_jacobian_lens(tiny_llama, texts, progress=False)
    pairs = sum(len(t) * (len(t) + 1) // 2 for t in texts)
    expected = (jacobian_sums(tiny_llama, texts[0]) + jacobian_sums(tiny_llama, texts[1])) / pairs
    torch.testing.assert_close(maps.weight, expected)
    assert maps.kind == "jacobian" and not maps.bias.any() and maps.metadata["prompts"] == 2


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


def test_fitting_the_tuned_lens_lowers_its_loss(tiny_gptj: LoadedModel, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": words(60, seed=i)}) + "\n" for i in range(20)))
    data = DataConfig(corpus=str(corpus), max_train=64, max_dev=8, cuts_per_doc=8)
    train = prepare_dataset(tiny_gptj, data)[0].train
    maps, losses = fit_tuned_lens(tiny_gptj, train, examples=640, batch=16, lr=1e-2, progress=False)
    n, d = tiny_gptj.adapter.n_layers, tiny_gptj.adapter.d_model
    states = train.states.float()
    from future_lens.training.linear_fit import final_log_probs

    target = final_log_probs(tiny_gptj, train.future_final[:, 0])
    with torch.no_grad():
        before = tuned_lens_loss(tiny_gptj, torch.zeros(n, d, d), torch.zeros(n, d), states, target)
        after = tuned_lens_loss(tiny_gptj, maps.weight - torch.eye(d), maps.bias, states, target)
    assert (after[:-1] < 0.8 * before[:-1]).all(), (before, after)
    assert losses[-1] < losses[0] and maps.metadata["examples"] == 640


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
    tuned = runner.invoke(cli, ["train", *common, "--method", "tuned", "--examples", "32", "--batch", "8"])
    assert tuned.exit_code == 0, tuned.output
    jacobian = runner.invoke(cli, ["train", *common, "--method", "jacobian", "--texts", "3", "--text-tokens", "5"])
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
