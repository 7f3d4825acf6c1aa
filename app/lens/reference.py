"""The naive reference the engine is tested against: one cell at a time, no KV cache, patch by nnsight.

For each cell: feed the P-token target context (+ the tokens decoded so far) as input embeddings, overwrite block l's
output at position P-1 with h inside an nnsight trace, take the argmax of the last position, repeat N times.
Slow on purpose and independent of the engine (no shared prefix, no cache, no batching, no torch hooks).
"""

from __future__ import annotations

import torch

from app.lens.architectures import block_output_tensor
from app.lens.engine import CellPredictions
from app.lens.models import LoadedModel
from app.lens.tracing import save


def _patched_next_probs(
    model: LoadedModel, embeds: torch.Tensor, patch_at: int, layer: int, state: torch.Tensor
) -> torch.Tensor:
    """Next-token probabilities after `embeds` [1, S, d], block `layer`'s output at `patch_at` replaced by `state`."""
    envoy = model.nnsight
    blocks = model.adapter.locate_blocks(envoy)
    with envoy.trace(inputs_embeds=embeds):
        block_output_tensor(blocks[layer].output)[0, patch_at] = state.to(model.device, model.dtype)
        logits = save(envoy.output.logits)
    return torch.softmax(logits[0, -1].float(), dim=-1)


@torch.inference_mode()
def naive_first_probs(model: LoadedModel, context: torch.Tensor, layer: int, state: torch.Tensor) -> torch.Tensor:
    """One cell's whole first-token distribution [V]: `naive_cell`'s first step."""
    embeds = context.to(model.device, model.dtype)[None]
    return _patched_next_probs(model, embeds, context.shape[0] - 1, layer, state).cpu()


@torch.inference_mode()
def naive_cell(
    model: LoadedModel, context: torch.Tensor, layer: int, state: torch.Tensor, n_future: int, top_k: int = 5
) -> CellPredictions:
    """Decode one cell: context [P, d] fed as embeddings, block `layer`'s output at P-1 replaced by `state` [d]."""
    patch_at = context.shape[0] - 1
    embeds = context.to(model.device, model.dtype)[None]
    ids, probs_out, first = [], [], None
    for _ in range(n_future):
        probs = _patched_next_probs(model, embeds, patch_at, layer, state)
        if first is None:
            first = probs
        best_prob, best_id = probs.max(dim=-1)
        ids.append(best_id)
        probs_out.append(best_prob)
        embeds = torch.cat([embeds, model.adapter.embed_tokens(best_id.view(1, 1))], dim=1)
    topk_probs, topk_ids = first.topk(min(top_k, first.shape[-1]))
    return CellPredictions(
        torch.stack(ids)[None].cpu(), torch.stack(probs_out)[None].cpu(), topk_ids[None].cpu(), topk_probs[None].cpu()
    )


def naive_cells(
    model: LoadedModel,
    contexts: list[torch.Tensor],
    context_index: list[int],
    layers: list[int],
    states: torch.Tensor,
    n_future: int,
    top_k: int = 5,
) -> CellPredictions:
    """`naive_cell` for each cell in turn."""
    return CellPredictions.concat(
        [
            naive_cell(model, contexts[ctx], layer, state, n_future, top_k)
            for ctx, layer, state in zip(context_index, layers, states, strict=True)
        ]
    )


@torch.inference_mode()
def naive_continuation(model: LoadedModel, token_ids: list[int], steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's greedy `steps` tokens after each position of a text, one position at a time: the context prefix
    and the text up to the position fed whole (no cache), the argmax appended, repeated. [T, steps] ids and probs."""
    ids, probs = [], []
    for end in range(1, len(token_ids) + 1):
        sequence = list(model.context_prefix) + list(token_ids[:end])
        row_ids, row_probs = [], []
        for _ in range(steps):
            logits = model.hf(input_ids=torch.tensor([sequence], device=model.device)).logits
            best_prob, best_id = torch.softmax(logits[0, -1].float(), dim=-1).max(dim=-1)
            row_ids.append(int(best_id))
            row_probs.append(float(best_prob))
            sequence.append(int(best_id))
        ids.append(row_ids)
        probs.append(row_probs)
    return torch.tensor(ids), torch.tensor(probs)


def naive_first_token_stats(
    first_probs: torch.Tensor, model_probs: torch.Tensor, next_id: int
) -> tuple[int, float, float]:
    """Rank of `next_id`, entropy and KL(model ‖ lens) (nats) of one cell, in float64 from plain probabilities."""
    lens, model_dist = first_probs.double(), model_probs.double()
    rank = 1 + int((lens > lens[next_id]).sum())
    nonzero = lens > 0
    entropy = float(-(lens[nonzero] * lens[nonzero].log()).sum())
    support = model_dist > 0
    kl = float((model_dist[support] * (model_dist[support].log() - lens[support].log())).sum())
    return rank, entropy, kl
