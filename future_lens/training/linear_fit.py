"""Fit the linear lenses (`future_lens.lens.linear`): the tuned lens by KL training, the Jacobian lens by autograd.

Tuned lens, as the `tuned-lens` package (Belrose et al. 2023) fits it: per layer a translator `h + Δ_l h + b_l`
initialised to the identity (Δ = 0, b = 0), none for the final layer (the model's own readout); the loss is
KL(p_model ‖ p_lens) over the whole vocabulary at every position of every training window; SGD with Nesterov
momentum 0.9, learning rate `lr_scale · (1 − momentum)`, weight decay 1e-3, linear decay to zero. The one change
is the budget (`TunedLensRecipe.tokens_per_step`): the package's 2^18 tokens per step do not fit two CPU cores.

Jacobian lens: `J_l = E[∂h_final[t] / ∂h_l[s]]` over prompts and pairs of text positions s <= t (the source position
and the current-and-future target positions). One backward pass of `Σ_t h_final[t, i]` gives, for every layer at
once, row i of `Σ_{s <= t} ∂h_final[t] / ∂h_l[s]` (summed over s); d such passes (batched as copies of the prompt,
each seeded with a different coordinate i) give the whole matrix.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from future_lens.atomic import atomic_path
from future_lens.lens.interventions import on_block_outputs
from future_lens.lens.linear import LinearMaps
from future_lens.lens.models import LoadedModel
from future_lens.training.objective import kl_divergence


def final_log_probs(model: LoadedModel, hidden: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of the model's readout (final norm + unembedding) of block outputs `hidden` [..., d]."""
    return torch.log_softmax(model.adapter.logits_from_hidden(hidden.to(model.device, model.dtype)).float(), -1)


