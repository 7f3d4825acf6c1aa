"""A grid as nnsight work: one `model.session()` per grid, runnable here (`remote=False`) and, later, on NDIF.

The session holds every trace of the grid, so the whole grid is one request (one round trip):

1. a source trace over [prefix + text]: each requested block's output at the text's positions and the model's
   next-token distribution (none of it leaves the server);
2. N-1 traces for the model's own continuation (row t: the text up to t plus its tokens so far, right-padded; causal
   attention keeps the padding out of every position read);
3. the lens: a readout lens (`logit`, `tuned`, `jacobian`) applies its map, the final norm and the unembedding to the
   states; a patched-context lens (`future`, `fixed`, `identity`) runs one `generate` per batch of cells, each row
   patched at its own block at the context's last position on the prompt forward (the KV cache carries it), N
   tokens decoded greedily.

What is sent: the text's ids, the lens's contexts (soft prompts as tensors, text prompts as ids, embedded on the
server), the requested layers' linear maps, and this module's server-side helpers by source. What comes back: the
cells' ids, probabilities, top-k and first-token statistics, the model's next tokens and continuation; no hidden state.
The server runs the session body with only torch, transformers and nnsight installed, so the body and the helpers it
calls use nothing else (`remote="local"` or `RequestMeter` checks that: our modules are hidden while deserializing).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from future_lens import defaults
from future_lens.lens import architectures
from future_lens.lens.architectures import block_output_tensor
from future_lens.lens.engine import CellPredictions, CellStats
from future_lens.lens.grid import Grid, _TextGrid, _TokenTexts
from future_lens.lens.layers import parse_layers
from future_lens.lens.lenses import FixedPromptLens, FutureLens, Lens, LogitLens, PatchedContextLens, prompt_token_ids
from future_lens.lens.linear import LinearMapLens
from future_lens.lens.models import LoadedModel
from future_lens.lens.source import SourcePass, tokenize
from future_lens.lens.tracing import save

#: Most patched rows per `generate` (all of them inside the one session).
SESSION_CHUNK_ROWS = 1024
#: Modules whose functions the session body calls on the server: shipped by source with the request.
SHIPPED_MODULES = (architectures.__name__, __name__)


class SessionDecodeError(RuntimeError):
    """`generate` chose other tokens than the greedy argmax of its own logits (a logits processor of the model's
    generation config): its cells would not be the lens's."""


@dataclass(frozen=True)
class PatchBatch:
    """The cells of some grid rows (`rows`: indices into the grid's layers) decoded in one `generate`: each row's
    context index and, per block, which batch rows it patches with which states (`(layer, row_start, row_stop,
    state_start)`, states layer-major)."""

    rows: list[int]
    contexts: list[int]
    patches: list[tuple[int, int, int, int]]


@dataclass
class SessionPlan:
    """Everything the session needs, built here before anything is sent."""

    ids: torch.Tensor  # [1, S] prefix + text
    start: int  # the text's first position
    layers: list[int]
    n_future: int
    top_k: int
    contexts: list[torch.Tensor]  # soft prompts [P, d] or text prompts' ids [P]
    batches: list[PatchBatch]  # empty for a readout lens
    maps: tuple[torch.Tensor, torch.Tensor, bool] | None = None  # requested layers' (weight, bias, residual)
    compare: bool = True  # whether cells measure KL against the model

    @property
    def n_tokens(self) -> int:
        return self.ids.shape[1] - self.start

    @property
    def traces(self) -> int:
        """Traces (and `generate`s) inside the session: source, continuation steps, patched batches."""
        return 1 + (self.n_future - 1) + len(self.batches)


@dataclass
class SessionGrid:
    """A grid computed in one nnsight session, with what it cost in requests."""

    grid: Grid
    sessions: int  # requests sent: one per grid
    traces: int  # traces inside the session
    request_bytes: list[int] = field(default_factory=list)  # serialized size of each request, when measured


