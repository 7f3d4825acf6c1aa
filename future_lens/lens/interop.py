"""Peers' linear-lens formats, read into our `LinearMaps` and written back out.

- The `tuned-lens` package (Belrose et al. 2023) saves a folder: `config.json` (`TunedLensConfig`: d_model,
  num_hidden_layers, bias, lens_type, base_model_name_or_path, ...) and `params.pt`, the state dict of its
  `layer_translators` (`{i}.weight` [d, d], `{i}.bias` [d]) for the L hidden states that precede the output:
  index 0 is the embeddings, index i the output of block i - 1; the last block's output has no translator. A
  translator is applied residually: `h + W h + b`.
- The Jacobian lens (Anthropic's `jlens`, TransformerLens' `jacobian_lens.py`) saves one `torch.save` dict:
  `{"J": {layer: [d, d]}, "n_prompts": int, "source_layers": [int], "d_model": int, "metadata": {...}}`; the lens
  reads `final_norm(J_l h)` and the last layer is the identity.

Files are read with `torch.load(weights_only=True)` (plain tensors and containers; no code from a pickle).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from future_lens.lens.linear import LinearLensArtifactError, LinearMaps
from future_lens.lens.models import LoadedModel

TUNED_LENS_TYPE = "linear_tuned_lens"
PEER_FORMATS = ("tuned-lens", "jacobian-lens")


class PeerFormatError(LinearLensArtifactError):
    """A peer's lens file is missing, malformed, or does not fit the model."""


def detect_format(path: Path) -> str:
    """`tuned-lens` for a folder with config.json + params.pt, `jacobian-lens` for a single .pt file."""
    if path.is_dir():
        if (path / "config.json").is_file() and (path / "params.pt").is_file():
            return "tuned-lens"
        raise PeerFormatError(f"{path}: a tuned-lens folder needs config.json and params.pt")
    if path.is_file():
        return "jacobian-lens"
    raise PeerFormatError(f"{path} does not exist")


