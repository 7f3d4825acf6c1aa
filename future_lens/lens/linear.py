"""Linear lenses: a per-layer affine map of the hidden state, then the model's own final norm + unembedding.

- Tuned lens (Belrose et al. 2023): `A_l h + b_l`, trained so the readout matches the model's final next-token
  distribution (KL).
- Jacobian lens: `J_l h` with `J_l = E[∂h_final / ∂h_l]`, the model's average linear response of the last block's
  output to block l's output, over prompts, source positions and current-and-future target positions.

Both read the next token only (N = 0, like the logit lens): asked for N >= 1, a grid has one token per cell and the
evaluation tables show "–". A linear map reads what the state says about the position it sits at; decoding further
would need the model's later positions, which the map does not provide, so no multi-token phrase is claimed.

Artifact: `checkpoints/<model id>/<kind>-lens.safetensors` with tensors `bias` [L, d] (float32) and either `delta`
[L, d, d] (float16; the readout is `h + Δ h + b`, so the identity and the final layer's Δ = 0 are exact and Δ's
rounding is ~5e-4 of a small residual) or `weight` [L, d, d] (float16; `W h + b`), and string metadata (`kind`,
`model_id`, `model_fingerprint`, `d_model`, `n_layers`, how it was fitted).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from future_lens.atomic import atomic_path
from future_lens.lens.lenses import LogitLens
from future_lens.lens.models import LoadedModel
from future_lens.lens.prompts import PromptArtifactError, default_prompt_dir, tensor_hash

LINEAR_KINDS = ("tuned", "jacobian")


class LinearLensArtifactError(PromptArtifactError):
    """A linear-lens artifact is missing, malformed, or belongs to other weights."""


def matrix_name(residual: bool) -> str:
    """The artifact's name for the d×d maps: `delta` (from the identity) or `weight` (the whole map)."""
    return "delta" if residual else "weight"


def linear_lens_file(directory: Path, kind: str) -> Path:
    return directory / f"{kind}-lens.safetensors"


@dataclass
class LinearMaps:
    """One affine map per layer: `weight` [L, d, d] and `bias` [L, d]. The readout is `weight[l] @ h + bias[l]`, or
    `h + weight[l] @ h + bias[l]` when `residual` (the weight is then the translator's Δ from the identity)."""

    kind: str
    weight: torch.Tensor
    bias: torch.Tensor
    metadata: dict[str, str] = field(default_factory=dict)
    residual: bool = False
    _hash: str | None = field(default=None, repr=False)

    def apply(self, states: torch.Tensor, layers: torch.Tensor) -> torch.Tensor:
        """Translated states [C, d] (float32) for `states` [C, d] taken at blocks `layers` [C], one matrix product
        per distinct layer."""
        states = states.float()
        out = torch.empty_like(states)
        for layer in torch.unique(layers).tolist():
            rows = torch.nonzero(layers == layer).squeeze(1).to(states.device)
            weight = self.weight[layer].to(states.device, torch.float32)
            mapped = states[rows] @ weight.T + self.bias[layer].to(states.device, torch.float32)
            out[rows] = states[rows] + mapped if self.residual else mapped
        return out

    def content_hash(self) -> str:
        """What the maps are (part of a grid's permalink id), computed once."""
        if self._hash is None:
            form = torch.tensor([1.0 if self.residual else 0.0])
            self._hash = tensor_hash(torch.cat([self.weight.flatten(), self.bias.flatten(), form]))
        return self._hash


def save_linear_maps(directory: Path, model: LoadedModel, maps: LinearMaps) -> Path:
    """Write the maps for `model` atomically, stamped with the weights' fingerprint."""
    if maps.kind not in LINEAR_KINDS:
        raise ValueError(f"kind must be one of {LINEAR_KINDS}, got {maps.kind!r}")
    directory.mkdir(parents=True, exist_ok=True)
    meta = {
        **{key: str(value) for key, value in maps.metadata.items()},
        "kind": maps.kind,
        "model_id": model.id,
        "model_fingerprint": model.fingerprint,
        "d_model": str(model.adapter.d_model),
        "n_layers": str(model.adapter.n_layers),
    }
    tensors = {  # the d×d maps in float16 (half the size; relative rounding ~5e-4), applied in float32
        matrix_name(maps.residual): maps.weight.detach().to("cpu", torch.float16).contiguous(),
        "bias": maps.bias.detach().to("cpu", torch.float32).contiguous(),
    }
    path = linear_lens_file(directory, maps.kind)
    with atomic_path(path) as staging:
        save_file(tensors, str(staging), metadata=meta)
    return path