class RequestMeter:
    """A session backend that records each request's serialized size (what `remote=True` would POST, before
    compression), then runs it as NDIF would: deserialized with our modules hidden, on the model here."""

    def __init__(self, model: LoadedModel):
        self.envoy = model.nnsight
        self.sizes: list[int] = []

    def __call__(self, tracer) -> None:
        from nnsight.intervention.backends.local import LocalSimulationBackend
        from nnsight.schema.request import RequestModel

        self.sizes.append(len(RequestModel.serialize(tracer)))
        LocalSimulationBackend(self.envoy)(tracer)


@contextmanager
def shipped_by_value(modules: Sequence[str] = SHIPPED_MODULES) -> Iterator[None]:
    """While active, functions of `modules` are serialized by source (the server has no `future_lens`)."""
    from cloudpickle.cloudpickle import _PICKLE_BY_VALUE_MODULES

    added = [name for name in modules if name not in _PICKLE_BY_VALUE_MODULES]
    _PICKLE_BY_VALUE_MODULES.update(added)
    try:
        yield
    finally:
        _PICKLE_BY_VALUE_MODULES.difference_update(added)


def text_prompt(lens: Lens) -> str | None:
    """The text prompt of a fixed-prompt lens (identity patchscope included), else None."""
    return lens.prompt if isinstance(lens, FixedPromptLens) else None


def lens_contexts(lens: PatchedContextLens, layers: list[int]) -> tuple[list[torch.Tensor], list[int]]:
    """Distinct target contexts (by the lens's own `context_key`) and each layer's index into them. Text prompts go
    as token ids (the server embeds them), soft prompts as tensors."""
    prompt = text_prompt(lens)
    keys: dict[object, int] = {}
    contexts: list[torch.Tensor] = []
    for layer in layers:
        key = lens.context_key(layer)
        if key not in keys:
            keys[key] = len(contexts)
            if prompt is not None:
                contexts.append(torch.tensor(prompt_token_ids(lens.model, prompt)))
            elif isinstance(lens, FutureLens):
                contexts.append(lens.prompts.for_layer(layer).detach().float().cpu())
            else:
                raise TypeError(f"no session contexts for {type(lens).__name__}")
    return contexts, [keys[lens.context_key(layer)] for layer in layers]


