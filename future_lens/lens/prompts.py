"""Soft-prompt artifacts: one `.safetensors` per layer plus a `manifest.json`, tied to the exact model weights.

Layout: `<dir>/layer_{l:02d}.safetensors` holds tensor `soft_prompt` (float32, [P, d]) and string metadata
(`model_id`, `model_fingerprint`, `layer`, `prompt_len`, `trained_on_n`, `examples`, `seed`, ...);
`<dir>/manifest.json` lists the layers, their files and metrics.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from future_lens.atomic import atomic_path, atomic_write_json
from future_lens.lens.catalog import artifacts_dir
from future_lens.lens.models import LoadedModel
from future_lens.paths import user_checkpoints

MANIFEST_SCHEMA = "future-lens.prompts/1"
MANIFEST_NAME = "manifest.json"
PROMPT_TENSOR = "soft_prompt"


class PromptArtifactError(ValueError):
    """A soft-prompt artifact is missing, malformed, or belongs to other weights."""


def default_prompt_dir(model_id: str) -> Path:
    """Where a model's prompts and lens maps are read from: the user's own folder once it holds a manifest (or
    FUTURE_LENS_CHECKPOINTS is set), else the catalog entry's `artifacts` (the package's, for the embedded model)."""
    own = user_checkpoints() / model_id
    if "FUTURE_LENS_CHECKPOINTS" in os.environ or (own / MANIFEST_NAME).is_file():
        return own
    return artifacts_dir(model_id) or own


def output_prompt_dir(model_id: str) -> Path:
    """Where training and imports write a model's prompts by default: the user's folder, never the package."""
    return user_checkpoints() / model_id


def layer_file(layer: int) -> str:
    return f"layer_{layer:02d}.safetensors"


def tensor_hash(tensor: torch.Tensor) -> str:
    """sha256 (16 hex digits) over a tensor's shape, dtype and bytes."""
    data = tensor.detach().to("cpu").contiguous()
    digest = hashlib.sha256(f"{tuple(data.shape)}|{data.dtype}".encode())
    digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()[:16]


@dataclass
class SoftPromptSet:
    """The trained prompts of one model, by layer; layers without one borrow the nearest trained layer's."""

    directory: Path | None
    prompts: dict[int, torch.Tensor]
    metadata: dict[int, dict[str, str]] = field(default_factory=dict)
    _hashes: dict[int, str] = field(default_factory=dict, repr=False)

    def source_layer(self, layer: int) -> int:
        """The trained layer used for `layer`: itself, else the nearest (the lower one on a tie)."""
        return min(self.prompts, key=lambda trained: (abs(trained - layer), trained))

    def for_layer(self, layer: int) -> torch.Tensor:
        return self.prompts[self.source_layer(layer)]

    def hash_of(self, layer: int) -> str:
        """`tensor_hash` of trained layer `layer`'s prompt (computed once)."""
        if layer not in self._hashes:
            self._hashes[layer] = tensor_hash(self.prompts[layer])
        return self._hashes[layer]


def read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST_NAME
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def save_soft_prompt(
    directory: Path,
    model: LoadedModel,
    layer: int,
    prompt: torch.Tensor,
    metadata: dict[str, object] | None = None,
    metrics: dict[str, float] | None = None,
) -> Path:
    """Write one layer's prompt and record it in the manifest (both written atomically)."""
    directory.mkdir(parents=True, exist_ok=True)
    tensor = prompt.detach().to("cpu", torch.float32).contiguous()
    meta = {
        "model_id": model.id,
        "model_fingerprint": model.fingerprint,
        "d_model": str(model.adapter.d_model),
        "layer": str(layer),
        "prompt_len": str(tensor.shape[0]),
        **{key: str(value) for key, value in (metadata or {}).items()},
    }
    path = directory / layer_file(layer)
    with atomic_path(path) as staging:
        save_file({PROMPT_TENSOR: tensor}, str(staging), metadata=meta)
    manifest = read_manifest(directory) or {"schema": MANIFEST_SCHEMA, "layers": {}}
    manifest.update(
        model_id=model.id, model_fingerprint=model.fingerprint, d_model=model.adapter.d_model, prompt_len=len(tensor)
    )
    entry = {"file": path.name, "metadata": meta}
    if metrics is not None:
        entry["metrics"] = metrics
    manifest["layers"][str(layer)] = {**manifest["layers"].get(str(layer), {}), **entry}
    atomic_write_json(directory / MANIFEST_NAME, manifest, indent=2, sort_keys=True)
    return path