def _load_tensors(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError for anything but plain tensors and containers
        raise PeerFormatError(f"{path}: not a plain-tensor torch file ({type(error).__name__}: {error})") from None


def _check_shape(name: str, tensor: object, shape: tuple[int, ...], path: Path) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape:
        found = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise PeerFormatError(f"{path}: {name} should be a tensor of shape {shape}, found {found}")
    return tensor.float()


def read_tuned_lens(folder: Path, model: LoadedModel) -> LinearMaps:
    """Our residual maps from a tuned-lens folder: translator i + 1 for block i; the embeddings' translator 0 is
    dropped (the grid shows block outputs) and the final layer stays the identity."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise PeerFormatError(f"{folder}/config.json: {error}") from None
    n, d = model.adapter.n_layers, model.adapter.d_model
    if config.get("lens_type", TUNED_LENS_TYPE) != TUNED_LENS_TYPE:
        raise PeerFormatError(f"{folder}: lens_type {config.get('lens_type')!r} is not {TUNED_LENS_TYPE!r}")
    if config.get("d_model") != d or config.get("num_hidden_layers") != n:
        raise PeerFormatError(
            f"{folder}: the lens is for d_model={config.get('d_model')}, {config.get('num_hidden_layers')} layers; "
            f"model {model.id!r} has d_model={d}, {n} layers"
        )
    state = _load_tensors(folder / "params.pt")
    if not isinstance(state, dict):
        raise PeerFormatError(f"{folder}/params.pt: expected the translators' state dict")
    state = {key.removeprefix("layer_translators."): value for key, value in state.items()}
    delta, bias = torch.zeros(n, d, d), torch.zeros(n, d)
    for layer in range(n - 1):
        delta[layer] = _check_shape(f"{layer + 1}.weight", state.get(f"{layer + 1}.weight"), (d, d), folder)
        if config.get("bias", True):
            bias[layer] = _check_shape(f"{layer + 1}.bias", state.get(f"{layer + 1}.bias"), (d,), folder)
    metadata = {
        "imported_from": "tuned-lens",
        "source": folder.name,
        "base_model": str(config.get("base_model_name_or_path")),
        "objective": "imported tuned-lens translators (h + W h + b)",
    }
    return LinearMaps("tuned", delta, bias, metadata, residual=True)


def write_tuned_lens(maps: LinearMaps, model: LoadedModel, folder: Path, base_model: str | None = None) -> Path:
    """A tuned-lens folder for `maps` (ours: block i's translator becomes index i + 1; index 0, the embeddings,
    which we do not fit, is written as the zero translator, i.e. the logit lens there)."""
    if maps.kind != "tuned":
        raise ValueError(f"only tuned maps have the tuned-lens format, got {maps.kind!r}")
    n, d = model.adapter.n_layers, model.adapter.d_model
    delta = maps.weight if maps.residual else maps.weight - torch.eye(d)
    state = {"0.weight": torch.zeros(d, d), "0.bias": torch.zeros(d)}
    for layer in range(n - 1):
        state[f"{layer + 1}.weight"] = delta[layer].float().contiguous()
        state[f"{layer + 1}.bias"] = maps.bias[layer].float().contiguous()
    config = {
        "base_model_name_or_path": base_model or model.id,
        "d_model": d,
        "num_hidden_layers": n,
        "bias": True,
        "base_model_revision": None,
        "unembed_hash": None,
        "lens_type": TUNED_LENS_TYPE,
    }
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "params.pt")
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def read_jacobian_lens(path: Path, model: LoadedModel) -> LinearMaps:
    """Our maps from a J-lens file: J_l for every block but the last (which is the identity)."""
    saved = _load_tensors(path)
    if not isinstance(saved, dict) or not isinstance(saved.get("J"), dict):
        raise PeerFormatError(f"{path}: expected a dict with a 'J' dict of per-layer matrices")
    n, d = model.adapter.n_layers, model.adapter.d_model
    if saved.get("d_model", d) != d:
        raise PeerFormatError(f"{path}: the lens is for d_model={saved.get('d_model')}; model {model.id!r} has {d}")
    matrices = {int(layer): value for layer, value in saved["J"].items()}
    missing = [layer for layer in range(n - 1) if layer not in matrices]
    if missing or any(layer >= n for layer in matrices):
        raise PeerFormatError(
            f"{path}: J covers layers {sorted(matrices)}; model {model.id!r} needs 0..{n - 2} "
            "(the last is the identity)"
        )
    weight = torch.eye(d).repeat(n, 1, 1)
    for layer in range(n - 1):
        weight[layer] = _check_shape(f"J[{layer}]", matrices[layer], (d, d), path)
    metadata = {
        "imported_from": "jacobian-lens",
        "source": path.name,
        "prompts": str(saved.get("n_prompts", "?")),
        "objective": "imported J-lens (final_norm(J h))",
        "peer_metadata": json.dumps(saved.get("metadata", {}), default=str)[:2000],
    }
    return LinearMaps("jacobian", weight, torch.zeros(n, d), metadata)


def write_jacobian_lens(maps: LinearMaps, model: LoadedModel, path: Path) -> Path:
    """A J-lens file for `maps` (float16, as the authors save it; the identity last layer is left out)."""
    if maps.kind != "jacobian" or maps.residual or maps.bias.any():
        raise ValueError("only bias-free whole-map jacobian maps have the J-lens format")
    n = model.adapter.n_layers
    saved = {
        "J": {layer: maps.weight[layer].to(torch.float16).contiguous() for layer in range(n - 1)},
        "n_prompts": int(maps.metadata.get("prompts", 0) or 0),
        "source_layers": list(range(n - 1)),
        "d_model": model.adapter.d_model,
        "metadata": {"model_name": model.id, "exported_by": "future-lens"},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(saved, path)
    return path


def read_peer_lens(path: Path, model: LoadedModel, format: str | None = None) -> LinearMaps:
    """A peer's lens in `format` (`PEER_FORMATS`; detected from the path when None) as our maps."""
    chosen = format or detect_format(path)
    if chosen not in PEER_FORMATS:
        raise PeerFormatError(f"format must be one of {', '.join(PEER_FORMATS)}, got {chosen!r}")
    if not path.exists():
        raise PeerFormatError(f"{path} does not exist")
    return read_tuned_lens(path, model) if chosen == "tuned-lens" else read_jacobian_lens(path, model)
