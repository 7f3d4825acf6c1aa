"""Peers' lens formats: the tuned-lens package's folder and the Jacobian lens's .pt, read, written and cross-checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from future_lens.lens.interop import (
    PeerFormatError,
    read_jacobian_lens,
    read_peer_lens,
    read_tuned_lens,
    write_jacobian_lens,
    write_tuned_lens,
)
from future_lens.lens.linear import JacobianLens, LinearMaps, TunedLens, load_linear_maps
from future_lens.lens.models import LoadedModel
from future_lens.lens.source import tokenize

TEXT = "The cat sat on the mat because"
#: where `make peers` installs the tuned-lens package (no dependencies: its `nn` module needs only torch + transformers)
PEERS = Path(os.environ.get("FUTURE_LENS_PEERS", Path(sys.prefix) / "peers"))


def hand_written_tuned_lens(folder: Path, model: LoadedModel, seed: int = 0) -> dict[str, torch.Tensor]:
    """A tuned-lens folder written by hand in the package's layout: config.json + params.pt with translators 0..L-1
    (0: the embeddings; i: block i - 1)."""
    n, d = model.adapter.n_layers, model.adapter.d_model
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for i in range(n):
        state[f"{i}.weight"] = 0.3 * torch.randn(d, d, generator=generator) / d**0.5
        state[f"{i}.bias"] = 0.2 * torch.randn(d, generator=generator)
    folder.mkdir(parents=True)
    torch.save(state, folder / "params.pt")
    config = {
        "base_model_name_or_path": "tiny",
        "d_model": d,
        "num_hidden_layers": n,
        "bias": True,
        "base_model_revision": None,
        "unembed_hash": None,
        "lens_type": "linear_tuned_lens",
    }
    (folder / "config.json").write_text(json.dumps(config))
    return state


def block_outputs(model: LoadedModel, text: str) -> list[torch.Tensor]:
    """Every block's output but the last at the text's positions, from transformers' hidden states."""
    ids = torch.tensor([[*model.context_prefix, *tokenize(model, text)]])
    with torch.no_grad():
        hidden = model.hf(ids, output_hidden_states=True).hidden_states
    return [h[0, len(model.context_prefix) :].float() for h in hidden[1:-1]]


