"""Fit the linear lenses (`future_lens.lens.linear`): the tuned lens by KL training, the Jacobian lens by autograd.

Tuned lens: per layer `A_l = I + Δ_l`, `b_l`, trained with AdamW (weight decay on Δ pulls toward the identity) so
that final norm + unembedding of `A_l h + b_l` matches the model's own next-token distribution at the same position
(the dataset's `future_final[:, 0]`); all layers train in one step (their losses are independent).

Jacobian lens: `J_l = E[∂h_final[t] / ∂h_l[s]]` over prompts and pairs of text positions s <= t (the source position
and the current-and-future target positions). One backward pass of `Σ_t h_final[t, i]` gives, for every layer at
once, row i of `Σ_{s <= t} ∂h_final[t] / ∂h_l[s]` (summed over s); d such passes (batched as copies of the prompt,
each seeded with a different coordinate i) give the whole matrix.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from tqdm import tqdm

from future_lens.lens.interventions import on_block_outputs
from future_lens.lens.linear import LinearMaps
from future_lens.lens.models import LoadedModel
from future_lens.training.data import Examples
from future_lens.training.objective import kl_divergence


def final_log_probs(model: LoadedModel, hidden: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of the model's readout (final norm + unembedding) of block outputs `hidden` [..., d]."""
    return torch.log_softmax(model.adapter.logits_from_hidden(hidden.to(model.device, model.dtype)).float(), -1)


def tuned_lens_loss(
    model: LoadedModel, delta: torch.Tensor, bias: torch.Tensor, states: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """Per-layer mean KL(p_final ‖ p_tuned) [L] for `states` [B, L, d] against target log-probs [B, V]."""
    translated = states + torch.einsum("lij,blj->bli", delta, states) + bias
    log_q = final_log_probs(model, translated)
    return kl_divergence(target[:, None].expand_as(log_q), log_q).mean(0)


def fit_tuned_lens(
    model: LoadedModel,
    train: Examples,
    *,
    examples: int = 9600,
    batch: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    seed: int = 0,
    progress: bool = True,
) -> tuple[LinearMaps, list[float]]:
    """Tuned-lens maps for every layer from `train` (the states and their final outputs); returns the mean loss per
    step too. `examples` may exceed the pool: it is shuffled again for each pass."""
    n_layers, d = model.adapter.n_layers, model.adapter.d_model
    delta = torch.nn.Parameter(torch.zeros(n_layers, d, d, device=model.device))
    bias = torch.nn.Parameter(torch.zeros(n_layers, d, device=model.device))
    optimizer = torch.optim.AdamW([{"params": [delta], "weight_decay": weight_decay}, {"params": [bias]}], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    steps = max(1, examples // batch)
    passes = -(-steps * batch // len(train))
    order = torch.cat([torch.randperm(len(train), generator=generator) for _ in range(passes)])
    losses: list[float] = []
    started = time.monotonic()
    for step in tqdm(range(steps), desc="tuned lens", unit="step", disable=not progress):
        index = order[step * batch : (step + 1) * batch]
        states = train.states[index].to(model.device, torch.float32)
        with torch.no_grad():
            target = final_log_probs(model, train.future_final[index, 0])
        optimizer.zero_grad(set_to_none=True)
        per_layer = tuned_lens_loss(model, delta, bias, states, target)
        per_layer.sum().backward()
        optimizer.step()
        losses.append(round(per_layer.mean().item(), 5))
    weight = torch.eye(d, device=model.device) + delta.detach()
    metadata = {
        "objective": "kl(p_final||p_tuned) at the same position",
        "examples": steps * batch,
        "distinct_states": len(train),
        "batch": batch,
        "lr": lr,
        "weight_decay": weight_decay,
        "seed": seed,
        "fitted": f"{time.monotonic() - started:.0f} s",
        "final_loss": f"{sum(losses[-20:]) / len(losses[-20:]):.5f}",
    }
    return LinearMaps("tuned", weight.cpu(), bias.detach().cpu(), metadata), losses


def jacobian_sums(model: LoadedModel, token_ids: Sequence[int], rows_per_pass: int = 64) -> torch.Tensor:
    """[L, d, d]: for one text, Σ over text positions s <= t of ∂h_final[t] / ∂h_l[s] for every block l (the context
    prefix is run but is neither a source nor a target)."""
    adapter = model.adapter
    n_layers, d = adapter.n_layers, adapter.d_model
    prefix = len(model.context_prefix)
    ids = torch.tensor([*model.context_prefix, *token_ids], device=model.device)
    sums = torch.zeros(n_layers, d, d)
    for first in range(0, d, rows_per_pass):
        coordinates = torch.arange(first, min(first + rows_per_pass, d), device=model.device)
        copies = len(coordinates)
        embeds = adapter.embed_tokens(ids)[None].expand(copies, -1, -1).detach().requires_grad_(True)
        kept: dict[int, torch.Tensor] = {}

        def keep(layer: int, hidden: torch.Tensor, kept: dict[int, torch.Tensor] = kept) -> None:
            hidden.retain_grad()
            kept[layer] = hidden

        with on_block_outputs(adapter, range(n_layers), keep):
            model.hf(inputs_embeds=embeds, use_cache=False, logits_to_keep=1)
        final = kept[n_layers - 1][:, prefix:]  # [copies, T, d]
        seeds = final.gather(-1, coordinates.view(copies, 1, 1).expand(-1, final.shape[1], 1)).sum()
        seeds.backward()
        for layer, hidden in kept.items():
            sums[layer, first : first + copies] = hidden.grad[:, prefix:].sum(1).float().cpu()
    return sums


def fit_jacobian_lens(
    model: LoadedModel, texts: Sequence[Sequence[int]], rows_per_pass: int = 64, progress: bool = True
) -> LinearMaps:
    """Jacobian-lens maps: the Jacobian sums of every text, divided by the number of (s <= t) position pairs."""
    n_layers, d = model.adapter.n_layers, model.adapter.d_model
    total = torch.zeros(n_layers, d, d)
    pairs = 0
    started = time.monotonic()
    for token_ids in tqdm(texts, desc="jacobian lens", unit="text", disable=not progress):
        total += jacobian_sums(model, token_ids, rows_per_pass)
        pairs += len(token_ids) * (len(token_ids) + 1) // 2
    metadata = {
        "objective": "E[d h_final[t] / d h_l[s]] over texts and text positions s <= t",
        "prompts": len(texts),
        "position_pairs": pairs,
        "tokens_per_prompt": max(len(t) for t in texts),
        "fitted": f"{time.monotonic() - started:.0f} s",
    }
    return LinearMaps("jacobian", total / max(pairs, 1), torch.zeros(n_layers, d), metadata)
