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


@torch.inference_mode()
def naive_cell(
    model: LoadedModel, context: torch.Tensor, layer: int, state: torch.Tensor, n_future: int, top_k: int = 5
) -> CellPredictions:
    """Decode one cell: context [P, d] fed as embeddings, block `layer`'s output at P-1 replaced by `state` [d]."""
    envoy = model.nnsight
    blocks = model.adapter.locate_blocks(envoy)
    patch_at = context.shape[0] - 1
    embeds = context.to(model.device, model.dtype)[None]
    ids, probs_out, first = [], [], None
    for _ in range(n_future):
        with envoy.trace(inputs_embeds=embeds):
            block_output_tensor(blocks[layer].output)[0, patch_at] = state.to(model.device, model.dtype)
            logits = save(envoy.output.logits)
        probs = torch.softmax(logits[0, -1].float(), dim=-1)
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