def _linear_artifact_problem(path: Path, model: LoadedModel, kind: str) -> str | None:
    """Why the `kind` artifact at `path` cannot serve `model`, read from its header alone (metadata and shapes, no
    tensor data): None when it can."""
    if not path.is_file():
        fit = f"fit one with `future-lens train --method {kind}`"
        return f"no {kind} lens for model {model.id!r} in {path.parent} ({fit})"
    try:
        with safe_open(str(path), framework="pt") as artifact:
            meta = artifact.metadata() or {}
            names = set(artifact.keys())
            shapes = {name: tuple(artifact.get_slice(name).get_shape()) for name in names}
    except Exception as error:  # a truncated or foreign file: safetensors raises its own error types
        return f"{path}: not a readable safetensors file ({type(error).__name__})"
    if names not in ({"weight", "bias"}, {"delta", "bias"}):
        return f"{path}: expected tensors bias and weight or delta, found {sorted(names)[:4]}"
    if meta.get("model_fingerprint") != model.fingerprint:
        return (
            f"{path} was fitted for weights {meta.get('model_fingerprint')!r} ({meta.get('model_id')}), "
            f"but the loaded model {model.id!r} has fingerprint {model.fingerprint!r}"
        )
    n, d = model.adapter.n_layers, model.adapter.d_model
    matrix = shapes.get("delta", shapes.get("weight"))
    if matrix != (n, d, d) or shapes["bias"] != (n, d):
        return f"{path}: shapes {matrix}, {shapes['bias']} do not fit {n} layers of d_model={d}"
    return None


def check_linear_maps(directory: Path, model: LoadedModel, kind: str) -> str | None:
    """Why `directory` has no usable `kind` maps for `model` (None: it has), from the artifact's header alone."""
    return _linear_artifact_problem(linear_lens_file(directory, kind), model, kind)


def load_linear_maps(directory: Path, model: LoadedModel, kind: str) -> LinearMaps:
    """The `kind` maps fitted for exactly `model`'s weights; LinearLensArtifactError otherwise. The header (weights'
    fingerprint, shapes) is checked before any tensor is read."""
    path = linear_lens_file(directory, kind)
    problem = _linear_artifact_problem(path, model, kind)
    if problem is not None:
        raise LinearLensArtifactError(problem)
    with safe_open(str(path), framework="pt") as artifact:
        meta = artifact.metadata() or {}
        names = artifact.keys()
        residual = "delta" in names
        weight, bias = artifact.get_tensor(matrix_name(residual)), artifact.get_tensor("bias")
    return LinearMaps(kind, weight.float(), bias.float(), meta, residual=residual)


class LinearMapLens(LogitLens):
    """Final norm + unembedding of a per-layer affine translation of the state: the next token only."""

    kind: ClassVar[str]

    def __init__(self, model: LoadedModel, maps: LinearMaps | Path | None = None):
        super().__init__(model)
        if not isinstance(maps, LinearMaps):
            maps = load_linear_maps(Path(maps) if maps else default_prompt_dir(model.id), model, self.kind)
        if maps.kind != self.kind:
            raise LinearLensArtifactError(f"{self.method} lens needs {self.kind} maps, got {maps.kind!r}")
        self.maps = maps

    def readout_states(self, states: torch.Tensor, layers: torch.Tensor) -> torch.Tensor:
        """The states through their layers' affine maps (in float32)."""
        return self.maps.apply(states, layers)

    def describe(self, layers: list[int]) -> dict[str, object]:
        fitted = {k: v for k, v in self.maps.metadata.items() if k in ("examples", "prompts", "objective", "fitted")}
        return {"lens_fit": fitted}

    def identity(self, layers: list[int]) -> dict[str, object]:
        return {f"{self.kind}_hash": self.maps.content_hash()}


class TunedLens(LinearMapLens):
    """Belrose et al. (2023): an affine translator per layer, trained to match the final next-token distribution."""

    method = "tuned"
    kind = "tuned"


class JacobianLens(LinearMapLens):
    """`J_l h` with `J_l` the average Jacobian of the last block's output w.r.t. block l's output."""

    method = "jacobian"
    kind = "jacobian"
