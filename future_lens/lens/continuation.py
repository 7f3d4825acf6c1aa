"""The model's own greedy continuation after each position of a text: N tokens per position, batched.

One forward over the text fills a cache (the source pass's, when it kept one); then each position t is a row of one
batch that decodes N-1 more tokens on top of those keys/values, with the text after t masked out and each new token
given the position it would have in a text that ended at t (explicit position ids). Sliding-window masks count cache
slots rather than positions, so where the model slides a window shorter than the text plus N, each position is
decoded on its own instead.
"""

from __future__ import annotations

import torch

from future_lens.lens.architectures import attention_window
from future_lens.lens.engine import greedy_continuation
from future_lens.lens.kv_cache import (
    KVCache,
    cache_keys_values,
    cached_forward,
    full_cache,
    full_mask,
    partial_mask,
    rows_cache,
)
from future_lens.lens.models import LoadedModel
from future_lens.lens.source import SourcePass


@torch.inference_mode()
def model_continuations(
    model: LoadedModel, token_ids: list[int], steps: int, source: SourcePass | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy tokens [T, steps] (long) and their probabilities [T, steps] (float32) after each of the text's T
    positions, the model's context prefix first; ties go to the lowest id. Column 0 is the model's next token.
    A source pass of the same tokens run with `keep_cache` saves the forward over the text."""
    prefix = list(model.context_prefix)
    window = attention_window(model.hf.config)
    if window is not None and window < len(prefix) + len(token_ids) + steps:
        return _one_position_at_a_time(model, prefix, token_ids, steps)
    if source is not None and source.cache is not None and source.token_ids == list(token_ids):
        text = source.cache, source.next_token_ids.to(model.device), source.next_token_probs.to(model.device)
    else:
        text = _text_pass(model, prefix + list(token_ids), len(prefix))
    return _all_positions_together(model, prefix, token_ids, steps, text)


def _text_pass(model: LoadedModel, ids: list[int], n_prefix: int) -> tuple[KVCache, torch.Tensor, torch.Tensor]:
    """The text's keys/values and the model's greedy next token (with its probability) after each text position."""
    cache = full_cache(model)
    out = _text_forward(model, cache, ids)
    best_probs, best_ids = torch.softmax(out.logits[0, n_prefix:].float(), dim=-1).max(dim=-1)
    return cache, best_ids, best_probs


def _all_positions_together(
    model: LoadedModel,
    prefix: list[int],
    token_ids: list[int],
    steps: int,
    text: tuple[KVCache, torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    device, n_prefix, n_tokens = model.device, len(prefix), len(token_ids)
    length = n_prefix + n_tokens
    cache, best_ids, best_probs = text
    ids, chosen = [best_ids], [best_probs]
    if steps > 1:
        text_cache = cache_keys_values(cache)
        rows = rows_cache(model, text_cache, torch.zeros(n_tokens, dtype=torch.long), capacity=length + steps - 1)
        ends = n_prefix + torch.arange(n_tokens, device=device)  # row t: the text up to position P+t
        text_visible = torch.arange(length, device=device)[None] <= ends[:, None]
        for step in range(1, steps):
            out = cached_forward(
                model,
                rows,
                input_ids=ids[-1][:, None],
                position_ids=(ends + step)[:, None],
                attention_mask=partial_mask(text_visible, step),
                logits_to_keep=1,
            )
            best_probs, best_ids = torch.softmax(out.logits[:, -1].float(), dim=-1).max(dim=-1)
            ids.append(best_ids)
            chosen.append(best_probs)
    return torch.stack(ids, 1).cpu(), torch.stack(chosen, 1).cpu()


def _one_position_at_a_time(
    model: LoadedModel, prefix: list[int], token_ids: list[int], steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    ids, probs = [], []
    for end in range(1, len(token_ids) + 1):
        cache = full_cache(model)
        out = _text_forward(model, cache, prefix + token_ids[:end])
        first = torch.softmax(out.logits[:, -1].float(), dim=-1)
        row_ids, row_probs = greedy_continuation(model, cache, len(prefix) + end, first, steps)
        ids.append(row_ids[0])
        probs.append(row_probs[0])
    return torch.stack(ids).cpu(), torch.stack(probs).cpu()


def _text_forward(model: LoadedModel, cache: KVCache, ids: list[int]):
    """One forward over token `ids` (batch of one) into an empty `cache`, with the explicit all-ones mask."""
    input_ids = torch.tensor([ids], device=model.device)
    return cached_forward(model, cache, input_ids=input_ids, attention_mask=full_mask(1, len(ids), model.device))
