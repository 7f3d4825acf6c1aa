"""The one module that knows transformers' cache and mask internals; written against transformers 5.24.0.

Everything else in future_lens holds a cache as an opaque `KVCache`, builds it here, runs the model on it through
`cached_forward` and reads its keys/values back with `cache_keys_values`. What this module relies on, as of
transformers 5.24.0 (`transformers.cache_utils`, the Llama/GPT-2-style model forwards):

- `DynamicCache(config=...)` holds one layer per block in `cache.layers` (a sliding-window layer where the config
  slides a window); the list can be replaced by layers of our own, subclasses of `DynamicLayer`.
- A `DynamicLayer` keeps `keys`/`values` [rows, heads, positions, d_head]; its first `update` calls
  `lazy_initialization(keys, values)` (then `is_initialized`); `update(keys, values, *args, **kwargs)` adds the
  new positions and returns the layer's whole keys/values, which attention then reads.
- `cache.update(keys, values, layer_index)` fills a layer directly (no forward).
- A model takes the cache as `cache=` with `use_cache=True` and extends it in place.
- A 2-D `attention_mask` [rows, cached + new positions] (1: attend, 0: masked) is combined with the causal mask;
  a 4-D float mask [rows, 1, queries, keys] is used as given (added to the attention scores), so the cache layers'
  own lengths (`get_mask_sizes`, `get_seq_length`) do not decide what a row sees. Masks are always passed explicitly.
- `position_ids` [rows, new positions] override the positions otherwise counted from the cache's length.

On a transformers upgrade this module is what to check (tests/test_engine.py and tests/test_staggered.py compare
the engine with an independent reference).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

if TYPE_CHECKING:
    from future_lens.lens.models import LoadedModel

#: The cache the lenses pass around (for type hints outside this module).
KVCache = DynamicCache
#: Per block: keys and values, [rows, heads, positions, d_head].
KeysValues = list[tuple[torch.Tensor, torch.Tensor]]


def new_cache(model: LoadedModel) -> KVCache:
    """The model's own empty cache for its config (sliding-window layers where the config slides a window)."""
    return DynamicCache(config=model.hf.config)


def full_cache(model: LoadedModel, capacity: int = 0) -> KVCache:
    """A cache that keeps every position in every layer, also where the model slides a window: lens contexts are
    short, the window's masking still comes from the config, and sliding layers that drop positions would give the
    layers different lengths (wrong positions and masks). With `capacity` (total positions) layers write into
    preallocated buffers (inference only)."""
    cache = new_cache(model)
    cache.layers = [PreallocatedLayer(capacity) if capacity else DynamicLayer() for _ in cache.layers]
    return cache


class PreallocatedLayer(DynamicLayer):
    """A dynamic cache layer that writes each step into a buffer sized for the whole decode instead of concatenating
    (which copies the whole cache at every step). Keys/values are views of the filled part; inference only."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self.key_buffer = key_states.new_empty((*key_states.shape[:-2], self.capacity, key_states.shape[-1]))
        self.value_buffer = value_states.new_empty((*value_states.shape[:-2], self.capacity, value_states.shape[-1]))

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"cache capacity {self.capacity} exceeded")
        self.key_buffer[..., self.length : end, :] = key_states
        self.value_buffer[..., self.length : end, :] = value_states
        self.length = end
        self.keys, self.values = self.key_buffer[..., :end, :], self.value_buffer[..., :end, :]
        return self.keys, self.values


def rows_cache(model: LoadedModel, prefix: KeysValues, rows: torch.Tensor, capacity: int = 0) -> KVCache:
    """A fresh cache holding, for each row, the prefix keys/values of context `rows[r]` (a forward mutates it).

    With `capacity` (total positions, prefix included) plain layers write into preallocated buffers (inference)."""
    cache = full_cache(model, capacity)
    for index, (keys, values) in enumerate(prefix):
        cache.update(keys[rows], values[rows], index)
    return cache


def cache_keys_values(cache: KVCache) -> KeysValues:
    """Every layer's keys and values as they are now (the tensors themselves, not copies)."""
    return [(layer.keys, layer.values) for layer in cache.layers]


@dataclass
class StaggeredWindow:
    """Which rows of a staggered cache the current forward runs (`start:end`) and the slot each of them writes."""

    start: int = 0
    end: int = 0
    slots: torch.Tensor | None = None


