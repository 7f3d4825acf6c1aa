"""Batched patched decoding: every (token, layer) cell of a grid in a few forwards.

Semantics (Future Lens, Pal et al. 2023): the target context (a soft prompt, or a fixed prompt's embeddings) is fed as
input embeddings; at the output of block l its last position is overwritten with the source state h; then N tokens
are decoded greedily, the patch staying in the KV cache. All cells whose target context is the same share that
context's first P-1 positions, so their keys/values are computed once (and kept by the lens across requests) and
reused for every cell and decode step. Cells of all layers share each batched forward (a hook patches each row at its
own block); decode steps write into a preallocated cache and compute logits for the last position only.

Not done: skipping blocks <= l at the patched position. Their keys/values there equal the unpatched context's, so
they could come from the prefix too, but running blocks l+1.. alone needs per-architecture block calls (rotary,
masks, cache positions); the saving is ~(l+1)/(L*N) of the block work, about 13 % averaged over layers at N=4.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
from transformers import PretrainedConfig

from future_lens import defaults
from future_lens.lens.interventions import distinct, patch_block_outputs
from future_lens.lens.kv_cache import (
    KeysValues,
    KVCache,
    cache_keys_values,
    cached_forward,
    full_cache,
    full_mask,
    rows_cache,
)
from future_lens.lens.models import LoadedModel


@dataclass
class CellStats:
    """Statistics of C cells' first-token distributions against the model's own next-token distribution there."""

    next_rank: torch.Tensor  # [C] long: 1 + how many tokens the lens finds strictly likelier than the actual next
    entropy: torch.Tensor  # [C] float32, nats
    kl: torch.Tensor  # [C] float32, KL(model ‖ lens) in nats; NaN where the lens is not compared (logit lens)


@dataclass
class CellPredictions:
    """What a lens says for C cells: N decoded tokens with probabilities, the top-k of the first one and (when the
    lens was given a `CellReference`) statistics of the first token's distribution."""

    token_ids: torch.Tensor  # [C, N] long
    probs: torch.Tensor  # [C, N] float32
    topk_ids: torch.Tensor  # [C, K] long
    topk_probs: torch.Tensor  # [C, K] float32
    stats: CellStats | None = None

    def _map(self, fn) -> CellPredictions:
        stats = None if self.stats is None else CellStats(*(fn(getattr(self.stats, f)) for f in _STAT_FIELDS))
        return CellPredictions(*(fn(getattr(self, f)) for f in _PREDICTION_FIELDS), stats=stats)

    @staticmethod
    def concat(parts: Sequence[CellPredictions]) -> CellPredictions:
        tensors = (torch.cat([getattr(p, f) for p in parts]) for f in _PREDICTION_FIELDS)
        if not all(p.stats is not None for p in parts):
            return CellPredictions(*tensors)
        stats = CellStats(*(torch.cat([getattr(p.stats, f) for p in parts]) for f in _STAT_FIELDS))
        return CellPredictions(*tensors, stats=stats)

    def take(self, order: torch.Tensor) -> CellPredictions:
        return self._map(lambda tensor: tensor[order])

    def cpu(self) -> CellPredictions:
        return self._map(lambda tensor: tensor.cpu())


_PREDICTION_FIELDS = ("token_ids", "probs", "topk_ids", "topk_probs")
_STAT_FIELDS = ("next_rank", "entropy", "kl")


@dataclass
class CellReference:
    """What each of C cells' first-token distribution is measured against: the model's own next-token distribution
    at the cell's position (`log_probs[index[c]]`, [R, V] float32) and its actual (greedy) next token `next_ids`."""

    log_probs: torch.Tensor  # [R, V] float32
    next_ids: torch.Tensor  # [R] long
    index: torch.Tensor  # [C] long

    def take(self, cells: torch.Tensor) -> CellReference:
        return CellReference(self.log_probs, self.next_ids, self.index[cells])


def first_token_stats(log_probs: torch.Tensor, reference: CellReference, compare: bool) -> CellStats:
    """Rank of the actual next token, entropy and (when `compare`) KL(model ‖ lens) of first-token distributions
    `log_probs` [C, V] (float32 log-softmax). Rank counts strictly likelier tokens, so ties share the better rank."""
    log_probs = log_probs.float()
    rows = reference.index.to(log_probs.device)
    next_ids = reference.next_ids.to(log_probs.device)[rows]
    target = log_probs.gather(1, next_ids[:, None])
    rank = (log_probs > target).sum(dim=1) + 1
    probs = log_probs.exp()
    entropy = -(probs * log_probs).nan_to_num().sum(dim=1)  # 0 · log 0 = 0
    if compare:
        model_log_probs = reference.log_probs.to(log_probs.device)[rows]
        kl = (model_log_probs.exp() * (model_log_probs - log_probs)).nan_to_num().sum(dim=1)
    else:
        kl = torch.full_like(entropy, float("nan"))
    return CellStats(rank, entropy, kl)


