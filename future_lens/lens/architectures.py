"""Every architecture-specific lookup lives here: where blocks, final norm, embeddings and unembedding are.

Everything else in the engine talks to a model only through `ModelAdapter`, so supporting a new family means
adding one row to `ARCHITECTURES`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel


@dataclass(frozen=True)
class ArchitectureSpec:
    """Dotted attribute paths from the causal-LM object to the parts the lenses need."""

    blocks: str
    final_norm: str
    embed: str
    unembed: str = "lm_head"


_LLAMA_LIKE = ArchitectureSpec(blocks="model.layers", final_norm="model.norm", embed="model.embed_tokens")
_GPT2_LIKE = ArchitectureSpec(blocks="transformer.h", final_norm="transformer.ln_f", embed="transformer.wte")

#: `config.model_type` -> where its parts live.
ARCHITECTURES: dict[str, ArchitectureSpec] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gptj": _GPT2_LIKE,
    "gpt2": _GPT2_LIKE,
    "gpt_neo": _GPT2_LIKE,
    "gpt_neox": ArchitectureSpec(
        blocks="gpt_neox.layers", final_norm="gpt_neox.final_layer_norm", embed="gpt_neox.embed_in"
    ),
}


class UnsupportedArchitectureError(ValueError):
    """The model's family has no entry in `ARCHITECTURES`."""


def _resolve(root, dotted: str):
    module = root
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def attention_window(config: PretrainedConfig) -> int | None:
    """The shortest sliding attention window any layer of the model uses (None: every layer sees every position).

    `sliding_window` (Mistral, Qwen2/3 when `use_sliding_window`, Gemma 2) or `window_size` (GPT-Neo's local layers).
    """
    config = config.get_text_config()
    if getattr(config, "use_sliding_window", True) is False:
        return None
    windows = [getattr(config, name, None) for name in ("sliding_window", "window_size")]
    windows = [window for window in windows if isinstance(window, int) and window > 0]
    return min(windows) if windows else None


def block_output_tensor(output: torch.Tensor | tuple) -> torch.Tensor:
    """A decoder block returns a tensor (transformers 5) or a tuple whose first item is the hidden state."""
    return output[0] if isinstance(output, tuple) else output


class ModelAdapter:
    """Uniform access to one loaded causal LM's blocks, final norm, embeddings and unembedding."""

    def __init__(self, model: PreTrainedModel):
        model_type = model.config.model_type
        if model_type not in ARCHITECTURES:
            supported = ", ".join(sorted(ARCHITECTURES))
            raise UnsupportedArchitectureError(f"model type {model_type!r} is not supported (supported: {supported})")
        self.model = model
        self.spec = ARCHITECTURES[model_type]
        self.blocks: nn.ModuleList = _resolve(model, self.spec.blocks)
        self.final_norm: nn.Module = _resolve(model, self.spec.final_norm)
        self.embed: nn.Module = _resolve(model, self.spec.embed)
        self.unembed: nn.Module = _resolve(model, self.spec.unembed)
        self.logit_softcap: float | None = getattr(model.config, "final_logit_softcapping", None)

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def d_model(self) -> int:
        return self.embed.weight.shape[1]

    @property
    def vocab_size(self) -> int:
        return self.unembed.weight.shape[0]

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm + unembedding (+ the model's logit soft-cap, if any): exactly what the model does last."""
        logits = self.unembed(self.final_norm(hidden))
        if self.logit_softcap:
            logits = torch.tanh(logits / self.logit_softcap) * self.logit_softcap
        return logits

    def locate_blocks(self, root: object) -> object:
        """The block list under another wrapper of the same model (e.g. an nnsight envoy), by the same path."""
        return _resolve(root, self.spec.blocks)

    def embed_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings as the model's forward receives them through `inputs_embeds`."""
        return self.embed(token_ids)
