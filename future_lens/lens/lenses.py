"""Lenses: ways of reading what a hidden state predicts. All share one interface, `Lens.predict`.

A lens maps C cells (a source state and the block it came from) to N predicted tokens each with probabilities,
plus the top-k alternatives for the first token. `LogitLens` reads the next token directly; the patched-context
lenses (`FutureLens` with learned soft prompts, `FixedPromptLens` with a text prompt) decode N tokens.
`Lens.grid(text, ...)` runs the source pass and reads every (layer, token) cell of a text: the public entry point.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar

import torch

from future_lens import defaults
from future_lens.lens.engine import (
    CellPredictions,
    CellReference,
    PatchedCells,
    PrefixStore,
    decode_patched,
    default_chunk_rows,
    first_token_stats,
    next_token_probs,
)
from future_lens.lens.grid import Grid, GridStream, compute_grids
from future_lens.lens.interventions import patch_block_outputs
from future_lens.lens.kv_cache import rows_cache
from future_lens.lens.layers import parse_layers
from future_lens.lens.models import LoadedModel
from future_lens.lens.prompts import SoftPromptSet, default_prompt_dir, load_soft_prompts
from future_lens.lens.protocol import Distributions, TrackingUnsupportedError  # here for callers too (track.py's)
from future_lens.lens.source import tokenize
from future_lens.lens.staggered import Finished, can_stagger, decode_staggered
from future_lens.lens.track import Track, compute_track

PAPER_FIXED_PROMPT = 'Hello! Could you please tell me more about "'
#: The token-identity target of Patchscopes (Ghandeharioun et al. 2024): few-shot "repeat the token", the source
#: state patched at the final "?".
IDENTITY_PATCHSCOPE_PROMPT = "cat -> cat; 1135 -> 1135; hello -> hello; ?"
#: Version of what the lenses compute for given inputs; part of every permalink id. Bump it with any fix that
#: changes cells (decoding, patching, prompts' use), so a stored grid is never served for the new computation.
LENS_SEMANTICS = 1

LayerSelection = str | Sequence[int] | None
#: Cells per forward (logit lens: per unembedding) while reading whole first-token distributions (`track`): each
#: row holds a whole-vocabulary distribution.
DISTRIBUTION_CHUNK_ROWS = 256


def prompt_token_ids(model: LoadedModel, prompt: str) -> list[int]:
    """A text prompt as a target context: the model's context prefix, then the prompt's tokens."""
    return list(model.context_prefix) + tokenize(model, prompt)


@torch.inference_mode()
def prompt_embeddings(model: LoadedModel, prompt: str) -> torch.Tensor:
    """`prompt_token_ids` as input embeddings [P, d] on the model's device and dtype."""
    ids = torch.tensor(prompt_token_ids(model, prompt), device=model.device)
    return model.adapter.embed_tokens(ids)


@torch.inference_mode()
def logit_lens_probs(model: LoadedModel, hidden: torch.Tensor) -> torch.Tensor:
    """Final norm + unembedding of block outputs `hidden` [..., d]: float32 next-token probabilities [..., V]."""
    hidden = hidden.to(model.device, model.dtype)
    return torch.softmax(model.adapter.logits_from_hidden(hidden).float(), dim=-1)