#: Most rows per forward: on CPU larger chunks stopped paying off in `make bench` (512); on a GPU memory decides.
MAX_CHUNK_ROWS = {"cpu": 512, "cuda": 4096}
#: Share of the free memory one chunk may use (the rest: the model's own activations, other requests, fragmentation).
MEMORY_SHARE = {"cpu": 0.25, "cuda": 0.6}


def bytes_per_row(config: PretrainedConfig, dtype: torch.dtype, positions: int) -> int:
    """Memory one decoded row needs: its KV cache over `positions` (context + N - 1) in every block, plus its
    last-position logits (model dtype, float32 softmax, top-k) and one block's widest activation."""
    config = config.get_text_config()
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    size = torch.empty((), dtype=dtype).element_size()
    kv_cache = config.num_hidden_layers * 2 * kv_heads * head_dim * positions * size
    logits = config.vocab_size * (size + 4 + 4)
    widest = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * config.hidden_size
    return kv_cache + logits + 2 * widest * size


def free_memory(device: torch.device) -> int:
    """Bytes free now: `torch.cuda.mem_get_info` on CUDA, available physical memory on the CPU (Linux)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2 << 30


def rows_that_fit(per_row: int, free: int, device_type: str) -> int:
    """Rows per chunk for `free` bytes: the device's share of it, between 8 and the device's cap."""
    cap = MAX_CHUNK_ROWS.get(device_type, MAX_CHUNK_ROWS["cpu"])
    share = MEMORY_SHARE.get(device_type, MEMORY_SHARE["cpu"])
    return max(8, min(cap, int(free * share) // per_row))


def default_chunk_rows(model: LoadedModel, positions: int) -> int:
    """Rows per forward for contexts + decode of `positions` positions, sized to the memory free right now."""
    per_row = bytes_per_row(model.hf.config, model.dtype, positions)
    return rows_that_fit(per_row, free_memory(model.device), model.device.type)


def prefix_keys_values(model: LoadedModel, contexts: torch.Tensor) -> KeysValues:
    """Keys/values of positions 0..P-2 of each context ([G, P, d]) for every block: list of ([G,...], [G,...]).

    Differentiable outside inference mode, so training shares it with the engine."""
    if contexts.shape[1] == 1:
        return []
    cache = full_cache(model)
    cached_forward(model, cache, inputs_embeds=contexts[:, :-1], logits_to_keep=1)
    return cache_keys_values(cache)


class PrefixStore:
    """Prefix keys/values per target context, computed on first use and kept: a lens's contexts never change, so
    later requests skip the prefix forward. Keyed by the lens's context key; bound to one model."""

    def __init__(self, model: LoadedModel):
        self.model = model
        self._by_key: dict[Hashable, KeysValues] = {}

    def stored_keys(self) -> set[Hashable]:
        return set(self._by_key)

    def stacked(self, keys: Sequence[Hashable], contexts: Sequence[torch.Tensor]) -> KeysValues:
        """Prefix keys/values of equal-length `contexts` ([P, d] each, named by `keys`), stacked in that order."""
        missing = [i for i, key in enumerate(keys) if key not in self._by_key]
        if missing:
            group = torch.stack([contexts[i] for i in missing]).to(self.model.device, self.model.dtype)
            computed = prefix_keys_values(self.model, group)
            for row, i in enumerate(missing):
                self._by_key[keys[i]] = [(k[row : row + 1], v[row : row + 1]) for k, v in computed]
        per_context = [self._by_key[key] for key in keys]
        return [
            (torch.cat([kv[block][0] for kv in per_context]), torch.cat([kv[block][1] for kv in per_context]))
            for block in range(len(per_context[0]))
        ]


def next_token_logits(model: LoadedModel, cache: KVCache, past: int, **inputs: torch.Tensor) -> torch.Tensor:
    """One position for every row on top of `past` cached positions; float32 logits of the next token."""
    rows = next(iter(inputs.values())).shape[0]
    mask = full_mask(rows, past + 1, model.device)  # prefix + new token, always explicit
    out = cached_forward(model, cache, **inputs, attention_mask=mask, logits_to_keep=1)
    return out.logits[:, -1].float()


def next_token_probs(model: LoadedModel, cache: KVCache, past: int, **inputs: torch.Tensor) -> torch.Tensor:
    """`next_token_logits` as float32 probabilities."""
    return torch.softmax(next_token_logits(model, cache, past, **inputs), dim=-1)


