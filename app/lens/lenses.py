"""Lenses: ways of reading what a hidden state predicts. All share one interface, `Lens.predict`.

A lens maps C cells (a source state and the block it came from) to N predicted tokens each with probabilities,
plus the top-k alternatives for the first token. `LogitLens` reads the next token directly; the patched-context
lenses (`FutureLens` with learned soft prompts, `FixedPromptLens` with a text prompt) decode N tokens.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from app.lens.engine import CellPredictions, PrefixStore, decode_patched
from app.lens.models import LoadedModel
from app.lens.prompts import SoftPromptSet

PAPER_FIXED_PROMPT = 'Hello! Could you please tell me more about "'


class Lens(ABC):
    """Reads predictions out of hidden states taken at given blocks of `model`."""

    method: ClassVar[str]
    #: The most future tokens this lens can decode (None: no limit).
    max_future: ClassVar[int | None] = None

    def __init__(self, model: LoadedModel):
        self.model = model

    @abstractmethod
    def predict(self, states: torch.Tensor, layers: torch.Tensor, n_future: int, top_k: int) -> CellPredictions:
        """Predictions for cells: `states` [C, d] taken at block outputs `layers` [C]."""

    def effective_future(self, n_future: int) -> int:
        return min(n_future, self.max_future) if self.max_future else n_future

    def describe(self, layers: list[int]) -> dict[str, object]:
        """Method-specific facts recorded in the grid (which prompt was used, ...)."""
        return {}


class LogitLens(Lens):
    """Final norm + unembedding applied to a block's output (nostalgebraist 2020): the next token only."""

    method = "logit"
    max_future = 1

    @torch.inference_mode()
    def predict(self, states: torch.Tensor, layers: torch.Tensor, n_future: int, top_k: int) -> CellPredictions:
        hidden = states.to(self.model.device, self.model.dtype)
        probs = torch.softmax(self.model.adapter.logits_from_hidden(hidden).float(), dim=-1)
        topk_probs, topk_ids = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        return CellPredictions(topk_ids[:, :1], topk_probs[:, :1], topk_ids, topk_probs).cpu()


class PatchedContextLens(Lens):
    """Patch the state into the last position of a per-layer target context at the same block, then decode."""

    def __init__(self, model: LoadedModel, chunk_rows: int | None = None):
        super().__init__(model)
        self.chunk_rows = chunk_rows
        self.prefixes = PrefixStore(model)

    @abstractmethod
    def context_key(self, layer: int) -> object:
        """Layers with equal keys share one target context."""

    @abstractmethod
    def context_embeddings(self, layer: int) -> torch.Tensor:
        """The target context for cells of `layer`, as input embeddings [P, d]."""

    def predict(self, states: torch.Tensor, layers: torch.Tensor, n_future: int, top_k: int) -> CellPredictions:
        keys: dict[object, int] = {}
        contexts: list[torch.Tensor] = []
        index = []
        for layer in layers.tolist():
            key = self.context_key(layer)
            if key not in keys:
                keys[key] = len(contexts)
                contexts.append(self.context_embeddings(layer))
            index.append(keys[key])
        prefixes = (self.prefixes, list(keys))
        return decode_patched(
            self.model, contexts, torch.tensor(index), layers, states, n_future, top_k, self.chunk_rows, prefixes
        )


class FutureLens(PatchedContextLens):
    """The paper's learned soft prompt, one per layer (nearest trained layer where a layer has none)."""

    method = "future"

    def __init__(self, model: LoadedModel, prompts: SoftPromptSet, chunk_rows: int | None = None):
        super().__init__(model, chunk_rows)
        self.prompts = prompts

    def context_key(self, layer: int) -> object:
        return self.prompts.source_layer(layer)

    def context_embeddings(self, layer: int) -> torch.Tensor:
        return self.prompts.for_layer(layer)

    def describe(self, layers: list[int]) -> dict[str, object]:
        return {"prompt_layers": [self.prompts.source_layer(layer) for layer in layers]}


class FixedPromptLens(PatchedContextLens):
    """A hand-written text prompt as the target context (the paper's baseline), patched at its last token."""

    method = "fixed"

    def __init__(self, model: LoadedModel, prompt: str = PAPER_FIXED_PROMPT, chunk_rows: int | None = None):
        super().__init__(model, chunk_rows)
        self.prompt = prompt
        self.prompt_ids = list(model.context_prefix) + list(model.tokenizer(prompt, add_special_tokens=False).input_ids)
        if len(self.prompt_ids) == 0:
            raise ValueError("prompt is empty: it has no tokens")
        with torch.inference_mode():
            ids = torch.tensor(self.prompt_ids, device=model.device)
            self._embeddings = model.adapter.embed_tokens(ids)

    def context_key(self, layer: int) -> object:
        return 0

    def context_embeddings(self, layer: int) -> torch.Tensor:
        return self._embeddings

    def describe(self, layers: list[int]) -> dict[str, object]:
        return {"prompt": self.prompt}