def readout(model: LoadedModel, states: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(model.hf.lm_head(model.hf.model.norm(states)).float(), -1)


def assert_grid_reads(grid, layer_probs: dict[int, torch.Tensor]) -> None:
    for layer, probs in layer_probs.items():
        expected_probs, expected_ids = probs.topk(3, dim=-1)
        row = grid.cells[grid.layers.index(layer)]
        assert [[t.id for t in cell.topk] for cell in row] == expected_ids.tolist()
        got = torch.tensor([[t.prob for t in cell.topk] for cell in row])
        torch.testing.assert_close(got, expected_probs, atol=1e-4, rtol=0)


def test_a_hand_written_tuned_lens_folder_imports_and_reads_h_plus_wh_plus_b(tiny_llama, tmp_path: Path) -> None:
    from future_lens.server.cli import cli

    state = hand_written_tuned_lens(tmp_path / "lens", tiny_llama)
    out = tmp_path / "ours"
    result = CliRunner().invoke(cli, ["import-lens", str(tmp_path / "lens"), "--model", "x", "--prompt-dir", str(out)])
    assert result.exit_code == 2 and "x" in result.output  # an unknown model: a clear error, nothing written
    maps = read_peer_lens(tmp_path / "lens", tiny_llama)
    assert maps.kind == "tuned" and maps.residual and maps.metadata["imported_from"] == "tuned-lens"
    n = tiny_llama.adapter.n_layers
    grid = TunedLens(tiny_llama, maps).grid(TEXT, layers=list(range(n)), top_k=3)
    expected = {}
    for layer, states in enumerate(block_outputs(tiny_llama, TEXT)):  # block l reads translator l + 1
        w, b = state[f"{layer + 1}.weight"], state[f"{layer + 1}.bias"]
        expected[layer] = readout(tiny_llama, states + states @ w.T + b)
    assert_grid_reads(grid, expected)
    assert not maps.weight[-1].any() and not maps.bias[-1].any()  # the final layer: the model's own readout


def test_a_hand_written_jacobian_lens_file_imports_and_reads_norm_of_j_h(tiny_llama, tmp_path: Path) -> None:
    n, d = tiny_llama.adapter.n_layers, tiny_llama.adapter.d_model
    generator = torch.Generator().manual_seed(1)
    matrices = {layer: (torch.eye(d) + 0.2 * torch.randn(d, d, generator=generator)).half() for layer in range(n - 1)}
    saved = {"J": matrices, "n_prompts": 7, "source_layers": list(range(n - 1)), "d_model": d, "metadata": {"a": 1}}
    torch.save(saved, tmp_path / "tiny_jacobian_lens.pt")
    maps = read_peer_lens(tmp_path / "tiny_jacobian_lens.pt", tiny_llama)
    assert maps.kind == "jacobian" and maps.metadata["prompts"] == "7" and torch.equal(maps.weight[-1], torch.eye(d))
    grid = JacobianLens(tiny_llama, maps).grid(TEXT, layers=list(range(n)), top_k=3)
    expected = {
        layer: readout(tiny_llama, states @ matrices[layer].float().T)
        for layer, states in enumerate(block_outputs(tiny_llama, TEXT))
    }
    assert_grid_reads(grid, expected)


def test_both_formats_round_trip_through_our_writer_and_the_cli(tiny_llama, tmp_path: Path, monkeypatch) -> None:
    from future_lens.lens import models
    from future_lens.server.cli import cli

    monkeypatch.setattr(models, "load_model", lambda *a, **k: tiny_llama)
    hand_written_tuned_lens(tmp_path / "peer", tiny_llama)
    tuned = read_tuned_lens(tmp_path / "peer", tiny_llama)
    runner = CliRunner()
    out = tmp_path / "ours"
    imported = runner.invoke(cli, ["import-lens", str(tmp_path / "peer"), "--prompt-dir", str(out)])
    assert imported.exit_code == 0, imported.output
    stored = load_linear_maps(out, tiny_llama, "tuned")
    torch.testing.assert_close(stored.weight, tuned.weight, atol=2e-3 * tuned.weight.abs().max().item(), rtol=0)
    exported = runner.invoke(cli, ["export-lens", "tuned", str(tmp_path / "back"), "--prompt-dir", str(out)])
    assert exported.exit_code == 0, exported.output
    again = read_tuned_lens(tmp_path / "back", tiny_llama)
    assert torch.equal(again.weight, stored.weight) and torch.equal(again.bias, stored.bias)

    n, d = tiny_llama.adapter.n_layers, tiny_llama.adapter.d_model
    jacobian = LinearMaps("jacobian", torch.eye(d).repeat(n, 1, 1) * 0.5, torch.zeros(n, d), {"prompts": "3"})
    path = write_jacobian_lens(jacobian, tiny_llama, tmp_path / "j.pt")
    back = read_jacobian_lens(path, tiny_llama)
    assert torch.equal(back.weight[:-1], jacobian.weight[:-1]) and torch.equal(back.weight[-1], torch.eye(d))
    assert back.metadata["prompts"] == "3"
    imported = runner.invoke(cli, ["import-lens", str(path), "--prompt-dir", str(out)])
    assert imported.exit_code == 0 and "jacobian lens" in imported.output
    assert torch.equal(load_linear_maps(out, tiny_llama, "jacobian").weight, back.weight)


class Payload:
    """Anything but plain tensors: torch.load(weights_only=True) must refuse it."""


def test_bad_peer_files_give_clear_errors_and_no_code_runs(tiny_llama, tmp_path: Path, monkeypatch) -> None:
    from future_lens.lens import models
    from future_lens.server.cli import cli

    monkeypatch.setattr(models, "load_model", lambda *a, **k: tiny_llama)
    n, d = tiny_llama.adapter.n_layers, tiny_llama.adapter.d_model
    torch.save({"J": {0: Payload()}}, tmp_path / "evil.pt")
    with pytest.raises(PeerFormatError, match="plain-tensor"):
        read_peer_lens(tmp_path / "evil.pt", tiny_llama)
    torch.save({"J": {0: torch.eye(d)}, "d_model": d}, tmp_path / "short.pt")
    if n > 2:
        with pytest.raises(PeerFormatError, match=r"needs 0\.\."):
            read_peer_lens(tmp_path / "short.pt", tiny_llama)
    torch.save({"J": {layer: torch.eye(d + 1) for layer in range(n - 1)}}, tmp_path / "wide.pt")
    with pytest.raises(PeerFormatError, match="shape"):
        read_peer_lens(tmp_path / "wide.pt", tiny_llama)
    hand_written_tuned_lens(tmp_path / "other", tiny_llama)
    config = json.loads((tmp_path / "other" / "config.json").read_text())
    (tmp_path / "other" / "config.json").write_text(json.dumps({**config, "d_model": 999}))
    with pytest.raises(PeerFormatError, match="d_model=999"):
        read_peer_lens(tmp_path / "other", tiny_llama)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    result = CliRunner().invoke(cli, ["import-lens", str(tmp_path / "half"), "--prompt-dir", str(tmp_path / "o")])
    assert result.exit_code == 2 and "params.pt" in result.output and not (tmp_path / "o").exists()
    missing = CliRunner().invoke(cli, ["import-lens", str(tmp_path / "nothing"), "--prompt-dir", str(tmp_path / "o")])
    assert missing.exit_code == 2 and "does not exist" in missing.output


PEER_CHECK = """
import json, sys
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from tuned_lens.nn.lenses import TunedLens
from tuned_lens.nn.unembed import Unembed

model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
lens = TunedLens.from_unembed_and_pretrained(Unembed(model), lens_resource_id=sys.argv[2])
states = load_file(sys.argv[3])
with torch.no_grad():
    out = {name: lens(h, idx=int(name) + 1) for name, h in states.items()}  # block l: hidden_states[l + 1]
torch.save(out, sys.argv[4])
"""


def test_our_fitted_lens_gives_the_same_logits_in_the_tuned_lens_package(tiny_llama, tmp_path: Path) -> None:
    if not (PEERS / "tuned_lens").is_dir():
        pytest.skip(f"the tuned-lens package is not installed in {PEERS} (`make peers`)")
    n, d = tiny_llama.adapter.n_layers, tiny_llama.adapter.d_model
    generator = torch.Generator().manual_seed(2)
    delta = 0.3 * torch.randn(n, d, d, generator=generator) / d**0.5
    delta[-1] = 0
    bias = 0.2 * torch.randn(n, d, generator=generator)
    bias[-1] = 0
    maps = LinearMaps("tuned", delta, bias, residual=True)
    write_tuned_lens(maps, tiny_llama, tmp_path / "lens")
    tiny_llama.hf.save_pretrained(tmp_path / "model")
    states = {str(layer): h.contiguous() for layer, h in enumerate(block_outputs(tiny_llama, TEXT))}
    save_file(states, str(tmp_path / "states.safetensors"))
    env = {**os.environ, "PYTHONPATH": str(PEERS), "HF_HUB_OFFLINE": "1"}
    args = [tmp_path / "model", tmp_path / "lens", tmp_path / "states.safetensors", tmp_path / "theirs.pt"]
    run = subprocess.run([sys.executable, "-c", PEER_CHECK, *map(str, args)], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    theirs = torch.load(tmp_path / "theirs.pt", weights_only=True)
    lens = TunedLens(tiny_llama, maps)
    for name, h in states.items():
        layer = torch.full((len(h),), int(name))
        with torch.no_grad():
            ours = tiny_llama.adapter.logits_from_hidden(lens.readout_states(h, layer)).float()
        torch.testing.assert_close(theirs[name].float(), ours, atol=1e-4, rtol=1e-4)
