"""Staggered decoding: cells enter one running decode in waves, each wave leaving N forwards after it entered.

`decode_patched` runs a chunk of cells through one patched forward and N-1 decode steps. Here wave k enters at
forward k: one forward carries the patched step of the wave entering then and the decode steps of the waves still in
flight (continuous batching), each row at its own position in one preallocated cache, with a per-row mask. Waves
cost (last wave's start + N) forwards instead of N each. Cells equal `decode_patched`'s up to float rounding (the
same products, summed in other batch shapes); tests check both against the naive per-cell reference.

A streamed grid (`grid.stream_waves`) decodes its middle row first and the rest as it leaves: on a CPU each forward
costs at least one read of all the weights (~60 ms for the embedded model), so letting the rest in earlier would put
its heavy patched step before the first row is whole. The first wave's forwards are light, so the model's own
continuation (`ContinuationRows`: N-1 decode steps for every text position, rows with the text's keys/values) is
decoded in them rather than in forwards of its own. Streaming also gets a stop check after every forward (Cancel),
and the rest in one batch however many cells (`decode_patched` splits at its CPU chunk size).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass

import torch

from future_lens import defaults
from future_lens.lens.architectures import attention_window
from future_lens.lens.engine import (
    CellPredictions,
    PatchedCells,
    PrefixStore,
    bytes_per_row,
    first_token_stats,
    free_memory,
    prefix_keys_values,
)
from future_lens.lens.interventions import patch_block_outputs
from future_lens.lens.kv_cache import (
    KeysValues,
    StaggeredWindow,
    additive_mask,
    cached_forward,
    fill_staggered_prefix,
    staggered_cache,
)
from future_lens.lens.models import LoadedModel

#: Share of the free memory the cache of all cells of a staggered decode may use (else: one wave after another).
CACHE_MEMORY_SHARE = 0.25

#: The waves that finished at one forward: (wave index, its cells' predictions in the wave's order).
Finished = list[tuple[int, CellPredictions]]


@dataclass
class ContinuationRows:
    """The model's own greedy continuation after each of a text's T positions, decoded in the same forwards as the
    cells (the first N-1 forwards, where a streamed grid's forwards are light): row t sees the text's keys/values up
    to position t (`keys_values`, of [prefix + text]) and is fed the model's next token there (`next_ids`) first.
    `token_ids`/`probs` ([T, N], column 0 the next token) are set once decoded."""

    keys_values: KeysValues
    n_prefix: int
    next_ids: torch.Tensor  # [T] long
    next_probs: torch.Tensor  # [T] float32
    steps: int  # N
    token_ids: torch.Tensor | None = None
    probs: torch.Tensor | None = None

    @property
    def n_rows(self) -> int:
        return len(self.next_ids)

    @property
    def text_length(self) -> int:
        return self.n_prefix + self.n_rows

    def done(self) -> bool:
        return self.token_ids is not None


def can_decode_alongside(model: LoadedModel, text_length: int, n_future: int) -> bool:
    """Whether continuation rows of a text of `text_length` positions (prefix included) can share the forwards:
    every position visible to the model (no shorter sliding window)."""
    window = attention_window(model.hf.config)
    return window is None or window >= text_length + n_future - 1


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
    top_k: int = defaults.TOP_K,
    prefixes: tuple[PrefixStore, Sequence[Hashable]] | None = None,
    alongside: ContinuationRows | None = None,
) -> Iterator[Finished]:
    """Decode `cells` (N greedy tokens each, the top-k of the first), wave k (`entering[k]`, cell indices; may be
    empty) entering at forward k. Yields once per forward the waves it finished (often none), so a consumer can stop
    between forwards. `alongside` (continuation rows; wave 0 must not be empty) is decoded in the first N-1
    forwards and set before the yield of the forward that finished it. Only where `can_stagger` (and, with
    `alongside`, `can_decode_alongside`): the caller decodes wave after wave otherwise."""
    if n_future < 1:
        raise ValueError("n_future must be at least 1")
    if not can_stagger(model, cells, n_future):
        raise ValueError("these cells cannot be decoded staggered (contexts of several lengths, or too many cells)")
    if alongside is not None and (not len(entering) or not len(entering[0])):
        raise ValueError("continuation rows go with a first wave entering at forward 0")
    if alongside is not None and alongside.steps == 1:  # nothing to decode: the next tokens are the continuation
        alongside.token_ids, alongside.probs = alongside.next_ids[:, None].cpu(), alongside.next_probs[:, None].cpu()
        alongside = None
    waves, order = _waves(entering)
    run = _StaggeredRun(model, cells, waves, order, n_future, top_k, prefixes, alongside)
    n_forwards = waves[-1].enters + n_future if waves else 0
    for forward in range(n_forwards):
        run.forward(forward)
        if alongside is not None and forward == alongside.steps - 2:
            alongside.token_ids, alongside.probs = run.continuation()
        active = [wave for wave in waves if wave.enters <= forward < wave.enters + n_future]
        yield [(wave.index, run.predictions(wave)) for wave in active if wave.enters + n_future - 1 == forward]


class _StaggeredRun:
    """The state of one staggered decode: the cache, each row's decoded tokens so far and the cells' first-token
    facts. Buffer rows: the continuation rows (if any), then the cells wave by wave. Row r is fed at forwards
    `enters[r]` .. `enters[r] + n_steps[r] - 1`, at position `first_position[r] + step`, writing slot
    `first_slot[r] + step`, and sees slots up to `sees_until[r]` and its own slots from `first_slot[r]`."""

    def __init__(
        self,
        model: LoadedModel,
        cells: PatchedCells,
        waves: list[_Wave],
        order: torch.Tensor,
        n_future: int,
        top_k: int,
        prefixes: tuple[PrefixStore, Sequence[Hashable]] | None,
        alongside: ContinuationRows | None,
    ):
        device, dtype = model.device, model.dtype
        self.model = model
        prompt_len = len(cells.contexts[0])
        n_text = alongside.n_rows if alongside is not None else 0
        self.n_text, n_rows = n_text, n_text + len(order)
        self.waves = [_Wave(w.index, w.start + n_text, w.end + n_text, w.enters) for w in waves]
        self.cell_slots = prompt_len + n_future - 1
        self.text_slots = alongside.text_length + n_future - 1 if alongside is not None else 0
        contexts = torch.stack(list(cells.contexts)).to(device, dtype)
        context_index = cells.context_index[order].to(device)
        self.layers, self.states = cells.layers[order].to(device), cells.states[order].to(device, dtype)
        self.reference = cells.reference.take(order) if cells.reference is not None else None
        self.window = StaggeredWindow()
        groups = [(n_text, self.text_slots), (len(order), self.cell_slots)] if n_text else [(n_rows, self.cell_slots)]
        self.cache = staggered_cache(model, self.window, groups)
        long = {"dtype": torch.long, "device": device}
        self.enters = torch.zeros(n_rows, **long)
        self.n_steps = torch.full((n_rows,), n_future, **long)
        self.first_position = torch.full((n_rows,), prompt_len - 1, **long)
        self.sees_until = torch.full((n_rows,), prompt_len - 2, **long)
        for wave in self.waves:
            self.enters[wave.start : wave.end] = wave.enters
        first_embeds = [contexts[context_index, -1]]
        if alongside is not None:
            text = slice(0, n_text)
            positions = alongside.n_prefix + torch.arange(n_text, device=device)
            self.n_steps[text] = alongside.steps - 1
            self.first_position[text] = positions + 1
            self.sees_until[text] = positions
            first_embeds.insert(0, model.adapter.embed_tokens(alongside.next_ids.to(device)).to(dtype))
            fill_staggered_prefix(self.cache, 0, alongside.keys_values)
        self.first_slot = self.first_position.clone()
        if alongside is not None:
            self.first_slot[:n_text] = alongside.text_length
        self.first_embeds = torch.cat(first_embeds)
        if prompt_len > 1:
            if prefixes is None:
                prefix = prefix_keys_values(model, contexts)
            else:
                store, keys = prefixes
                prefix = store.stacked(list(keys), list(cells.contexts))
            fill_staggered_prefix(self.cache, 1 if n_text else 0, prefix, rows=context_index)
        top_k = min(top_k, model.adapter.vocab_size)
        self.token_ids = torch.zeros(n_rows, n_future, **long)
        self.token_probs = torch.zeros(n_rows, n_future, dtype=torch.float32, device=device)
        self.topk_ids = torch.zeros(n_rows, top_k, **long)
        self.topk_probs = torch.zeros(n_rows, top_k, dtype=torch.float32, device=device)
        self.stats: list[tuple[slice, object]] = []
        self.alongside = alongside

    def _window(self, forward: int) -> tuple[int, int]:
        """The buffer rows fed at `forward` (always one run of rows: see `decode_staggered`)."""
        fed = torch.nonzero((self.enters <= forward) & (forward < self.enters + self.n_steps)).squeeze(1)
        if not len(fed):
            return 0, 0
        start, end = int(fed[0]), int(fed[-1]) + 1
        if len(fed) != end - start:
            raise RuntimeError("rows fed at one forward must be consecutive")
        return start, end

    def forward(self, forward: int) -> None:
        """One forward over the rows fed now: the patched position of the wave entering now, one decode step for
        the other cells and for the continuation rows."""
        model, device = self.model, self.model.device
        start, end = self._window(forward)
        if start == end:
            return
        steps = forward - self.enters[start:end]
        positions = self.first_position[start:end] + steps
        slots = self.first_slot[start:end] + steps
        embeds = self.first_embeds[start:end].clone()
        decoding = torch.nonzero(steps > 0).squeeze(1)
        if len(decoding):
            previous = self.token_ids[start + decoding, steps[decoding] - 1]
            embeds[decoding] = model.adapter.embed_tokens(previous).to(embeds.dtype)
        width = max(self.text_slots if start < self.n_text else 0, self.cell_slots if end > self.n_text else 0)
        every = torch.arange(width, device=device)[None, :]
        seen = (every <= self.sees_until[start:end, None]) | (
            (every >= self.first_slot[start:end, None]) & (every <= slots[:, None])
        )
        mask = additive_mask(seen, model.dtype)
        self.window.start, self.window.end, self.window.slots = start, end, slots
        newest = next((w for w in self.waves if w.enters == forward), None)
        patched = slice(newest.start, newest.end) if newest is not None else slice(end, end)
        with patch_block_outputs(
            model.adapter,
            self.layers[patched.start - self.n_text : patched.stop - self.n_text],
            self.states[patched.start - self.n_text : patched.stop - self.n_text],
            first_row=patched.start - start,
        ):
            out = cached_forward(
                model,
                self.cache,
                inputs_embeds=embeds[:, None],
                attention_mask=mask,
                position_ids=positions[:, None],
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
            reference = self.reference.take(torch.arange(rows.start - self.n_text, rows.stop - self.n_text))
            self.stats.append((rows, first_token_stats(torch.log_softmax(logits, dim=-1), reference, compare=True)))

    def continuation(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The continuation rows' tokens [T, N] and probabilities, the model's next token first."""
        alongside, rows = self.alongside, slice(0, self.n_text)
        decoded = alongside.steps - 1
        ids = torch.cat([alongside.next_ids[:, None].to(self.token_ids.device), self.token_ids[rows, :decoded]], 1)
        probs = torch.cat(
            [alongside.next_probs[:, None].to(self.token_probs.device), self.token_probs[rows, :decoded]], 1
        )
        return ids.cpu(), probs.cpu()

    def predictions(self, wave: _Wave) -> CellPredictions:
        rows = slice(wave.start + self.n_text, wave.end + self.n_text)
        stats = next((s for r, s in self.stats if r == rows), None)
        return CellPredictions(
            self.token_ids[rows], self.token_probs[rows], self.topk_ids[rows], self.topk_probs[rows], stats
        ).cpu()