def patch_batches(
    layers: list[int],
    layer_contexts: list[int],
    lengths: list[int],
    n_tokens: int,
    chunk_rows: int = SESSION_CHUNK_ROWS,
) -> list[PatchBatch]:
    """Split the cells (layer-major, `n_tokens` per layer) into batches of equal context length, at most
    `chunk_rows` rows each (whole grid rows); every batch lists the blocks it patches."""
    batches = []
    for length in dict.fromkeys(lengths[c] for c in layer_contexts):
        members = [i for i, c in enumerate(layer_contexts) if lengths[c] == length]
        per_batch = max(1, chunk_rows // n_tokens)
        for first in range(0, len(members), per_batch):
            group = members[first : first + per_batch]
            patches = [(layers[i], k * n_tokens, (k + 1) * n_tokens, i * n_tokens) for k, i in enumerate(group)]
            batches.append(PatchBatch(group, [layer_contexts[i] for i in group], patches))
    return batches


def cell_order(batches: list[PatchBatch], n_tokens: int) -> torch.Tensor:
    """For each cell of the grid (layer-major), its row in the batches' concatenated output."""
    rows = torch.tensor([row for batch in batches for row in batch.rows])
    decoded = (rows[:, None] * n_tokens + torch.arange(n_tokens)[None]).flatten()
    order = torch.empty_like(decoded)
    order[decoded] = torch.arange(len(decoded))
    return order


def compact(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` in float16 where that loses nothing (the shipped maps are stored so), else float32: half the bytes
    sent, the same values applied (the server computes in float32)."""
    tensor = tensor.detach().float().cpu()
    half = tensor.half()
    return half if torch.equal(half.float(), tensor) else tensor


def session_plan(
    lens: Lens, token_ids: list[int], layers: list[int], n_future: int, top_k: int, chunk_rows: int
) -> SessionPlan:
    """The session's inputs for `lens` on a tokenized text: ids, contexts and patch batches or linear maps."""
    model = lens.model
    prefix = list(model.context_prefix)
    ids = torch.tensor([prefix + list(token_ids)])
    plan = SessionPlan(ids, len(prefix), layers, n_future, top_k, [], [])
    if isinstance(lens, PatchedContextLens):
        plan.contexts, layer_contexts = lens_contexts(lens, layers)
        lengths = [len(context) for context in plan.contexts]
        plan.batches = patch_batches(layers, layer_contexts, lengths, len(token_ids), chunk_rows)
    elif isinstance(lens, LinearMapLens):
        maps = lens.maps
        plan.maps = (compact(maps.weight[layers]), compact(maps.bias[layers]), maps.residual)
        plan.compare = False
    elif isinstance(lens, LogitLens):
        plan.compare = False
    else:
        raise TypeError(f"the {lens.method!r} lens has no session form")
    return plan


# --- run on the server: torch and the model's modules only ----------------------------------------------------------


def greedy_from_logits(step_logits: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedy ids and probabilities [R, N] from each step's logits [R, V], and the first step's log-probs."""
    probs = torch.stack([torch.softmax(logits.float(), dim=-1) for logits in step_logits], dim=1)
    best_probs, best_ids = probs.max(dim=-1)  # ties: the lowest id, as the engine
    return best_ids, best_probs, torch.log_softmax(step_logits[0].float(), dim=-1)


def cell_stats(
    log_probs: torch.Tensor, model_log_probs: torch.Tensor, next_ids: torch.Tensor, compare: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank of the model's next token, entropy and KL(model ‖ lens) of each cell's first-token distribution, as
    `engine.first_token_stats` computes them (which the server cannot import)."""
    rank = (log_probs > log_probs.gather(1, next_ids[:, None])).sum(dim=1) + 1
    entropy = -(log_probs.exp() * log_probs).nan_to_num().sum(dim=1)
    if not compare:
        return rank, entropy, torch.full_like(entropy, float("nan"))
    kl = (model_log_probs.exp() * (model_log_probs - log_probs)).nan_to_num().sum(dim=1)
    return rank, entropy, kl


def continuation_ids(
    text: torch.Tensor, start: int, chosen: list[torch.Tensor], pad: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [T, S + k] for the continuation's next step (row t: the text up to `start + t`, then its k chosen
    tokens, then anything) and the position each row is read at."""
    n_tokens, steps = chosen[0].shape[0], len(chosen)
    rows = torch.full((n_tokens, text.shape[0] + steps), pad, dtype=text.dtype, device=text.device)
    rows[:, : text.shape[0]] = text
    ends = start + torch.arange(n_tokens, device=text.device)
    offsets = ends[:, None] + 1 + torch.arange(steps, device=text.device)[None]
    rows.scatter_(1, offsets, torch.stack(chosen, dim=1).to(text.dtype))
    return rows, ends + steps


def apply_maps(states: torch.Tensor, maps: tuple[torch.Tensor, torch.Tensor, bool], n_tokens: int) -> torch.Tensor:
    """Layer-major states [L'*T, d] through their layers' affine maps, in float32 (as `LinearMaps.apply`)."""
    weight, bias, residual = maps
    states = states.float().reshape(weight.shape[0], n_tokens, -1)
    weight, bias = weight.to(states.device, torch.float32), bias.to(states.device, torch.float32)
    mapped = states @ weight.transpose(1, 2) + bias[:, None]
    return (states + mapped if residual else mapped).reshape(-1, states.shape[-1])


def readout_logits(final_norm, unembed, hidden: torch.Tensor, dtype: torch.dtype, softcap: float | None):
    """Float32 logits of final norm + unembedding (+ soft-cap), as `ModelAdapter.logits_from_hidden`."""
    logits = unembed(final_norm(hidden.to(dtype)))
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits.float()


def patch_rows(blocks, patches: list[tuple[int, int, int, int]], states: torch.Tensor, position: int) -> None:
    """Inside a trace: rows `row_start..row_stop` of block `layer`'s output at `position` become the states from
    `state_start` (blocks in execution order)."""
    for layer, row_start, row_stop, state_start in sorted(patches):
        hidden = block_output_tensor(blocks[layer].output)
        rows = row_stop - row_start
        hidden[row_start:row_stop, position] = states[state_start : state_start + rows].to(hidden.dtype)


# --- the session -----------------------------------------------------------------------------------------------------


def greedy_settings(n_future: int, pad: int) -> dict[str, object]:
    """`generate`'s arguments for N greedy tokens that never stop early (no EOS), with every step's raw logits."""
    return {
        "max_new_tokens": n_future,
        "do_sample": False,
        "eos_token_id": None,
        "pad_token_id": pad,
        "output_logits": True,
        "return_dict_in_generate": True,
    }


def _module(envoy, dotted: str):
    for part in dotted.split("."):
        envoy = getattr(envoy, part)
    return envoy


def run_session(model: LoadedModel, plan: SessionPlan, remote: bool | str = False, backend=None) -> dict:
    """Run the plan as one nnsight session; the saved (small) results by name. Keep the inner `with` headers on one
    line: under nnsight's local simulation a multi-line `generate(...)` header ran its body outside the trace."""
    envoy = model.nnsight
    spec = model.adapter.spec
    blocks, embed = model.adapter.locate_blocks(envoy), _module(envoy, spec.embed)
    final_norm, unembed = _module(envoy, spec.final_norm), _module(envoy, spec.unembed)
    dtype, softcap, pad = model.dtype, model.adapter.logit_softcap, int(plan.ids[0, 0])
    # Plain values only in the body: the server has none of our classes.
    ids, start, layers, n_future, top_k = plan.ids, plan.start, plan.layers, plan.n_future, plan.top_k
    n_tokens, contexts, maps, compare = plan.n_tokens, plan.contexts, plan.maps, plan.compare
    batches = [(b.contexts, b.patches) for b in plan.batches]
    order = cell_order(plan.batches, n_tokens) if plan.batches else None
    greedy = greedy_settings(n_future, pad)
    with shipped_by_value(), torch.inference_mode(), envoy.session(backend=backend, remote=remote):
        with envoy.trace(ids):
            hidden = [block_output_tensor(blocks[layer].output)[0, start:] for layer in layers]
            logits = envoy.output.logits[0, start:]
        states = torch.cat(hidden)
        model_log_probs = torch.log_softmax(logits.float(), dim=-1)
        next_probs, next_ids = model_log_probs.exp().max(dim=-1)
        chosen, chosen_probs = [next_ids], [next_probs]
        for _step in range(1, n_future):
            rows, read_at = continuation_ids(ids[0], start, chosen, pad)
            with envoy.trace(rows):
                step_logits = envoy.output.logits[torch.arange(n_tokens), read_at]
            step_probs, step_ids = torch.softmax(step_logits.float(), dim=-1).max(dim=-1)
            chosen.append(step_ids)
            chosen_probs.append(step_probs)
        reference = torch.arange(n_tokens).repeat(len(layers))
        if batches:
            targets = [embed(c.to(states.device)) if c.ndim == 1 else c.to(states.device, dtype) for c in contexts]
            parts, agree = [], []
            for batch_contexts, patches in batches:
                embeds = torch.cat([targets[c][None].expand(n_tokens, -1, -1) for c in batch_contexts])
                mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
                with envoy.generate(inputs_embeds=embeds, attention_mask=mask, **greedy) as generator:
                    patch_rows(blocks, patches, states, embeds.shape[1] - 1)
                    result = generator.result
                cell_ids, cell_probs, first = greedy_from_logits(result.logits)
                agree.append(bool(torch.equal(result.sequences[:, -n_future:], cell_ids)))
                parts.append((cell_ids, cell_probs, first))
            cell_ids, cell_probs, first = (torch.cat([p[i] for p in parts])[order] for i in range(3))
        else:
            readout = apply_maps(states, maps, n_tokens) if maps is not None else states
            first = torch.log_softmax(readout_logits(final_norm, unembed, readout, dtype, softcap), dim=-1)
            agree = [True]
        topk_log_probs, topk_ids = first.topk(min(top_k, first.shape[-1]), dim=-1)
        if not batches:
            cell_ids, cell_probs = topk_ids[:, :1], topk_log_probs[:, :1].exp()
        stats = cell_stats(first, model_log_probs[reference], next_ids[reference], compare)
        results = save(
            {
                "next_ids": next_ids.cpu(),
                "next_probs": next_probs.cpu(),
                "continuation_ids": torch.stack(chosen, dim=1).cpu(),
                "continuation_probs": torch.stack(chosen_probs, dim=1).cpu(),
                "cell_ids": cell_ids.cpu(),
                "cell_probs": cell_probs.cpu(),
                "topk_ids": topk_ids.cpu(),
                "topk_probs": topk_log_probs.exp().cpu(),
                "stats": tuple(s.cpu() for s in stats),
                "agree": all(agree),
            }
        )
    return results


# --- back here: the grid -------------------------------------------------------------------------------------------


class _SessionTextGrid(_TextGrid):
    """A text's grid whose source pass and continuation ran in a session: the states stayed on the server."""

    def __init__(self, lens: Lens, plan: SessionPlan, results: dict, token_ids: list[int], elapsed_ms: float):
        self.lens, self.layers, self.n_future, self.top_k = lens, plan.layers, plan.n_future, plan.top_k
        self.texts = _TokenTexts(lens.model)
        prefix = plan.ids[0, : plan.start].tolist()
        empty = torch.empty(0)
        self.source = SourcePass(token_ids, prefix, empty, results["next_ids"], results["next_probs"], empty)
        self.timings = {"session": elapsed_ms}
        self.continuation = results["continuation_ids"], results["continuation_probs"]


def session_predictions(results: dict) -> CellPredictions:
    """The session's cells as the engine's `CellPredictions` (layer-major)."""
    stats = CellStats(*results["stats"])
    return CellPredictions(
        results["cell_ids"], results["cell_probs"], results["topk_ids"], results["topk_probs"], stats
    )


def session_grid(
    lens: Lens,
    text: str,
    *,
    layers: str | Sequence[int] | None = None,
    n_future: int = defaults.N_FUTURE,
    top_k: int = defaults.TOP_K,
    remote: bool | str = False,
    meter: RequestMeter | None = None,
    chunk_rows: int = SESSION_CHUNK_ROWS,
) -> SessionGrid:
    """The grid `lens.grid(text, ...)` computes, as one nnsight session (`remote` as nnsight's; a `meter` measures
    the request and runs it through nnsight's local simulation of the server)."""
    model = lens.model
    chosen = parse_layers(layers, model.adapter.n_layers)
    token_ids = tokenize(model, text)
    plan = session_plan(lens, token_ids, chosen, lens.effective_future(n_future), top_k, chunk_rows)
    sent_before = len(meter.sizes) if meter is not None else 0
    started = time.perf_counter()
    results = run_session(model, plan, remote=remote, backend=meter)
    elapsed_ms = (time.perf_counter() - started) * 1000
    if not results["agree"]:
        raise SessionDecodeError(f"generate did not decode greedily for {model.id!r}: check its generation config")
    text_grid = _SessionTextGrid(lens, plan, results, token_ids, elapsed_ms)
    grid = text_grid.grid(text_grid.cells(session_predictions(results)), {**text_grid.timings, "total": elapsed_ms})
    sizes = meter.sizes[sent_before:] if meter is not None else []
    return SessionGrid(grid, sessions=max(1, len(sizes)), traces=plan.traces, request_bytes=sizes)


__all__ = [
    "RequestMeter",
    "SessionDecodeError",
    "SessionGrid",
    "SessionPlan",
    "session_grid",
    "session_plan",
]
