"""Linear lenses: a per-layer affine map of the hidden state, then the model's own final norm + unembedding.

- Tuned lens (Belrose et al. 2023): `A_l h + b_l`, trained so the readout matches the model's final next-token
  distribution (KL).
- Jacobian lens: `J_l h` with `J_l = E[∂h_final / ∂h_l]`, the model's average linear response of the last block's
  output to block l's output, over prompts, source positions and current-and-future target positions.

Both read the next token only (N = 0, like the logit lens): asked for N >= 1, a grid has one token per cell and the
evaluation tables show "–". A linear map reads what the state says about the position it sits at; decoding further
would need the model's later positions, which the map does not provide, so no multi-token phrase is claimed.

Artifact: `checkpoints/<model id>/<kind>-lens.safetensors` with tensors `weight` [L, d, d] (float16), `bias` [L, d]
and string metadata (`kind`, `model_id`, `model_fingerprint`, `d_model`, `n_layers`, how it was fitted).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from app.atomic import atomic_path
from app.lens.engine import CellPredictions
from app.lens.lenses import Lens, logit_lens_topk
from app.lens.models import LoadedModel
from app.lens.prompts import PromptArtifactError, default_prompt_dir, tensor_hash

LINEAR_KINDS = ("tuned", "jacobian")


class LinearLensArtifactError(PromptArtifactError):
    """A linear-lens artifact is missing, malformed, or belongs to other weights."""


def linear_lens_file(directory: Path, kind: str) -> Path:
    return directory / f"{kind}-lens.safetensors"


@dataclass
class LinearMaps:
    """One affine map per layer: `weight` [L, d, d] and `bias` [L, d] (readout: weight[l] @ h + bias[l])."""

    kind: str
    weight: torch.Tensor
    bias: torch.Tensor
    metadata: dict[str, str] = field(default_factory=dict)
    _hash: str | None = field(default=None, repr=False)

    def apply(self, states: torch.Tensor, layers: torch.Tensor) -> torch.Tensor:
        """Translated states [C, d] for `states` [C, d] taken at blocks `layers` [C]."""
        weight = self.weight[layers].to(states.device, torch.float32)
        bias = self.bias[layers].to(states.device, torch.float32)
        return torch.einsum("cij,cj->ci", weight, states.float()) + bias

    def content_hash(self) -> str:
        """What the maps are (part of a grid's permalink id), computed once."""
        if self._hash is None:
            self._hash = tensor_hash(torch.cat([self.weight.flatten(), self.bias.flatten()]))
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
        "weight": maps.weight.detach().to("cpu", torch.float16).contiguous(),
        "bias": maps.bias.detach().to("cpu", torch.float32).contiguous(),
    }
    path = linear_lens_file(directory, maps.kind)
    with atomic_path(path) as staging:
        save_file(tensors, str(staging), metadata=meta)
    return path


def load_linear_maps(directory: Path, model: LoadedModel, kind: str) -> LinearMaps:
    """The `kind` maps fitted for exactly `model`'s weights; LinearLensArtifactError otherwise."""
    path = linear_lens_file(directory, kind)
    if not path.is_file():
        raise LinearLensArtifactError(
            f"no {kind} lens for model {model.id!r} in {directory} (fit one with `future-lens train --method {kind}`)"
        )
    with safe_open(str(path), framework="pt") as artifact:
        meta = artifact.metadata() or {}
        names = set(artifact.keys())
        if names != {"weight", "bias"}:
            raise LinearLensArtifactError(f"{path}: expected tensors weight and bias, found {sorted(names)}")
        weight, bias = artifact.get_tensor("weight"), artifact.get_tensor("bias")
    if meta.get("model_fingerprint") != model.fingerprint:
        raise LinearLensArtifactError(
            f"{path} was fitted for weights {meta.get('model_fingerprint')!r} ({meta.get('model_id')}), "
            f"but the loaded model {model.id!r} has fingerprint {model.fingerprint!r}"
        )
    n, d = model.adapter.n_layers, model.adapter.d_model
    if tuple(weight.shape) != (n, d, d) or tuple(bias.shape) != (n, d):
        raise LinearLensArtifactError(
            f"{path}: shapes {tuple(weight.shape)}, {tuple(bias.shape)} do not fit {n} layers of d_model={d}"
        )
    return LinearMaps(kind, weight.float(), bias.float(), meta)


class LinearMapLens(Lens):
    """Final norm + unembedding of a per-layer affine translation of the state: the next token only."""

    kind: ClassVar[str]
    max_future = 1

    def __init__(self, model: LoadedModel, maps: LinearMaps | Path | None = None):
        super().__init__(model)
        if not isinstance(maps, LinearMaps):
            maps = load_linear_maps(Path(maps) if maps else default_prompt_dir(model.id), model, self.kind)
        if maps.kind != self.kind:
            raise LinearLensArtifactError(f"{self.method} lens needs {self.kind} maps, got {maps.kind!r}")
        self.maps = maps

    def predict(self, states: torch.Tensor, layers: torch.Tensor, n_future: int, top_k: int) -> CellPredictions:
        translated = self.maps.apply(states.to(self.model.device), layers.to(self.model.device))
        topk_probs, topk_ids = logit_lens_topk(self.model, translated, top_k)
        return CellPredictions(topk_ids[:, :1], topk_probs[:, :1], topk_ids, topk_probs).cpu()

    def describe(self, layers: list[int]) -> dict[str, object]:
        fitted = {k: v for k, v in self.maps.metadata.items() if k in ("examples", "prompts", "objective", "fitted")}
        return {f"{self.kind}_lens": fitted}

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