class StaggeredLayer(DynamicLayer):
    """A cache layer with one buffer row per decoded row, each forward writing its rows at their own slots. Rows come
    in groups with their own number of slots (the continuation rows hold the text, the cells only their context), so
    a group's buffer is as long as it needs; a forward over rows of both gets them padded to the longer. Slots not
    written are zeros (finite, so the mask's large negative bias removes them exactly); inference only. Every
    forward over it needs a 4-D mask (`additive_mask`): its length is not what a row sees."""

    def __init__(self, window: StaggeredWindow, groups: Sequence[tuple[int, int]]):
        super().__init__()
        self.window, self.groups = window, list(groups)  # (rows, slots) per group, in buffer-row order

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        heads, width = key_states.shape[1], key_states.shape[-1]
        self.buffers = [
            (
                key_states.new_zeros((rows, heads, slots, width)),
                value_states.new_zeros((rows, value_states.shape[1], slots, width)),
            )
            for rows, slots in self.groups
        ]

    def fill_prefix(self, group: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """The first slots of every row of `group`: keys/values [rows or 1, heads, positions, d_head] each."""
        if not self.is_initialized:
            self.lazy_initialization(keys, values)
        key_buffer, value_buffer = self.buffers[group]
        key_buffer[:, :, : keys.shape[2]] = keys
        value_buffer[:, :, : values.shape[2]] = values

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        window, keys, values, first = self.window, [], [], 0
        for (rows, _), (key_buffer, value_buffer) in zip(self.groups, self.buffers, strict=True):
            start, end = max(window.start, first), min(window.end, first + rows)
            if start < end:
                at = slice(start - window.start, end - window.start)
                index = torch.arange(end - start, device=key_states.device)
                key_view, value_view = (
                    key_buffer[start - first : end - first],
                    value_buffer[start - first : end - first],
                )
                key_view[index, :, window.slots[at]] = key_states[at, :, 0]
                value_view[index, :, window.slots[at]] = value_states[at, :, 0]
                keys.append(key_view)
                values.append(value_view)
            first += rows
        if len(keys) == 1:  # the buffer's own rows: views, no copy
            self.keys, self.values = keys[0], values[0]
            return self.keys, self.values
        slots = max(k.shape[2] for k in keys)  # rows of several groups: each padded to the longest, along the slots
        pad = [(0, 0, 0, slots - k.shape[2]) for k in keys]
        self.keys = torch.cat([torch.nn.functional.pad(k, p) for k, p in zip(keys, pad, strict=True)])
        self.values = torch.cat([torch.nn.functional.pad(v, p) for v, p in zip(values, pad, strict=True)])
        return self.keys, self.values


def staggered_cache(model: LoadedModel, window: StaggeredWindow, groups: Sequence[tuple[int, int]]) -> KVCache:
    """A cache of `StaggeredLayer`s (one per block) sharing `window`, with buffer-row `groups` (rows, slots)."""
    cache = new_cache(model)
    cache.layers = [StaggeredLayer(window, groups) for _ in cache.layers]
    return cache


def fill_staggered_prefix(
    cache: KVCache, group: int, keys_values: KeysValues, rows: torch.Tensor | None = None
) -> None:
    """The first slots of every row of `group` of a `staggered_cache`, block by block (`StaggeredLayer.fill_prefix`):
    `keys_values`, or with `rows` its rows `rows` (taken one block at a time)."""
    for layer, (keys, values) in zip(cache.layers, keys_values, strict=True):
        if rows is not None:
            keys, values = keys[rows], values[rows]
        layer.fill_prefix(group, keys, values)


def full_mask(rows: int, length: int, device: torch.device | str) -> torch.Tensor:
    """The explicit 2-D mask of rows that attend to all `length` positions (cached + new)."""
    return torch.ones(rows, length, dtype=torch.long, device=device)


def partial_mask(visible: torch.Tensor, attended: int) -> torch.Tensor:
    """A 2-D mask: the cached positions `visible` [rows, P] (bool) marks, then `attended` positions every row sees."""
    attend = torch.ones(visible.shape[0], attended, dtype=torch.long, device=visible.device)
    return torch.cat([visible.long(), attend], dim=1)


def additive_mask(seen: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A 4-D mask [rows, 1, 1, slots] for one new position per row that sees the cache slots `seen` [rows, slots]
    (bool) marks: 0 there, the dtype's most negative value elsewhere (used as given, instead of the causal mask)."""
    mask = torch.zeros(seen.shape[0], 1, 1, seen.shape[1], dtype=dtype, device=seen.device)
    mask.masked_fill_(~seen[:, None, None], torch.finfo(dtype).min)
    return mask


def cache_arguments(cache: KVCache) -> dict[str, object]:
    """The keyword arguments of a model forward (or an nnsight trace) that reads and extends `cache`."""
    return {"cache": cache, "use_cache": True}


def cached_forward(model: LoadedModel, cache: KVCache, **inputs: object):
    """`model.hf(**inputs)` on top of `cache`, which it extends (inputs: ids or embeddings, `attention_mask`,
    `position_ids`, `logits_to_keep`)."""
    return model.hf(**inputs, **cache_arguments(cache))
