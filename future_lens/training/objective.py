"""The teacher-forced patched forward shared by training and evaluation, and the KL objective.

A row r runs target context `contexts[context_index[r]]` ([P, d] input embeddings) followed by its teacher tokens;
block `layers[r]`'s output at the context's last position is overwritten with `states[r]`. The output at that
position predicts N=0, the output at teacher token n (1-based) predicts N=n. All rows sharing a context reuse its
first P-1 positions' keys/values (computed once, with gradients when the context is trainable).
"""

from __future__ import annotations

import torch

from future_lens.lens.engine import prefix_keys_values
from future_lens.lens.interventions import patch_block_outputs
from future_lens.lens.kv_cache import cached_forward, full_mask, rows_cache
from future_lens.lens.models import LoadedModel


def patched_logits(
    model: LoadedModel,
    contexts: torch.Tensor,
    context_index: torch.Tensor,
    layers: torch.Tensor,
    states: torch.Tensor,
    teacher: torch.Tensor,
    keep: int,
) -> torch.Tensor:
    """Logits [R, keep, V] at the last `keep` of the R rows' positions (context end, then teacher [R, k])."""
    prefix = prefix_keys_values(model, contexts)
    cache = rows_cache(model, prefix, context_index)
    embeds = contexts[context_index, -1:]
    if teacher.shape[1]:
        embeds = torch.cat([embeds, model.adapter.embed_tokens(teacher).to(embeds.dtype)], dim=1)
    rows, length = embeds.shape[:2]
    mask = full_mask(rows, contexts.shape[1] - 1 + length, embeds.device)
    with patch_block_outputs(model.adapter, layers, states, position=0):
        out = cached_forward(model, cache, inputs_embeds=embeds, attention_mask=mask, logits_to_keep=keep)
    return out.logits


def original_log_probs(model: LoadedModel, future_final: torch.Tensor) -> torch.Tensor:
    """log p_original from the last block's outputs at the future positions ([..., d] -> [..., V])."""
    with torch.no_grad():
        return torch.log_softmax(model.adapter.logits_from_hidden(future_final.to(model.dtype)).float(), dim=-1)


def kl_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) over the last axis, from log-probabilities (0 where p == q)."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def target_window(targets: tuple[int, ...]) -> tuple[int, int]:
    """(teacher tokens to feed, logits to keep) so positions min..max of `targets` are computed."""
    return max(targets), max(targets) - min(targets) + 1