def _load_layer(path: Path, model: LoadedModel) -> tuple[torch.Tensor, dict[str, str]]:
    with safe_open(str(path), framework="pt") as artifact:
        meta = artifact.metadata() or {}
        if PROMPT_TENSOR not in artifact.keys():  # noqa: SIM118 (safe_open is no mapping)
            raise PromptArtifactError(f"{path}: no tensor named {PROMPT_TENSOR!r}")
        tensor = artifact.get_tensor(PROMPT_TENSOR)
    if meta.get("model_fingerprint") != model.fingerprint:
        raise PromptArtifactError(
            f"{path} was trained for weights {meta.get('model_fingerprint')!r} ({meta.get('model_id')}), "
            f"but the loaded model {model.id!r} has fingerprint {model.fingerprint!r}"
        )
    if tensor.ndim != 2 or tensor.shape[1] != model.adapter.d_model:
        raise PromptArtifactError(
            f"{path}: prompt shape {tuple(tensor.shape)} does not fit d_model={model.adapter.d_model}"
        )
    return tensor, meta


def _header_problem(path: Path, model: LoadedModel) -> str | None:
    """Why one prompt file cannot serve `model`, from its header alone (metadata and shape, no tensor data)."""
    if not path.is_file():
        return f"{path}: the file listed in the manifest is missing"
    try:
        with safe_open(str(path), framework="pt") as artifact:
            meta = artifact.metadata() or {}
            if PROMPT_TENSOR not in artifact.keys():  # noqa: SIM118 (safe_open is no mapping)
                return f"{path}: no tensor named {PROMPT_TENSOR!r}"
            shape = tuple(artifact.get_slice(PROMPT_TENSOR).get_shape())
    except Exception as error:  # a truncated or foreign file: safetensors raises its own error types
        return f"{path}: not a readable safetensors file ({type(error).__name__})"
    if meta.get("model_fingerprint") != model.fingerprint:
        return (
            f"{path} was trained for weights {meta.get('model_fingerprint')!r} ({meta.get('model_id')}), "
            f"but the loaded model {model.id!r} has fingerprint {model.fingerprint!r}"
        )
    if len(shape) != 2 or shape[1] != model.adapter.d_model:
        return f"{path}: prompt shape {shape} does not fit d_model={model.adapter.d_model}"
    return None


def check_soft_prompts(directory: Path, model: LoadedModel) -> str | None:
    """Why `directory` holds no usable soft prompts for `model` (None: it does), from the manifest and the files'
    headers alone: cheap enough to run once at start-up for every lens."""
    try:
        manifest = read_manifest(directory)
    except (OSError, ValueError) as error:
        return f"{directory / MANIFEST_NAME}: unreadable ({type(error).__name__})"
    if not manifest.get("layers"):
        return (
            f"no trained soft prompts for model {model.id!r} in {directory} "
            f"(train them with `future-lens train`, or use --method logit / fixed)"
        )
    for layer_key, entry in manifest["layers"].items():
        if not 0 <= int(layer_key) < model.adapter.n_layers:
            return f"{directory}: layer {int(layer_key)} is outside the model's {model.adapter.n_layers}"
        problem = _header_problem(directory / Path(entry["file"]).name, model)
        if problem is not None:
            return problem
    return None


def load_soft_prompts(directory: Path, model: LoadedModel) -> SoftPromptSet:
    """Load every layer listed in `directory`'s manifest, refusing artifacts made for other weights."""
    problem = check_soft_prompts(directory, model)
    if problem is not None:
        raise PromptArtifactError(problem)
    manifest = read_manifest(directory)
    prompts, metadata = {}, {}
    for layer_key, entry in manifest["layers"].items():
        layer = int(layer_key)
        if not 0 <= layer < model.adapter.n_layers:
            raise PromptArtifactError(f"{directory}: layer {layer} is outside the model's {model.adapter.n_layers}")
        prompts[layer], metadata[layer] = _load_layer(directory / Path(entry["file"]).name, model)
    return SoftPromptSet(directory, prompts, metadata)


def import_paper_prompt(source: Path, model: LoadedModel, layer: int, directory: Path) -> Path:
    """Import the paper authors' released prompt (a torch-saved nn.Parameter [P, d]) as a safetensors artifact."""
    loaded = torch.load(source, map_location="cpu", weights_only=True)  # restricted unpickler: tensors only
    tensor = loaded.data if isinstance(loaded, torch.nn.Parameter) else loaded
    if isinstance(tensor, dict) and len(tensor) == 1:
        tensor = next(iter(tensor.values()))
    if not isinstance(tensor, torch.Tensor) or tensor.ndim != 2 or tensor.shape[1] != model.adapter.d_model:
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise PromptArtifactError(f"{source}: expected a [P, {model.adapter.d_model}] tensor, got {shape}")
    meta = {"trained_on_n": "1", "examples": "unknown", "seed": "unknown", "origin": f"imported from {source.name}"}
    return save_soft_prompt(directory, model, layer, tensor, meta)
