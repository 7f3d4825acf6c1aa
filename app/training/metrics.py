"""The paper's evaluation protocol: precision@k against the model's own greedy tokens, and surprisal.

Predictions are top-k token ids per example and future offset N (teacher-forced: the tokens before offset N are
the model's own greedy ones). Surprisal is -ln p_original of the predicted (top-1) token, in nats.
"""

from __future__ import annotations

import torch

from app.lens.models import LoadedModel
from app.training.data import Examples
from app.training.objective import patched_logits

TOP_K = 5
MAX_N = 3


def score(topk: torch.Tensor, teacher: torch.Tensor, orig_logp: torch.Tensor, offsets: list[int]) -> dict:
    """Metrics per N in `offsets` for predictions topk [D, len(offsets), K] vs teacher [D, 4]; orig_logp [D, 4, V]."""
    out: dict[str, dict[str, float]] = {}
    for column, n in enumerate(offsets):
        predicted = topk[:, column]
        target = teacher[:, n]
        top1 = predicted[:, 0]
        out[f"N{n}"] = {
            "p1": (top1 == target).float().mean().item(),
            "p5": (predicted[:, :TOP_K] == target[:, None]).any(-1).float().mean().item(),
            "surprisal": -orig_logp[torch.arange(len(top1)), n, top1].float().mean().item(),
        }
    return out


def original_log_probs_table(model: LoadedModel, examples: Examples, chunk: int = 64) -> torch.Tensor:
    """log p_original [D, 4, V] (float16 to keep it small) for every example and future offset."""
    parts = []
    with torch.inference_mode():
        for start in range(0, len(examples), chunk):
            finals = examples.future_final[start : start + chunk].to(model.device, model.dtype)
            logits = model.adapter.logits_from_hidden(finals).float()
            parts.append(torch.log_softmax(logits, dim=-1).half().cpu())
    return torch.cat(parts)


@torch.inference_mode()
def patched_topk(
    model: LoadedModel,
    contexts: dict[int, torch.Tensor],
    examples: Examples,
    max_n: int = MAX_N,
    chunk_rows: int = 128,
) -> dict[int, torch.Tensor]:
    """Teacher-forced top-k [D, max_n+1, K] per layer when patching its states into `contexts[layer]` ([P, d])."""
    results = {}
    for layer, context in contexts.items():
        parts = []
        for start in range(0, len(examples), chunk_rows):
            batch = examples.subset(slice(start, start + chunk_rows))
            rows = len(batch)
            logits = patched_logits(
                model,
                context[None].to(model.device, model.dtype),
                torch.zeros(rows, dtype=torch.long, device=model.device),
                torch.full((rows,), layer, dtype=torch.long, device=model.device),
                batch.states[:, layer].to(model.device),
                batch.teacher[:, :max_n].to(model.device),
                keep=max_n + 1,
            )
            parts.append(logits.float().topk(TOP_K, dim=-1).indices.cpu())
        results[layer] = torch.cat(parts)
    return results
