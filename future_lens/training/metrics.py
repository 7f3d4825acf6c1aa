"""The paper's evaluation protocol: precision@k against the model's own greedy tokens, and surprisal; plus what
the grid shows: free-running precision, by position bucket, and calibration.

Teacher-forced predictions are top-k token ids per example and future offset N (the tokens before offset N are the
model's own greedy ones). Surprisal is -ln p_original of the predicted (top-1) token, in nats. Free-running ("as
shown") predictions are the tokens a lens decodes on its own, each conditioned on its previous ones, as in the grid.
"""

from __future__ import annotations

import torch

from future_lens.lens.models import LoadedModel
from future_lens.training.data import Examples
from future_lens.training.objective import patched_logits

TOP_K = 5
MAX_N = 3
#: Grid positions (1-based token index after the context prefix) whose metrics are also reported apart.
POSITION_BUCKETS = ((1, 4), (5, 16), (17, 64))
CALIBRATION_BINS = 10


def by_position(hits: torch.Tensor, positions: torch.Tensor) -> dict[str, float | None]:
    """Mean of `hits` [D] within each position bucket (None for an empty bucket)."""
    out: dict[str, float | None] = {}
    for low, high in POSITION_BUCKETS:
        inside = (positions >= low) & (positions <= high)
        out[f"{low}-{high}"] = hits[inside].float().mean().item() if inside.any() else None
    return out


def score(
    topk: torch.Tensor,
    teacher: torch.Tensor,
    orig_logp: torch.Tensor,
    offsets: list[int],
    positions: torch.Tensor | None = None,
) -> dict:
    """Metrics per N in `offsets` for predictions topk [D, len(offsets), K] vs teacher [D, 4]; orig_logp [D, 4, V];
    with `positions` [D], precision@1 by position bucket too."""
    out: dict[str, dict] = {}
    for column, n in enumerate(offsets):
        predicted = topk[:, column]
        target = teacher[:, n]
        top1 = predicted[:, 0]
        out[f"N{n}"] = {
            "p1": (top1 == target).float().mean().item(),
            "p5": (predicted[:, :TOP_K] == target[:, None]).any(-1).float().mean().item(),
            "surprisal": -orig_logp[torch.arange(len(top1)), n, top1].float().mean().item(),
        }
        if positions is not None:
            out[f"N{n}"]["p1_by_position"] = by_position(top1 == target, positions)
    return out


def free_running_score(token_ids: torch.Tensor, teacher: torch.Tensor, positions: torch.Tensor) -> dict:
    """What the grid shows: token k of a freely decoded phrase [D, n] vs the model's own k-th token (N=k), and the
    whole phrase of length 1..n matching."""
    hits = token_ids == teacher[:, : token_ids.shape[1]]
    out: dict[str, dict] = {
        f"N{n}": {"p1": hits[:, n].float().mean().item(), "p1_by_position": by_position(hits[:, n], positions)}
        for n in range(token_ids.shape[1])
    }
    out["phrase"] = {
        str(length): hits[:, :length].all(-1).float().mean().item() for length in range(1, hits.shape[1] + 1)
    }
    return out


def reliability(confidence: torch.Tensor, correct: torch.Tensor, bins: int = CALIBRATION_BINS) -> dict:
    """Reliability diagram data: per confidence bin the count, mean confidence and accuracy (mean of `correct`,
    0..1); the expected calibration error; and the accuracy where confidence >= 0.9."""
    confidence, correct = confidence.flatten().float(), correct.flatten().float()
    index = (confidence * bins).long().clamp(0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        inside = index == b
        count = int(inside.sum())
        if count:
            mean_conf, accuracy = confidence[inside].mean().item(), correct[inside].mean().item()
            ece += count / len(confidence) * abs(accuracy - mean_conf)
        else:
            mean_conf = accuracy = None
        rows.append(
            {"low": b / bins, "high": (b + 1) / bins, "count": count, "confidence": mean_conf, "accuracy": accuracy}
        )
    confident = confidence >= 0.9
    return {
        "bins": rows,
        "ece": ece,
        "n": len(confidence),
        "accuracy_at_0.9": correct[confident].mean().item() if confident.any() else None,
        "count_at_0.9": int(confident.sum()),
    }


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
