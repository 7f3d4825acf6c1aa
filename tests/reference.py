"""The test oracle: what each lens computes, written again from the documented method, slowly and plainly.

It shares nothing with the engine but the model object (`model.hf`, the HF causal LM, and `model.tokenizer`): no
import from `future_lens.lens`. Everything the engine derives is derived here again, so a bug in one place shows up as a
difference instead of passing both sides:

- tokens: the tokenizer without special tokens (`\\r\\n` read as `\\n`), preceded by the context prefix, the paper's
  document-start token `<|endoftext|>` where the vocabulary has one (both catalog models declare it), else the
  tokenizer's BOS, else its EOS;
- hidden states: plain torch forward hooks on the decoder blocks (`BLOCKS`, a dict per model type) of one forward over
  [prefix + text]; the prefix position is dropped;
- target contexts (input embeddings [P, d]): the future lens's soft prompt of the layer, the raw tensors of the trained
  layers (the nearest trained layer where a layer has none, the lower one on a tie); a text prompt (fixed prompt,
  identity patchscope) as the prefix then the prompt's tokens through the HF model's own input embedding;
- patching: a forward hook overwrites block l's output at the context's last position with h, in every forward;
- decoding: greedy, N plain forwards of the whole sequence (no KV cache), each argmax's embedding appended;
- logit lens: final norm (`FINAL_NORM`), the HF output embedding, the config's logit soft-cap if any.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

#: Where each family keeps its decoder blocks and its final norm (dotted paths from the causal-LM object).
BLOCKS = {
    "llama": "model.layers",
    "mistral": "model.layers",
    "qwen2": "model.layers",
    "qwen3": "model.layers",
    "gemma": "model.layers",
    "gemma2": "model.layers",
    "gptj": "transformer.h",
    "gpt2": "transformer.h",
    "gpt_neo": "transformer.h",
    "gpt_neox": "gpt_neox.layers",
}
FINAL_NORM = {
    "llama": "model.norm",
    "mistral": "model.norm",
    "qwen2": "model.norm",
    "qwen3": "model.norm",
    "gemma": "model.norm",
    "gemma2": "model.norm",
    "gptj": "transformer.ln_f",
    "gpt2": "transformer.ln_f",
    "gpt_neo": "transformer.ln_f",
    "gpt_neox": "gpt_neox.final_layer_norm",
}
DOCUMENT_START = "<|endoftext|>"


@dataclass
class OracleCells:
    """What the oracle says for C cells: N greedy tokens with probabilities, and the first token's top-k."""

    token_ids: torch.Tensor  # [C, N] long
    probs: torch.Tensor  # [C, N] float32
    topk_ids: torch.Tensor  # [C, K] long
    topk_probs: torch.Tensor  # [C, K] float32

    @staticmethod
    def concat(parts: Sequence[OracleCells]) -> OracleCells:
        return OracleCells(*(torch.cat([getattr(part, name) for part in parts]) for name in _FIELDS))

    def take(self, order: torch.Tensor) -> OracleCells:
        return OracleCells(*(getattr(self, name)[order] for name in _FIELDS))


_FIELDS = ("token_ids", "probs", "topk_ids", "topk_probs")


@dataclass(frozen=True)
class SoftPrompts:
    """The future lens's target: trained layer -> its soft prompt [P, d] (raw tensors, e.g. `SoftPromptSet.prompts`)."""

    prompts: Mapping[int, torch.Tensor]


@dataclass(frozen=True)
class TextPrompt:
    """A hand-written target (fixed prompt, identity patchscope), patched at its last token."""

    text: str


Target = SoftPrompts | TextPrompt