def greedy_continuation(
    model: LoadedModel, cache: KVCache, length: int, probs: torch.Tensor, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy tokens [R, steps] and their probabilities, starting from `probs` [R, V] (the next-token distribution
    after `length` cached positions) and feeding each chosen token back through the cached model.

    Ties go to the lowest id (`max`, as the naive reference; `topk`'s order on ties is unspecified)."""
    token_ids, token_probs = [], []
    for step in range(steps):
        if step:
            probs = next_token_probs(model, cache, length + step - 1, input_ids=token_ids[-1][:, None])
        best_probs, best_ids = probs.max(dim=-1)
        token_probs.append(best_probs)
        token_ids.append(best_ids)
    return torch.stack(token_ids, 1), torch.stack(token_probs, 1)


@dataclass
class PatchedCells:
    """C cells to decode: cell c patches `states[c]` at block `layers[c]` into `contexts[context_index[c]]`."""

    contexts: Sequence[torch.Tensor]  # target contexts, [P_i, d] input embeddings each
    context_index: torch.Tensor  # [C] long
    layers: torch.Tensor  # [C] long
    states: torch.Tensor  # [C, d]
    reference: CellReference | None = None  # when given, predictions carry first-token statistics


def _decode_chunk(
    model: LoadedModel, contexts: torch.Tensor, prefix: KeysValues, cells: PatchedCells, n_future: int, top_k: int
) -> CellPredictions:
    """One chunk of cells whose contexts are the equal-length `contexts` [G, P, d] (indexed by `cells`)."""
    prompt_len = contexts.shape[1]
    cache = rows_cache(model, prefix, cells.context_index, capacity=prompt_len + n_future - 1)
    last_embeds = contexts[cells.context_index, -1:]
    with patch_block_outputs(model.adapter, cells.layers, cells.states):
        logits = next_token_logits(model, cache, prompt_len - 1, inputs_embeds=last_embeds)
    probs = torch.softmax(logits, dim=-1)
    topk_probs, topk_ids = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    token_ids, token_probs = greedy_continuation(model, cache, prompt_len, probs, n_future)
    stats = None
    if cells.reference is not None:
        stats = first_token_stats(torch.log_softmax(logits, dim=-1), cells.reference, compare=True)
    return CellPredictions(token_ids, token_probs, topk_ids, topk_probs, stats)


@torch.inference_mode()
def decode_patched(
    model: LoadedModel,
    cells: PatchedCells,
    *,
    n_future: int,
    top_k: int = defaults.TOP_K,
    chunk_rows: int | None = None,
    prefixes: tuple[PrefixStore, Sequence[Hashable]] | None = None,
) -> CellPredictions:
    """Decode `cells`: N greedy tokens each, plus the top-k of the first; predictions in the cells' order.

    Contexts of equal length are prefilled together (or taken from `prefixes`: a store and each context's key);
    cells are then run in chunks of `chunk_rows` rows, each chunk one patched forward plus N-1 cached decode steps.
    """
    if n_future < 1:
        raise ValueError("n_future must be at least 1")
    chunk_rows = chunk_rows or default_chunk_rows(model, max(len(c) for c in cells.contexts) + n_future - 1)
    device, dtype = model.device, model.dtype
    context_index, layers = cells.context_index.to(device), cells.layers.to(device)
    states = cells.states.to(device, dtype)
    contexts = cells.contexts
    parts, order = [], []
    for length in distinct([len(c) for c in contexts]):
        members = [i for i, c in enumerate(contexts) if len(c) == length]
        group = torch.stack([contexts[i] for i in members]).to(device, dtype)
        remap = torch.full((len(contexts),), -1, dtype=torch.long, device=device)
        remap[torch.tensor(members, device=device)] = torch.arange(len(members), device=device)
        in_group = torch.nonzero(remap[context_index] >= 0).squeeze(1)
        if prefixes is None:
            prefix = prefix_keys_values(model, group)
        else:
            store, keys = prefixes
            prefix = store.stacked([keys[i] for i in members], [contexts[i] for i in members])
        for chunk in in_group.split(chunk_rows):
            reference = cells.reference.take(chunk.cpu()) if cells.reference is not None else None
            chunk_cells = PatchedCells(group, remap[context_index[chunk]], layers[chunk], states[chunk], reference)
            parts.append(_decode_chunk(model, group, prefix, chunk_cells, n_future, top_k))
            order.append(chunk)
    inverse = torch.empty_like(torch.cat(order))
    inverse[torch.cat(order)] = torch.arange(len(inverse), device=device)
    return CellPredictions.concat(parts).take(inverse).cpu()
