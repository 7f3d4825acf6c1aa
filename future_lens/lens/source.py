"""The source pass: one forward over the text, reading every block's output with nnsight.

Every text is preceded by the model's context prefix (a document-start token such as `<|endoftext|>`, as the paper
does); the prefix position is run but dropped from what is returned, so columns are the text's own tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from future_lens.lens.architectures import block_output_tensor
from future_lens.lens.kv_cache import KVCache, cache_arguments, full_cache, full_mask
from future_lens.lens.models import LoadedModel
from future_lens.lens.tracing import save


class EmptyTextError(ValueError):
    """The text has no tokens."""


@dataclass
class SourcePass:
    """Block outputs of one text and the model's own next-token predictions at each of its positions."""

    token_ids: list[int]  # the text's tokens (the grid's columns), context prefix excluded
    context_prefix: list[int]
    hidden: torch.Tensor  # [n_layers, n_tokens, d_model], output of each block before the final norm
    next_token_ids: torch.Tensor  # [n_tokens], the model's greedy prediction after each position
    next_token_probs: torch.Tensor  # [n_tokens]
    next_log_probs: torch.Tensor  # [n_tokens, vocab] float32, the model's whole next-token distribution (log)
    cache: KVCache | None = None  # keys/values of [prefix + tokens] when asked for (`keep_cache`)


def normalize_text(text: str) -> str:
    """The one text normalisation: `\\r\\n` (how browsers submit a textarea's line breaks) becomes `\\n`, so form,
    API and CLI give the same tokens and permalink for the same text. A run of `\\r` before a `\\n` (`\\r\\r\\n`)
    becomes one `\\n` too, so normalising twice changes nothing (the stored text is the text tokenized). A lone
    `\\r` is kept: it is a real character."""
    # Strip the `\r`s that end each line (not a regex: `\r+\n` backtracks quadratically over a long `\r` run).
    lines = text.split("\n")
    return "\n".join([line.rstrip("\r") for line in lines[:-1]] + lines[-1:])


def tokenize(model: LoadedModel, text: str) -> list[int]:
    """The text's token ids without special tokens (the context prefix is added by the source pass)."""
    return list(model.token_ids(normalize_text(text)))


def run_source_pass(model: LoadedModel, token_ids: list[int], keep_cache: bool = False) -> SourcePass:
    """Run [prefix + tokens] once and keep the block outputs and the model's predictions at the text positions
    (with `keep_cache`, the keys/values too: the model's own continuation decodes on top of them)."""
    if not token_ids:
        raise EmptyTextError("text is empty: it has no tokens")
    prefix = list(model.context_prefix)
    ids = torch.tensor([prefix + list(token_ids)], device=model.device)
    envoy = model.nnsight
    blocks = model.adapter.locate_blocks(envoy)
    cache = full_cache(model) if keep_cache else None
    kept = {**cache_arguments(cache), "attention_mask": full_mask(*ids.shape, model.device)} if keep_cache else {}
    with torch.inference_mode(), envoy.trace(ids, **kept):
        outputs = save([block_output_tensor(blocks[i].output) for i in range(model.adapter.n_layers)])
        logits = save(envoy.output.logits)
    start = len(prefix)
    hidden = torch.stack([out[0, start:] for out in outputs])
    probs = torch.softmax(logits[0, start:].float(), dim=-1)
    next_probs, next_ids = probs.max(dim=-1)
    log_probs = torch.log_softmax(logits[0, start:].float(), dim=-1)
    return SourcePass(list(token_ids), prefix, hidden, next_ids, next_probs, log_probs, cache)