def _attribute(root: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        root = getattr(root, part)
    return root


def _device(model) -> torch.device:
    return model.hf.get_input_embeddings().weight.device


def _dtype(model) -> torch.dtype:
    return model.hf.get_input_embeddings().weight.dtype


def blocks_of(model) -> torch.nn.ModuleList:
    return _attribute(model.hf, BLOCKS[model.hf.config.model_type])


def context_prefix(model) -> list[int]:
    """The document-start token every text and text prompt begins with."""
    tokenizer = model.tokenizer
    vocab = tokenizer.get_vocab()
    if DOCUMENT_START in vocab:
        return [int(vocab[DOCUMENT_START])]
    for candidate in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return [int(candidate)]
    return []


def text_ids(model, text: str) -> list[int]:
    """The text's own tokens (no prefix, no special tokens)."""
    return list(model.tokenizer(text.replace("\r\n", "\n"), add_special_tokens=False)["input_ids"])


def _block_tensor(output: torch.Tensor | tuple) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def _hooked(module: torch.nn.Module, hook: Callable):
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.inference_mode()
def hidden_states(model, text: str) -> torch.Tensor:
    """Every block's output at the text's positions [L, T, d] (prefix dropped), read by forward hooks."""
    prefix = context_prefix(model)
    ids = torch.tensor([prefix + text_ids(model, text)], device=_device(model))
    outputs: dict[int, torch.Tensor] = {}
    handles = [
        block.register_forward_hook(lambda _m, _a, out, i=i: outputs.__setitem__(i, _block_tensor(out)[0].clone()))
        for i, block in enumerate(blocks_of(model))
    ]
    try:
        model.hf(input_ids=ids)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack([outputs[i][len(prefix) :] for i in range(len(outputs))]).cpu()


@torch.inference_mode()
def model_next_probs(model, text: str) -> torch.Tensor:
    """The model's next-token distribution after each text position [T, V]: one uncached forward per position."""
    token_ids = text_ids(model, text)
    rows = []
    for end in range(1, len(token_ids) + 1):
        ids = torch.tensor([context_prefix(model) + token_ids[:end]], device=_device(model))
        rows.append(torch.softmax(model.hf(input_ids=ids).logits[0, -1].float(), dim=-1).cpu())
    return torch.stack(rows)


@torch.inference_mode()
def logit_lens_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """Final norm, unembedding and the model's logit soft-cap applied to block outputs `hidden` [..., d]."""
    norm = _attribute(model.hf, FINAL_NORM[model.hf.config.model_type])
    logits = model.hf.get_output_embeddings()(norm(hidden.to(_device(model), _dtype(model))))
    cap = getattr(model.hf.config, "final_logit_softcapping", None)
    return (torch.tanh(logits / cap) * cap if cap else logits).float().cpu()


def prompt_layer(trained: Sequence[int], layer: int) -> int:
    """The trained layer whose soft prompt serves `layer`: itself, else the nearest, the lower one on a tie."""
    return sorted(trained, key=lambda candidate: (abs(candidate - layer), candidate))[0]


@torch.inference_mode()
def target_context(model, target: Target, layer: int) -> torch.Tensor:
    """The target context of `layer`'s cells as input embeddings [P, d]."""
    if isinstance(target, SoftPrompts):
        return target.prompts[prompt_layer(list(target.prompts), layer)].to(_device(model), _dtype(model))
    ids = torch.tensor(context_prefix(model) + text_ids(model, target.text), device=_device(model))
    return model.hf.get_input_embeddings()(ids)


def _patched_next_probs(model, embeds: torch.Tensor, patch_at: int, layer: int, state: torch.Tensor) -> torch.Tensor:
    """Next-token probabilities after `embeds` [1, S, d], block `layer`'s output at `patch_at` replaced by `state`."""
    state = state.to(_device(model), _dtype(model))

    def patch(_module, _args, output):
        hidden = _block_tensor(output).clone()
        hidden[0, patch_at] = state
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    with _hooked(blocks_of(model)[layer], patch):
        logits = model.hf(inputs_embeds=embeds).logits
    return torch.softmax(logits[0, -1].float(), dim=-1)


@torch.inference_mode()
def first_probs(model, context: torch.Tensor, layer: int, state: torch.Tensor) -> torch.Tensor:
    """One cell's whole first-token distribution [V]: `cell`'s first step."""
    embeds = context.to(_device(model), _dtype(model))[None]
    return _patched_next_probs(model, embeds, context.shape[0] - 1, layer, state).cpu()


@torch.inference_mode()
def cell(model, context: torch.Tensor, layer: int, state: torch.Tensor, n_future: int, top_k: int = 5) -> OracleCells:
    """Decode one cell: `context` [P, d] fed as embeddings, block `layer`'s output at P-1 replaced by `state` [d]."""
    patch_at = context.shape[0] - 1
    embeds = context.to(_device(model), _dtype(model))[None]
    embed = model.hf.get_input_embeddings()
    ids, probs_out, first = [], [], None
    for _ in range(n_future):
        probs = _patched_next_probs(model, embeds, patch_at, layer, state)
        if first is None:
            first = probs
        best_prob, best_id = probs.max(dim=-1)  # ties: the lowest id
        ids.append(best_id)
        probs_out.append(best_prob)
        embeds = torch.cat([embeds, embed(best_id.view(1, 1))], dim=1)
    topk_probs, topk_ids = first.topk(min(top_k, first.shape[-1]))
    return OracleCells(
        torch.stack(ids)[None].cpu(), torch.stack(probs_out)[None].cpu(), topk_ids[None].cpu(), topk_probs[None].cpu()
    )


def cells(
    model,
    contexts: Sequence[torch.Tensor],
    context_index: Sequence[int],
    layers: Sequence[int],
    states: torch.Tensor,
    n_future: int,
    top_k: int = 5,
) -> OracleCells:
    """`cell` for each cell in turn: cell c decodes `contexts[context_index[c]]` with `states[c]` at `layers[c]`."""
    return OracleCells.concat(
        [
            cell(model, contexts[ctx], layer, state, n_future, top_k)
            for ctx, layer, state in zip(context_index, layers, states, strict=True)
        ]
    )


def grid_cells(model, target: Target, text: str, layers: Sequence[int], n_future: int, top_k: int) -> OracleCells:
    """Every (layer, token) cell of `text`'s grid, layer-major, from the oracle's own states and contexts."""
    hidden = hidden_states(model, text)
    pairs = [(layer, t) for layer in layers for t in range(hidden.shape[1])]
    contexts = {layer: target_context(model, target, layer) for layer in layers}
    return OracleCells.concat(
        [cell(model, contexts[layer], layer, hidden[layer, t], n_future, top_k) for layer, t in pairs]
    )


@torch.inference_mode()
def continuation(model, text: str, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's greedy `steps` tokens after each position of a text, one position at a time: the context prefix
    and the text up to the position fed whole (no cache), the argmax appended, repeated. [T, steps] ids and probs."""
    token_ids = text_ids(model, text)
    ids, probs = [], []
    for end in range(1, len(token_ids) + 1):
        sequence = context_prefix(model) + token_ids[:end]
        row_ids, row_probs = [], []
        for _ in range(steps):
            logits = model.hf(input_ids=torch.tensor([sequence], device=_device(model))).logits
            best_prob, best_id = torch.softmax(logits[0, -1].float(), dim=-1).max(dim=-1)
            row_ids.append(int(best_id))
            row_probs.append(float(best_prob))
            sequence.append(int(best_id))
        ids.append(row_ids)
        probs.append(row_probs)
    return torch.tensor(ids), torch.tensor(probs)


def first_token_stats(first: torch.Tensor, model_probs: torch.Tensor, next_id: int) -> tuple[int, float, float]:
    """Rank of `next_id`, entropy and KL(model ‖ lens) (nats) of one cell, in float64 from plain probabilities."""
    lens, model_dist = first.double(), model_probs.double()
    rank = 1 + int((lens > lens[next_id]).sum())
    nonzero = lens > 0
    entropy = float(-(lens[nonzero] * lens[nonzero].log()).sum())
    support = model_dist > 0
    kl = float((model_dist[support] * (model_dist[support].log() - lens[support].log())).sum())
    return rank, entropy, kl
