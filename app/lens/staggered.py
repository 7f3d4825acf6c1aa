"""Staggered decoding: cells enter one running decode in waves, each wave leaving N forwards after it entered.

`decode_patched` runs a chunk of cells through one patched forward and N-1 decode steps. Here wave k enters at
forward k: one forward carries the patched step of the wave entering then and the decode steps of the waves still in
flight (continuous batching), each row at its own position in one preallocated cache, with a per-row mask. Waves
cost (last wave's start + N) forwards instead of N each. Cells equal `decode_patched`'s up to float rounding (the
same products, summed in other batch shapes); tests check both against the naive per-cell reference.

A streamed grid (`grid.stream_waves`) decodes its middle row first and the rest as it leaves: on a CPU each forward
costs at least one read of all the weights (~60 ms for the embedded model), so letting the rest in earlier would put
its heavy patched step before the first row is whole. What streaming gets from here: a stop check after every
forward (Cancel), and the rest in one batch however many cells (`decode_patched` splits at its CPU chunk size).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from app.lens.architectures import attention_window
from app.lens.engine import (
    CellPredictions,
    PatchedCells,
    PrefixStore,
    bytes_per_row,
    first_token_stats,
    free_memory,
    prefix_keys_values,
)
from app.lens.interventions import patch_block_outputs
from app.lens.models import LoadedModel

#: Share of the free memory the cache of all cells of a staggered decode may use (else: one wave after another).
CACHE_MEMORY_SHARE = 0.25

#: The waves that finished at one forward: (wave index, its cells' predictions in the wave's order).
Finished = list[tuple[int, CellPredictions]]


@dataclass
class _Window:
    """Which cache rows the current forward runs (`start:end`) and the position each of them writes."""

    start: int = 0
    end: int = 0
    positions: torch.Tensor | None = None


class StaggeredLayer(DynamicLayer):
    """A cache layer with one buffer row per cell, each forward writing its rows at their own positions. Slots not
    written yet are zeros (finite, so the mask's large negative bias removes them exactly); inference only."""

    def __init__(self, window: _Window, n_rows: int, capacity: int):
        super().__init__()
        self.window, self.n_rows, self.capacity = window, n_rows, capacity

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        heads, width = key_states.shape[1], key_states.shape[-1]
        self.key_buffer = key_states.new_zeros((self.n_rows, heads, self.capacity, width))
        self.value_buffer = value_states.new_zeros((self.n_rows, value_states.shape[1], self.capacity, width))

    def fill_prefix(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """The shared context's first positions, [n_rows, heads, P-1, d_head] each."""
        self.lazy_initialization(keys, values)
        self.key_buffer[:, :, : keys.shape[2]] = keys
        self.value_buffer[:, :, : values.shape[2]] = values

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        window = self.window
        rows = torch.arange(window.end - window.start, device=key_states.device)
        self.keys = self.key_buffer[window.start : window.end]
        self.values = self.value_buffer[window.start : window.end]
        self.keys[rows, :, window.positions] = key_states[:, :, 0]
        self.values[rows, :, window.positions] = value_states[:, :, 0]
        return self.keys, self.values


@dataclass
class _Wave:
    """Wave `index`: buffer rows `start:end`, entering at forward `enters`."""

    index: int
    start: int
    end: int
    enters: int


def staggered_fits(model: LoadedModel, n_rows: int, capacity: int) -> bool:
    """Whether the whole decode's cache (every cell at once) fits the memory share, and the model attends to every
    position of it (a 4-D mask replaces the model's own, so a shorter sliding window would be lost)."""
    window = attention_window(model.hf.config)
    if window is not None and window < capacity:
        return False
    needed = n_rows * bytes_per_row(model.hf.config, model.dtype, capacity)
    return needed <= free_memory(model.device) * CACHE_MEMORY_SHARE


def _waves(entering: Sequence[torch.Tensor]) -> tuple[list[_Wave], torch.Tensor]:
    """The non-empty waves with their buffer rows, and the cells in buffer order."""
    waves, order, start = [], [], 0
    for index, cells in enumerate(entering):
        if len(cells):
            waves.append(_Wave(index, start, start + len(cells), index))
            order.append(cells)
            start += len(cells)
    return waves, torch.cat(order) if order else torch.zeros(0, dtype=torch.long)


def can_stagger(model: LoadedModel, cells: PatchedCells, n_future: int) -> bool:
    """Whether `decode_staggered` can take these cells: contexts of one length, and `staggered_fits`."""
    lengths = {len(c) for c in cells.contexts}
    return len(lengths) == 1 and staggered_fits(model, len(cells.states), lengths.pop() + n_future - 1)


@torch.inference_mode()
def decode_staggered(
    model: LoadedModel,
    cells: PatchedCells,
    entering: Sequence[torch.Tensor],
    *,
    n_future: int,
    top_k: int = 5,
    prefixes: tuple[PrefixStore, Sequence[Hashable]] | None = None,
) -> Iterator[Finished]:
    """Decode `cells` (N greedy tokens each, the top-k of the first), wave k (`entering[k]`, cell indices; may be
    empty) entering at forward k. Yields once per forward the waves it finished (often none), so a consumer can stop
    between forwards. Only where `can_stagger`: the caller decodes wave after wave otherwise."""
    if n_future < 1:
        raise ValueError("n_future must be at least 1")
    if not can_stagger(model, cells, n_future):
        raise ValueError("these cells cannot be decoded staggered (contexts of several lengths, or too many cells)")
    prompt_len = len(cells.contexts[0])
    waves, order = _waves(entering)
    run = _StaggeredRun(model, cells, waves, order, prompt_len, n_future, top_k, prefixes)
    for forward in range(waves[-1].enters + n_future if waves else 0):
        active = [wave for wave in waves if wave.enters <= forward < wave.enters + n_future]
        if active:
            run.forward(forward, active)
        yield [(wave.index, run.predictions(wave)) for wave in active if wave.enters + n_future - 1 == forward]


class _StaggeredRun:
    """The state of one staggered decode: the cache, each cell's decoded tokens so far and its first-token facts."""

    def __init__(
        self,
        model: LoadedModel,
        cells: PatchedCells,
        waves: list[_Wave],
        order: torch.Tensor,
        prompt_len: int,
        n_future: int,
        top_k: int,
        prefixes: tuple[PrefixStore, Sequence[Hashable]] | None,
    ):
        device, dtype = model.device, model.dtype
        self.model, self.prompt_len = model, prompt_len
        self.capacity = prompt_len + n_future - 1
        contexts = torch.stack(list(cells.contexts)).to(device, dtype)
        context_index = cells.context_index[order].to(device)
        self.layers, self.states = cells.layers[order].to(device), cells.states[order].to(device, dtype)
        self.last_embeds = contexts[context_index, -1]
        self.reference = cells.reference.take(order) if cells.reference is not None else None
        self.window = _Window()
        self.cache = DynamicCache(config=model.hf.config)
        self.cache.layers = [StaggeredLayer(self.window, len(order), self.capacity) for _ in self.cache.layers]
        if prompt_len > 1:
            if prefixes is None:
                prefix = prefix_keys_values(model, contexts)
            else:
                store, keys = prefixes
                prefix = store.stacked(list(keys), list(cells.contexts))
            for layer, (keys_, values) in zip(self.cache.layers, prefix, strict=True):
                layer.fill_prefix(keys_[context_index], values[context_index])
        n_rows = len(order)
        self.enters = torch.zeros(n_rows, dtype=torch.long, device=device)
        for wave in waves:
            self.enters[wave.start : wave.end] = wave.enters
        top_k = min(top_k, model.adapter.vocab_size)
        self.token_ids = torch.zeros(n_rows, n_future, dtype=torch.long, device=device)
        self.token_probs = torch.zeros(n_rows, n_future, dtype=torch.float32, device=device)
        self.topk_ids = torch.zeros(n_rows, top_k, dtype=torch.long, device=device)
        self.topk_probs = torch.zeros(n_rows, top_k, dtype=torch.float32, device=device)
        self.stats: list[tuple[slice, object]] = []

    def forward(self, forward: int, active: list[_Wave]) -> None:
        """One forward over the rows of `active` (consecutive waves): the newest wave's patched position when it
        enters now, one decode step for the others."""
        model, device = self.model, self.model.device
        start, end = active[0].start, active[-1].end
        steps = forward - self.enters[start:end]
        positions = self.prompt_len - 1 + steps
        embeds = self.last_embeds[start:end].clone()
        decoding = torch.nonzero(steps > 0).squeeze(1)
        if len(decoding):
            previous = self.token_ids[start + decoding, steps[decoding] - 1]
            embeds[decoding] = model.adapter.embed_tokens(previous).to(embeds.dtype)
        slots = torch.arange(self.capacity, device=device)
        mask = torch.zeros(end - start, 1, 1, self.capacity, dtype=model.dtype, device=device)
        mask.masked_fill_((slots[None, :] > positions[:, None])[:, None, None], torch.finfo(model.dtype).min)
        self.window.start, self.window.end, self.window.positions = start, end, positions
        newest = active[-1]
        patched = slice(newest.start, newest.end) if newest.enters == forward else slice(end, end)
        with patch_block_outputs(
            model.adapter, self.layers[patched], self.states[patched], first_row=patched.start - start
        ):
            out = model.hf(
                inputs_embeds=embeds[:, None],
                attention_mask=mask,
                position_ids=positions[:, None],
                cache=self.cache,
                use_cache=True,
                logits_to_keep=1,
            )
        logits = out.logits[:, -1].float()
        probs = torch.softmax(logits, dim=-1)
        best_probs, best_ids = probs.max(dim=-1)  # ties go to the lowest id, as in decode_patched
        rows = torch.arange(start, end, device=device)
        self.token_ids[rows, steps] = best_ids
        self.token_probs[rows, steps] = best_probs
        if patched.stop > patched.start:
            self._first_token(patched, logits[patched.start - start :], probs[patched.start - start :])

    def _first_token(self, rows: slice, logits: torch.Tensor, probs: torch.Tensor) -> None:
        self.topk_probs[rows], self.topk_ids[rows] = probs.topk(self.topk_ids.shape[1], dim=-1)
        if self.reference is not None:
            reference = self.reference.take(torch.arange(rows.start, rows.stop))
            self.stats.append((rows, first_token_stats(torch.log_softmax(logits, dim=-1), reference, compare=True)))

    def predictions(self, wave: _Wave) -> CellPredictions:
        rows = slice(wave.start, wave.end)
        stats = next((s for r, s in self.stats if r == rows), None)
        return CellPredictions(
            self.token_ids[rows], self.token_probs[rows], self.topk_ids[rows], self.topk_probs[rows], stats
        ).cpu()