@torch.inference_mode()
def logit_lens_topk(model: LoadedModel, hidden: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`logit_lens_probs`' top-k next-token probabilities and ids."""
    probs = logit_lens_probs(model, hidden)
    return probs.topk(min(top_k, probs.shape[-1]), dim=-1)


class Lens(ABC):
    """Reads predictions out of hidden states taken at given blocks of `model`."""

    method: ClassVar[str]
    #: The most future tokens this lens can decode (None: no limit).
    max_future: ClassVar[int | None] = None
    #: Whether `predict` takes a `reference` and returns first-token statistics (cells of other lenses have none).
    measures_first_token: ClassVar[bool] = False
    #: Whether rows may stream as they are computed (`predict_waves`); every lens does unless it says otherwise.
    streams: ClassVar[bool] = True
    #: Whether each cell's first token is the lens's reading at offset 0 (N = 0): its prediction of the token right
    #: after the cell's input token, what the model's own next token there (`Grid.next_tokens`) answers. Only such
    #: lenses get a prediction depth per column (`Grid.prediction_depth`, future_lens/lens/depth.py). Off unless a
    #: lens says so: a lens reading something else first (the current token, a later offset) must not claim one.
    reads_next_token: ClassVar[bool] = False

    def __init__(self, model: LoadedModel):
        self.model = model

    @abstractmethod
    def predict(
        self,
        states: torch.Tensor,
        layers: torch.Tensor,
        n_future: int,
        top_k: int,
        reference: CellReference | None = None,
    ) -> CellPredictions:
        """Predictions for cells: `states` [C, d] taken at block outputs `layers` [C]; with `reference`, statistics
        of each cell's first-token distribution against the model's own next-token distribution too."""

    def predict_waves(
        self,
        states: torch.Tensor,
        layers: torch.Tensor,
        entering: Sequence[torch.Tensor],
        n_future: int,
        top_k: int,
        reference: CellReference | None = None,
    ) -> Iterator[Finished]:
        """`predict` for cells in waves (`entering[k]`: the cell indices of wave k, maybe none), yielding after each
        step of work the waves it finished, so that early waves show early and a consumer can stop between steps.
        Decoding lenses run the waves in one staggered decode (wave k entering at forward k:
        future_lens/lens/staggered.py) where `staggered` allows; other lenses, one wave after another."""
        staggered = self.staggered(states, layers, n_future, reference)
        if staggered is not None:
            cells, prefixes = staggered
            yield from decode_staggered(self.model, cells, entering, n_future=n_future, top_k=top_k, prefixes=prefixes)
            return
        for index, members in enumerate(entering):
            if len(members):
                part = reference.take(members) if reference is not None else None
                yield [(index, self.predict(states[members], layers[members], n_future, top_k, part))]

    def staggered(
        self, states: torch.Tensor, layers: torch.Tensor, n_future: int, reference: CellReference | None
    ) -> tuple[PatchedCells, tuple[PrefixStore, list[object]]] | None:
        """Cells for `decode_staggered` (with the lens's prefix store), or None: this lens does not decode."""
        return None

    def first_token_distributions(self, states: torch.Tensor, layers: torch.Tensor) -> Distributions:
        """The whole first-token distribution of each cell (for `track`), a chunk of cells at a time."""
        raise TrackingUnsupportedError(f"the {self.method!r} lens has no first-token distribution to track")

    @classmethod
    def can_track(cls) -> bool:
        """Whether this lens reads a first-token distribution (`first_token_distributions`) that can be tracked."""
        return cls.first_token_distributions is not Lens.first_token_distributions

    def effective_future(self, n_future: int) -> int:
        return min(n_future, self.max_future) if self.max_future else n_future

    def describe(self, layers: list[int]) -> dict[str, object]:
        """Method-specific facts recorded in the grid (which prompt was used, ...)."""
        return {}

    def identity(self, layers: list[int]) -> dict[str, object]:
        """Method-specific facts that determine this lens's cells on `layers` (part of a grid's permalink id)."""
        return {}

    def grid(
        self,
        text: str,
        *,
        layers: LayerSelection = None,
        n_future: int = defaults.N_FUTURE,
        top_k: int = defaults.TOP_K,
    ) -> Grid:
        """The grid of `text`: for each chosen block (`"all"`, `"::3"`, `[0, 5]`; None: all) and token, what the
        hidden state there predicts (N tokens; the logit lens reads 1)."""
        return self.grids([text], layers=layers, n_future=n_future, top_k=top_k)[0]

    def grids(
        self,
        texts: Sequence[str],
        *,
        layers: LayerSelection = None,
        n_future: int = defaults.N_FUTURE,
        top_k: int = defaults.TOP_K,
    ) -> list[Grid]:
        """Grids of several texts; the cells of all texts go through the lens together, in one batched call."""
        chosen = parse_layers(layers, self.model.adapter.n_layers)
        return compute_grids(self, texts, chosen, self.effective_future(n_future), top_k)

    def stream(
        self,
        text: str,
        *,
        layers: LayerSelection = None,
        n_future: int = defaults.N_FUTURE,
        top_k: int = defaults.TOP_K,
        waves: Sequence[Sequence[int]] | None = None,
    ) -> GridStream:
        """The grid of `text` computed a few rows at a time: iterate `.rows()` (rows as they are computed; `waves`,
        lists of row indices, wave k entering the decode at its k-th forward; default `stream_waves`), then
        `.grid()` is the whole grid."""
        chosen = parse_layers(layers, self.model.adapter.n_layers)
        return GridStream(self, text, chosen, self.effective_future(n_future), top_k, waves)

    def track(self, text: str, token_ids: Sequence[int], *, layers: LayerSelection = None) -> Track:
        """Trajectories of `token_ids` through `text`: each one's probability as the first predicted token, and
        its rank, at every chosen layer and position (see future_lens/lens/track.py)."""
        return compute_track(self, text, token_ids, parse_layers(layers, self.model.adapter.n_layers))


class LogitLens(Lens):
    """Final norm + unembedding applied to a block's output (nostalgebraist 2020): the next token only."""

    method = "logit"
    max_future = 1
    measures_first_token = True
    #: Its one token is the next token read from the state (N = 0); so for the tuned and Jacobian lenses, which
    #: read a map of the state the same way (future_lens/lens/linear.py).
    reads_next_token = True

    def readout_states(self, states: torch.Tensor, layers: torch.Tensor) -> torch.Tensor:
        """The states that final norm + unembedding read: the block outputs themselves (a map of them in
        subclasses such as the tuned lens)."""
        return states

    def first_token_logits(self, states: torch.Tensor, layers: torch.Tensor) -> torch.Tensor:
        """Float32 next-token logits [C, V] of cells `states` [C, d] at blocks `layers` [C]."""
        hidden = self.readout_states(states.to(self.model.device), layers.to(self.model.device))
        return self.model.adapter.logits_from_hidden(hidden.to(self.model.dtype)).float()

    @torch.inference_mode()
    def predict(
        self,
        states: torch.Tensor,
        layers: torch.Tensor,
        n_future: int,
        top_k: int,
        reference: CellReference | None = None,
    ) -> CellPredictions:
        logits = self.first_token_logits(states, layers)
        topk_probs, topk_ids = torch.softmax(logits, dim=-1).topk(min(top_k, logits.shape[-1]), dim=-1)
        stats = None
        if reference is not None:
            stats = first_token_stats(torch.log_softmax(logits, dim=-1), reference, compare=False)
        return CellPredictions(topk_ids[:, :1], topk_probs[:, :1], topk_ids, topk_probs, stats).cpu()

    @torch.inference_mode()
    def first_token_distributions(self, states: torch.Tensor, layers: torch.Tensor) -> Distributions:
        for rows in torch.arange(len(states)).split(DISTRIBUTION_CHUNK_ROWS):
            yield rows, torch.softmax(self.first_token_logits(states[rows], layers[rows]), dim=-1)


class PatchedContextLens(Lens):
    """Patch the state into the last position of a per-layer target context at the same block, then decode.

    The first decoded token is the model's output at the patched position itself, before any token is fed back: the
    reading at offset 0 (N = 0), the slot whose output the training objective and the evaluation score against the
    model's own next token (future_lens/training/objective.py; `tokens[1]` onwards are N = 1, 2, ...). So the future
    lens (whose prompts are trained on later offsets, by default N = 1, through that same slot), the fixed prompt and
    the identity patchscope (which Patchscopes also reads as a next-token decoder) all read the next token first,
    and get a prediction depth (`reads_next_token`). At the model's last block the patched state is the final
    hidden state itself, so there the first token is the model's own next token, as for the logit lens."""

    measures_first_token = True
    reads_next_token = True

    def __init__(self, model: LoadedModel, chunk_rows: int | None = None):
        super().__init__(model)
        self.chunk_rows = chunk_rows
        self.prefixes = PrefixStore(model)

    @abstractmethod
    def context_key(self, layer: int) -> object:
        """Layers with equal keys share one target context."""

    @abstractmethod
    def context_embeddings(self, layer: int) -> torch.Tensor:
        """The target context for cells of `layer`, as input embeddings [P, d]."""

    def patched_cells(
        self, states: torch.Tensor, layers: torch.Tensor, reference: CellReference | None
    ) -> tuple[PatchedCells, list[object]]:
        """The cells with their layers' target contexts (one per distinct context key), and those keys."""
        keys: dict[object, int] = {}
        contexts: list[torch.Tensor] = []
        index = []
        for layer in layers.tolist():
            key = self.context_key(layer)
            if key not in keys:
                keys[key] = len(contexts)
                contexts.append(self.context_embeddings(layer))
            index.append(keys[key])
        return PatchedCells(contexts, torch.tensor(index), layers, states, reference), list(keys)

    def predict(
        self,
        states: torch.Tensor,
        layers: torch.Tensor,
        n_future: int,
        top_k: int,
        reference: CellReference | None = None,
    ) -> CellPredictions:
        cells, keys = self.patched_cells(states, layers, reference)
        prefixes = (self.prefixes, keys)
        return decode_patched(
            self.model, cells, n_future=n_future, top_k=top_k, chunk_rows=self.chunk_rows, prefixes=prefixes
        )

    def staggered(
        self, states: torch.Tensor, layers: torch.Tensor, n_future: int, reference: CellReference | None
    ) -> tuple[PatchedCells, tuple[PrefixStore, list[object]]] | None:
        """The cells and their stored prefixes for `decode_staggered`, where they can be decoded so."""
        cells, keys = self.patched_cells(states, layers, reference)
        return (cells, (self.prefixes, keys)) if can_stagger(self.model, cells, n_future) else None

    @torch.inference_mode()
    def first_token_distributions(self, states: torch.Tensor, layers: torch.Tensor) -> Distributions:
        """Cells sharing a target context together, the context's prefix keys/values from the lens's store, then
        one patched forward per chunk (as the engine does)."""
        model = self.model
        keys = [self.context_key(layer) for layer in layers.tolist()]
        for key in dict.fromkeys(keys):
            members = torch.tensor([i for i, k in enumerate(keys) if k == key])
            context = self.context_embeddings(int(layers[members[0]])).to(model.device, model.dtype)
            prefix = self.prefixes.stacked([key], [context])
            rows = self.chunk_rows or min(DISTRIBUTION_CHUNK_ROWS, default_chunk_rows(model, len(context)))
            for chunk in members.split(rows):
                cache = rows_cache(model, prefix, torch.zeros(len(chunk), dtype=torch.long, device=model.device))
                embeds = context[None, -1:].expand(len(chunk), 1, -1)
                chunk_layers = layers[chunk].to(model.device)
                chunk_states = states[chunk].to(model.device, model.dtype)
                with patch_block_outputs(model.adapter, chunk_layers, chunk_states):
                    yield chunk, next_token_probs(model, cache, len(context) - 1, inputs_embeds=embeds)


class FutureLens(PatchedContextLens):
    """The paper's learned soft prompt, one per layer (nearest trained layer where a layer has none).

    `prompts`: a loaded set, a folder of prompt artifacts, or None for the model's shipped prompts
    (`checkpoints/<model id>`); artifacts trained for other weights are refused (`PromptArtifactError`)."""

    method = "future"

    def __init__(self, model: LoadedModel, prompts: SoftPromptSet | Path | None = None, chunk_rows: int | None = None):
        super().__init__(model, chunk_rows)
        if not isinstance(prompts, SoftPromptSet):
            prompts = load_soft_prompts(Path(prompts) if prompts else default_prompt_dir(model.id), model)
        self.prompts = prompts

    def context_key(self, layer: int) -> object:
        return self.prompts.source_layer(layer)

    def context_embeddings(self, layer: int) -> torch.Tensor:
        return self.prompts.for_layer(layer)

    def describe(self, layers: list[int]) -> dict[str, object]:
        return {"prompt_layers": [self.prompts.source_layer(layer) for layer in layers]}

    def identity(self, layers: list[int]) -> dict[str, object]:
        used = sorted({self.prompts.source_layer(layer) for layer in layers})
        return {"prompt_hashes": {str(layer): self.prompts.hash_of(layer) for layer in used}}


class FixedPromptLens(PatchedContextLens):
    """A hand-written text prompt as the target context (the paper's baseline), patched at its last token."""

    method = "fixed"

    def __init__(self, model: LoadedModel, prompt: str = PAPER_FIXED_PROMPT, chunk_rows: int | None = None):
        super().__init__(model, chunk_rows)
        self.prompt = prompt
        if not prompt_token_ids(model, prompt):
            raise ValueError("prompt is empty: it has no tokens")
        self._embeddings: torch.Tensor | None = None

    def context_key(self, layer: int) -> object:
        return 0

    def context_embeddings(self, layer: int) -> torch.Tensor:
        """The prompt's embeddings, computed on first use (where the model runs: the inference worker, not the
        thread that validates a request)."""
        if self._embeddings is None:
            self._embeddings = prompt_embeddings(self.model, self.prompt)
        return self._embeddings

    def describe(self, layers: list[int]) -> dict[str, object]:
        return {"prompt": self.prompt}

    def identity(self, layers: list[int]) -> dict[str, object]:
        return {"prompt": self.prompt}


class IdentityPatchscope(FixedPromptLens):
    """Patchscopes' token-identity target (`IDENTITY_PATCHSCOPE_PROMPT`): the fixed-prompt machinery with a preset
    prompt that asks the model to repeat what the patched state represents; training-free."""

    method = "identity"

    def __init__(self, model: LoadedModel, chunk_rows: int | None = None):
        super().__init__(model, IDENTITY_PATCHSCOPE_PROMPT, chunk_rows)