@dataclass(frozen=True)
class TunedLensRecipe:
    """The tuned-lens package's training defaults (`scripts/train_loop.py`), with a CPU-sized step."""

    steps: int = 250  # theirs: 250
    tokens_per_step: int = 1024  # theirs: 2**18 (a CPU budget: see the module docstring)
    window: int = 64  # tokens per training window (the grid's longest text; theirs: 2048)
    lr_scale: float = 1.0  # theirs: 1.0, so lr = 1.0 * (1 - 0.9)
    momentum: float = 0.9  # theirs: 0.9, Nesterov
    weight_decay: float = 1e-3  # theirs: 1e-3
    warmup_steps: int = 0  # theirs: 0 with SGD
    clip_grad_norm: float = 1.0  # theirs: 1.0
    eval_every: int = 25  # dev KL curve every this many steps
    seed: int = 0

    @property
    def lr(self) -> float:
        return self.lr_scale * (1 - self.momentum)

    @property
    def windows_per_step(self) -> int:
        return max(1, self.tokens_per_step // self.window)


def token_windows(token_lists: Sequence[Sequence[int]], window: int) -> list[list[int]]:
    """Consecutive non-overlapping `window`-token slices of every document (a document's tail too short is dropped)."""
    return [list(tokens[i : i + window]) for tokens in token_lists for i in range(0, len(tokens) - window + 1, window)]


class ChunkedKLReadout(torch.autograd.Function):
    """KL(p ‖ softmax(x Wᵀ)) per row of normed states x [P, d], with the unembedding W in bfloat16 (AMX makes it ~4x
    faster on CPU than float32) and the logits made `CHUNK` rows at a time, so they stay in cache and are never all
    held: the backward makes them again (gradient softmax − p) instead of saving them."""

    CHUNK = 128

    @staticmethod
    def forward(ctx, normed: torch.Tensor, p: torch.Tensor, p_log_p: torch.Tensor, weight: torch.Tensor):
        inputs = normed.to(torch.bfloat16)
        out = torch.empty(len(normed), device=normed.device)
        for i in range(0, len(inputs), ChunkedKLReadout.CHUNK):
            rows = slice(i, i + ChunkedKLReadout.CHUNK)
            logits = (inputs[rows] @ weight.T).float()
            out[rows] = torch.logsumexp(logits, -1) - (p[rows] * logits).sum(-1)
        ctx.save_for_backward(inputs, p, weight)
        return out + p_log_p

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        inputs, p, weight = ctx.saved_tensors
        grad_inputs = torch.empty(inputs.shape, device=inputs.device)
        for i in range(0, len(inputs), ChunkedKLReadout.CHUNK):
            rows = slice(i, i + ChunkedKLReadout.CHUNK)
            logits = (inputs[rows] @ weight.T).float()
            grad_logits = torch.softmax(logits, -1).sub_(p[rows]).mul_(grad[rows, None])
            grad_inputs[rows] = (grad_logits.to(torch.bfloat16) @ weight).float()
        return grad_inputs, None, None, None


class Readout:
    """The model's final norm + unembedding as a training loss: KL(p_model ‖ p_lens) per position."""

    def __init__(self, model: LoadedModel):
        if model.adapter.logit_softcap:
            raise ValueError("the tuned-lens fit does not support logit soft-capping yet")
        self.adapter = model.adapter
        self.weight = model.adapter.unembed.weight.detach().to(torch.bfloat16)

    def kl(self, hidden: torch.Tensor, p: torch.Tensor, p_log_p: torch.Tensor) -> torch.Tensor:
        """KL [P] for states [P, d] against the model's probabilities p [P, V] (Σ p log p given: [P])."""
        return ChunkedKLReadout.apply(self.adapter.final_norm(hidden), p, p_log_p, self.weight)


@torch.no_grad()
def window_states(model: LoadedModel, windows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every block's output at every text position [B, L, T, d] (float32) for equal-length `windows` behind the
    context prefix, and the model's own next-token log-probabilities there [B, T, V]."""
    prefix = len(model.context_prefix)
    ids = torch.tensor([[*model.context_prefix, *w] for w in windows], device=model.device)
    kept: dict[int, torch.Tensor] = {}
    layers = range(model.adapter.n_layers)
    with on_block_outputs(model.adapter, layers, lambda layer, hidden: kept.__setitem__(layer, hidden[:, prefix:])):
        model.hf(input_ids=ids, use_cache=False, logits_to_keep=1)
    states = torch.stack([kept[layer] for layer in layers], dim=1).float()
    return states, final_log_probs(model, states[:, -1])


def translate(states: torch.Tensor, delta: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """`h + Δ h + b` for states [..., d] of one layer."""
    return states + states @ delta.T + bias


@torch.no_grad()
def lens_readout_stats(
    model: LoadedModel, windows: Sequence[Sequence[int]], maps: LinearMaps | None, batch: int = 8
) -> dict[str, list[float]]:
    """Per layer, over every position of `windows` (read in the model's dtype; the logit lens when `maps` is None):
    `kl`, the mean KL(p_model ‖ p_lens) in nats, and `top1`, how often the lens's top-1 is the model's own."""
    n_layers = model.adapter.n_layers
    kl, top1 = torch.zeros(n_layers, dtype=torch.float64), torch.zeros(n_layers, dtype=torch.float64)
    count = 0
    for start in range(0, len(windows), batch):
        states, target = window_states(model, windows[start : start + batch])
        model_top1 = target.argmax(-1)
        for layer in range(n_layers):
            hidden = states[:, layer]
            if maps is not None:
                layer_index = torch.full(hidden.shape[:-1], layer, dtype=torch.long).flatten()
                hidden = maps.apply(hidden.reshape(-1, hidden.shape[-1]), layer_index).view_as(hidden)
            log_q = final_log_probs(model, hidden)
            kl[layer] += kl_divergence(target, log_q).sum().double()
            top1[layer] += (log_q.argmax(-1) == model_top1).sum().double()
        count += target.shape[0] * target.shape[1]
    return {
        "kl": [round(float(t / max(count, 1)), 5) for t in kl],
        "top1": [round(float(t / max(count, 1)), 5) for t in top1],
    }


def lens_kl_per_layer(
    model: LoadedModel, windows: Sequence[Sequence[int]], maps: LinearMaps | None, batch: int = 8
) -> list[float]:
    """Mean KL(p_model ‖ p_lens) in nats per layer over every position of `windows` (`lens_readout_stats`)."""
    return lens_readout_stats(model, windows, maps, batch)["kl"]


def linear_decay(step: int, recipe: TunedLensRecipe) -> float:
    """The learning-rate multiplier at `step`: linear warm-up, then linear decay to zero at the last step."""
    if step < recipe.warmup_steps:
        return (step + 1) / recipe.warmup_steps
    return max(0.0, (recipe.steps - step) / max(1, recipe.steps - recipe.warmup_steps))


def tuned_maps(delta: torch.Tensor, bias: torch.Tensor, metadata: dict) -> LinearMaps:
    """LinearMaps from translator residuals Δ [L, d, d] and biases [L, d] (the final layer's Δ and b stay zero)."""
    return LinearMaps("tuned", delta.detach().cpu().clone(), bias.detach().cpu().clone(), metadata, residual=True)


def fit_tuned_lens(
    model: LoadedModel,
    train_windows: Sequence[Sequence[int]],
    dev_windows: Sequence[Sequence[int]],
    recipe: TunedLensRecipe = TunedLensRecipe(),
    checkpoint_dir: Path | None = None,
    progress: bool = True,
    on_eval: Callable[[int, list[float]], None] | None = None,
) -> tuple[LinearMaps, list[dict]]:
    """Tuned-lens maps for every layer but the last, and the dev KL curve ({step, kl per layer}). With
    `checkpoint_dir` the run saves its state every `eval_every` steps and resumes from it."""
    n_layers, d = model.adapter.n_layers, model.adapter.d_model
    trained = n_layers - 1  # no translator for the final layer: it is the model's own readout
    delta = torch.nn.Parameter(torch.zeros(trained, d, d))
    bias = torch.nn.Parameter(torch.zeros(trained, d))
    optimizer = torch.optim.SGD(
        [delta, bias], lr=recipe.lr, momentum=recipe.momentum, nesterov=True, weight_decay=recipe.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: linear_decay(step, recipe))
    curve: list[dict] = []
    step0, seconds = 0, 0.0
    state_path = checkpoint_dir / "tuned-lens-run.pt" if checkpoint_dir else None
    if state_path is not None and state_path.is_file():
        saved = torch.load(state_path, weights_only=True)
        if saved["recipe"] == json.dumps(asdict(recipe), sort_keys=True):
            with torch.no_grad():
                delta.copy_(saved["delta"])
                bias.copy_(saved["bias"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            step0, curve, seconds = int(saved["step"]), json.loads(saved["curve"]), float(saved["seconds"])
    readout = Readout(model)
    order = list(range(len(train_windows)))
    random.Random(recipe.seed).shuffle(order)
    per_step = recipe.windows_per_step

    def current_maps() -> LinearMaps:
        zeros = (torch.zeros(1, d, d), torch.zeros(1, d))
        return tuned_maps(torch.cat([delta.detach(), zeros[0]]), torch.cat([bias.detach(), zeros[1]]), {})

    def evaluate_dev(step: int) -> None:
        kl = lens_kl_per_layer(model, dev_windows, current_maps())
        curve.append({"step": step, "kl": kl})
        if on_eval:
            on_eval(step, kl)

    if step0 == 0 and not curve:
        evaluate_dev(0)
    started = time.monotonic() - seconds
    for step in tqdm(range(step0, recipe.steps), desc="tuned lens", unit="step", disable=not progress, initial=step0):
        picked = [order[(step * per_step + i) % len(order)] for i in range(per_step)]
        states, target = window_states(model, [train_windows[i] for i in picked])
        p = target.exp().flatten(0, 1)
        p_log_p = (p * target.flatten(0, 1)).sum(-1)
        optimizer.zero_grad(set_to_none=True)
        for layer in range(trained):  # the layers' losses are independent: one backward each keeps memory small
            hidden = translate(states[:, layer].flatten(0, 1), delta[layer], bias[layer])
            readout.kl(hidden, p, p_log_p).mean().backward()
        torch.nn.utils.clip_grad_norm_([delta, bias], recipe.clip_grad_norm)
        optimizer.step()
        scheduler.step()
        done = step + 1
        if done % recipe.eval_every == 0 or done == recipe.steps:
            evaluate_dev(done)
            if state_path is not None:
                save_run(state_path, recipe, delta, bias, optimizer, scheduler, done, curve, time.monotonic() - started)
    metadata = {
        "objective": "kl(p_model||p_lens) at every position of each window",
        "recipe": json.dumps({**asdict(recipe), "lr": recipe.lr, "optimizer": "sgd-nesterov"}),
        "examples": recipe.steps * per_step * recipe.window,
        "train_windows": len(train_windows),
        "dev_windows": len(dev_windows),
        "fitted": f"{time.monotonic() - started:.0f} s",
        "final_dev_kl": json.dumps(curve[-1]["kl"]) if curve else "",
    }
    maps = current_maps()
    maps.metadata.update({k: str(v) for k, v in metadata.items()})
    return maps, curve


def save_run(path: Path, recipe, delta, bias, optimizer, scheduler, step: int, curve: list, seconds: float) -> None:
    """The tuned-lens run's resumable state (tensors and plain values only: read back with weights_only=True)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "recipe": json.dumps(asdict(recipe), sort_keys=True),
        "delta": delta.detach(),
        "bias": bias.detach(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "curve": json.dumps(curve),
        "seconds": seconds,
    }
    with atomic_path(path) as staging:
        torch.save(state, staging)


@dataclass(frozen=True)
class JacobianLensRecipe:
    """The Jacobian lens as its authors fit it (Anthropic's `jlens` and TransformerLens' `jacobian_lens.py`):
    J_l = E_prompt[(1/|V|) Σ_{s∈V} Σ_{t∈V, t≥s} ∂h_final[t] / ∂h_l[s]], V = positions skip_first .. T-2, the target
    the last block's output before the final norm, no bias, the final layer the identity."""

    prompts: int = 100  # theirs: 1000 sequences in the paper, "~100 is usable"
    tokens: int = 128  # theirs: max_seq_len 128 (the context prefix counts as the BOS they force)
    skip_first: int = 16  # theirs: SKIP_FIRST_N_POSITIONS = 16 (attention sinks)
    dim_batch: int = 32  # theirs: 8 (only the batching of the backward passes; the result is the same)
    autocast: str = "bfloat16"  # the forward/backward's compute dtype on CPU (theirs: fit_dtype); sums in float32


def valid_positions(length: int, skip_first: int) -> torch.Tensor:
    """V: the source and target positions of a sequence of `length` (attention-sink positions and the last left out)."""
    return torch.arange(skip_first, max(skip_first, length - 1))


def jacobian_rows(model: LoadedModel, token_ids: Sequence[int], recipe: JacobianLensRecipe) -> torch.Tensor:
    """[L-1, d, d]: one prompt's (1/|V|) Σ_{s∈V} Σ_{t≥s} ∂h_final[t] / ∂h_l[s] for blocks l = 0 .. L-2, by VJPs:
    each backward plants a one-hot cotangent on coordinate i of the final output at every t ∈ V, so causality sums
    the targets t ≥ s for every source s at once."""
    adapter = model.adapter
    n_layers, d = adapter.n_layers, adapter.d_model
    ids = torch.tensor([*model.context_prefix, *token_ids], device=model.device)
    positions = valid_positions(len(ids), recipe.skip_first).to(model.device)
    rows = torch.zeros(n_layers - 1, d, d)
    copies = min(recipe.dim_batch, d)
    dtype = getattr(torch, recipe.autocast)
    embeds = adapter.embed_tokens(ids)[None].expand(copies, -1, -1).detach().requires_grad_(True)
    kept: dict[int, torch.Tensor] = {}

    def keep(layer: int, hidden: torch.Tensor) -> None:
        kept[layer] = hidden

    autocast = torch.autocast(model.device.type, dtype=dtype, enabled=dtype != model.dtype)
    with autocast, on_block_outputs(adapter, range(n_layers), keep):
        model.hf(inputs_embeds=embeds, use_cache=False, logits_to_keep=1)
    sources = [kept[layer] for layer in range(n_layers - 1)]
    target = kept[n_layers - 1]
    batch = torch.arange(copies, device=model.device)
    for first in range(0, d, copies):
        n = min(copies, d - first)
        cotangent = torch.zeros_like(target)
        cotangent[batch[:n, None], positions[None, :], first + batch[:n, None]] = 1.0
        grads = torch.autograd.grad(target, sources, cotangent, retain_graph=first + copies < d)
        for layer, grad in enumerate(grads):
            rows[layer, first : first + n] = grad[:n, positions].float().mean(1).cpu()
    return rows


def fit_jacobian_lens(
    model: LoadedModel,
    texts: Sequence[Sequence[int]],
    recipe: JacobianLensRecipe = JacobianLensRecipe(),
    checkpoint_dir: Path | None = None,
    progress: bool = True,
) -> LinearMaps:
    """Jacobian-lens maps: the mean over `texts` of `jacobian_rows`, the final layer the identity. With
    `checkpoint_dir` the running sum is saved after every text and a rerun resumes it."""
    n_layers, d = model.adapter.n_layers, model.adapter.d_model
    usable = [t for t in texts if len(valid_positions(len(model.context_prefix) + len(t), recipe.skip_first))]
    if not usable:
        raise ValueError(f"no text is longer than skip_first={recipe.skip_first} + 1 tokens")
    total, done, seconds = torch.zeros(n_layers - 1, d, d), 0, 0.0
    state_path = checkpoint_dir / "jacobian-lens-run.pt" if checkpoint_dir else None
    key = json.dumps({**asdict(recipe), "texts": hashlib_of(usable)}, sort_keys=True)
    if state_path is not None and state_path.is_file():
        saved = torch.load(state_path, weights_only=True)
        if saved["key"] == key:
            total, done, seconds = saved["jacobian_sum"], int(saved["n_done"]), float(saved["seconds"])
    started = time.monotonic() - seconds
    for index in tqdm(
        range(done, len(usable)), desc="jacobian lens", unit="prompt", disable=not progress, initial=done
    ):
        total += jacobian_rows(model, usable[index], recipe)
        done = index + 1
        if state_path is not None:
            state = {"key": key, "jacobian_sum": total, "n_done": done, "seconds": time.monotonic() - started}
            state_path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(state_path) as staging:
                torch.save(state, staging)
    weight = torch.cat([total / done, torch.eye(d)[None]])
    metadata = {
        "objective": "E_prompt[(1/|V|) sum_{s in V} sum_{t in V, t>=s} d h_final[t] / d h_l[s]]",
        "recipe": json.dumps(asdict(recipe)),
        "prompts": done,
        "tokens_per_prompt": max(len(t) for t in usable),
        "fitted": f"{time.monotonic() - started:.0f} s",
    }
    return LinearMaps("jacobian", weight, torch.zeros(n_layers, d), {k: str(v) for k, v in metadata.items()})


def hashlib_of(texts: Sequence[Sequence[int]]) -> str:
    """A short digest of token lists (a resumed fit must average the same texts)."""
    return hashlib.sha256(json.dumps([list(t) for t in texts]).encode()).hexdigest()[:16]
