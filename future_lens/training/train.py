"""Train one soft prompt per layer (model frozen) with KL(p_original ‖ p_patched) at the target future offsets.

All selected layers train in the same steps: every step takes `batch` examples and runs them once per layer (rows of
different layers in one forward, each patched at its own block), so one source pass serves every layer. Layers are
independent (AdamW is elementwise; the loss is a sum of per-layer means), so this equals training them one by one.
Resumable: the prompts, AdamW moments and progress are checkpointed to a run folder every few steps.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from future_lens.atomic import atomic_path, atomic_write_json
from future_lens.lens.lenses import PAPER_FIXED_PROMPT, prompt_token_ids
from future_lens.lens.models import LoadedModel
from future_lens.lens.prompts import save_soft_prompt
from future_lens.training.data import Dataset, Examples
from future_lens.training.metrics import original_log_probs_table, patched_topk, score
from future_lens.training.objective import kl_divergence, original_log_probs, patched_logits, target_window


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (paper defaults: N=1 target, AdamW 5e-4, batch 8, P=10)."""

    layers: list[int]
    examples: int = 10_000
    batch: int = 8
    lr: float = 5e-4
    weight_decay: float = 0.01
    targets: tuple[int, ...] = (1,)
    prompt_len: int = 10
    #: constant, or linear: the learning rate decays linearly from `lr` to 0 over the run's steps (tuned-lens style)
    lr_schedule: str = "constant"
    #: which dev examples the learning curve is measured on: the selection part (none of the report part's)
    curve_part: str = "selection"
    init: str = "fixed"  # "fixed": the paper's fixed prompt's embeddings; "normal": N(0, 0.02)
    seed: int = 0
    layers_per_group: int = 30
    checkpoint_every: int = 20
    curve_points: list[int] = field(default_factory=lambda: [0, 200, 800, 3200, 10_000])  # + the final count
    curve_dev: int = 64

    def steps(self) -> int:
        return max(1, self.examples // self.batch)

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step `step` (0-based) under `lr_schedule`."""
        if self.lr_schedule == "constant":
            return self.lr
        if self.lr_schedule == "linear":
            return self.lr * max(0.0, 1.0 - step / self.steps())
        raise ValueError(f"lr_schedule must be 'constant' or 'linear', got {self.lr_schedule!r}")


LR_SCHEDULES = ("constant", "linear")


def example_order(available: int, count: int, seed: int) -> torch.Tensor:
    """The first `count` training indices: successive shuffles of the pool (epochs) from one seeded generator, so a
    budget larger than the pool repeats it and a run extended past one epoch keeps the order it already used."""
    generator = torch.Generator().manual_seed(seed)
    epochs = max(1, -(-count // available))
    return torch.cat([torch.randperm(available, generator=generator) for _ in range(epochs)])[:count]


def init_prompts(model: LoadedModel, n: int, prompt_len: int, init: str, seed: int) -> torch.Tensor:
    """[n, P, d] initial prompts: the fixed prompt's token embeddings (prefix kept first), or N(0, 0.02)."""
    d = model.adapter.d_model
    if init == "normal":
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(n, prompt_len, d, generator=generator) * 0.02
    if init != "fixed":
        raise ValueError(f"init must be 'fixed' or 'normal', got {init!r}")
    ids = prompt_token_ids(model, PAPER_FIXED_PROMPT)
    ids = ids[:1] + ids[1:][-(prompt_len - 1) :] if len(ids) > prompt_len else ids
    ids = [ids[0]] * (prompt_len - len(ids)) + ids
    with torch.no_grad():
        embeds = model.adapter.embed_tokens(torch.tensor(ids, device=model.device)).float().cpu()
    return embeds[None].repeat(n, 1, 1)


def layer_rows(layers: torch.Tensor, batch: Examples, window: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Rows (layer-major) for the given layers × batch examples: which context, block, state and teacher tokens."""
    b, g = len(batch), len(layers)
    fed, _ = window
    return {
        "context_index": torch.arange(g).repeat_interleave(b),
        "layers": layers.repeat_interleave(b),
        "states": batch.states[:, layers].transpose(0, 1).reshape(g * b, -1),
        "teacher": batch.teacher[:, :fed].repeat(g, 1),
    }


def group_loss(
    model: LoadedModel, prompts: torch.Tensor, layers: torch.Tensor, batch: Examples, targets: tuple[int, ...]
) -> torch.Tensor:
    """Per-layer mean KL [G] at the target offsets for `prompts` [G, P, d] trained for `layers` [G]."""
    window = target_window(targets)
    rows = {k: v.to(model.device) for k, v in layer_rows(layers, batch, window).items()}
    logits = patched_logits(
        model, prompts, rows["context_index"], rows["layers"], rows["states"], rows["teacher"], window[1]
    )
    first = min(targets)
    picks = [n - first for n in targets]
    log_q = torch.log_softmax(logits[:, picks].float(), dim=-1)
    log_p = original_log_probs(model, batch.future_final[:, list(targets)].to(model.device)).repeat(len(layers), 1, 1)
    kl = kl_divergence(log_p, log_q).mean(-1)  # [R]
    return kl.view(len(layers), len(batch)).mean(-1)


@dataclass
class RunState:
    """What is checkpointed: prompts, AdamW state, steps done, per-layer loss history, learning curve."""

    prompts: torch.Tensor
    optimizer: dict
    step: int = 0
    losses: list[list[float]] = field(default_factory=list)
    curve: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def save_run(run_dir: Path, state: RunState, config: TrainConfig) -> None:
    """Atomically checkpoint the run (safetensors for tensors, JSON for the rest)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tensors = {"prompts": state.prompts.detach().cpu().contiguous()}
    moments = state.optimizer["state"].get(0)
    if moments:
        tensors |= {k: torch.as_tensor(moments[k]).cpu().contiguous() for k in ("exp_avg", "exp_avg_sq", "step")}
    with atomic_path(run_dir / "state.safetensors") as staging:
        save_file(tensors, str(staging))
    progress = {"config": asdict(config), "step": state.step, "losses": state.losses, "curve": state.curve}
    progress["seconds"] = state.seconds
    atomic_write_json(run_dir / "progress.json", progress)


def resume_key(config: dict) -> dict:
    """The config fields a checkpoint must match to be resumed: all but the example budget (so a run can be
    extended, or cut short and finalised, by rerunning with another --examples)."""
    return {k: v for k, v in config.items() if k != "examples"}


def load_run(run_dir: Path, config: TrainConfig) -> RunState | None:
    """The checkpoint in `run_dir` if it exists and was made with the same config."""
    if not (run_dir / "progress.json").is_file():
        return None
    progress = json.loads((run_dir / "progress.json").read_text())
    if resume_key(progress["config"]) != resume_key(json.loads(json.dumps(asdict(config)))):
        return None
    tensors = load_file(str(run_dir / "state.safetensors"))
    optimizer = {"state": {}}
    if "exp_avg" in tensors:
        optimizer["state"][0] = {k: tensors[k] for k in ("exp_avg", "exp_avg_sq", "step")}
    return RunState(
        tensors["prompts"], optimizer, progress["step"], progress["losses"], progress["curve"], progress["seconds"]
    )


def curve_point(model: LoadedModel, prompts: torch.Tensor, layers: list[int], dev: Examples, logp, seen: int) -> dict:
    """Dev precision@1 per layer and N for the current prompts (one learning-curve point)."""
    contexts = {layer: prompts[i].detach() for i, layer in enumerate(layers)}
    topk = patched_topk(model, contexts, dev)
    per_layer = {str(layer): score(topk[layer], dev.teacher, logp, [0, 1, 2, 3]) for layer in layers}
    return {"examples": seen, "layers": per_layer}


def make_optimizer(prompts: torch.Tensor, config: TrainConfig, saved: dict | None) -> torch.optim.AdamW:
    optimizer = torch.optim.AdamW([prompts], lr=config.lr, weight_decay=config.weight_decay)
    if saved and saved["state"]:
        optimizer.load_state_dict({"state": saved["state"], "param_groups": optimizer.state_dict()["param_groups"]})
    return optimizer


def train_prompts(
    model: LoadedModel,
    dataset: Dataset,
    config: TrainConfig,
    run_dir: Path,
    out_dir: Path | None,
    progress: bool = True,
    curve_examples: torch.Tensor | None = None,
) -> RunState:
    """Train (or resume) prompts for `config.layers`; write artifacts to `out_dir` when given. Returns the state.
    The learning curve is measured on the first `config.curve_dev` of `curve_examples` (dev indices: the selection
    part's), or of the whole dev split when None."""
    pool = torch.arange(len(dataset.dev)) if curve_examples is None else curve_examples
    train, dev = dataset.train, dataset.dev.subset(pool[: config.curve_dev])
    layers = torch.tensor(config.layers, dtype=torch.long)
    steps = config.steps()
    order = example_order(len(train), steps * config.batch, config.seed)
    state = load_run(run_dir, config)
    if state is None:
        initial = init_prompts(model, len(layers), config.prompt_len, config.init, config.seed)
        state = RunState(initial, {"state": {}}, losses=[[] for _ in config.layers])
    # The trainable prompts stay float32 whatever the model's dtype: AdamW's small steps would round away in bf16.
    prompts = torch.nn.Parameter(state.prompts.to(model.device, torch.float32))
    optimizer = make_optimizer(prompts, config, state.optimizer)
    logp = original_log_probs_table(model, dev)
    groups = layers.split(config.layers_per_group)
    started = time.monotonic() - state.seconds
    bar = tqdm(total=steps, initial=state.step, desc="train", unit="step", disable=not progress)
    while True:
        seen = state.step * config.batch
        if seen in config.curve_points and not any(p["examples"] == seen for p in state.curve):
            state.curve.append(curve_point(model, prompts, config.layers, dev, logp, seen))
        if state.step >= steps:
            break
        batch = train.subset(order[state.step * config.batch : (state.step + 1) * config.batch])
        optimizer.zero_grad(set_to_none=True)
        for group in optimizer.param_groups:
            group["lr"] = config.lr_at(state.step)
        offset = 0
        for group in groups:
            chunk = prompts[offset : offset + len(group)].to(model.dtype)  # a differentiable cast for the forward
            per_layer = group_loss(model, chunk, group, batch, config.targets)
            per_layer.sum().backward()
            for i, value in enumerate(per_layer.tolist()):
                state.losses[offset + i].append(round(value, 5))
            offset += len(group)
        optimizer.step()
        state.step += 1
        state.seconds = time.monotonic() - started
        bar.update(1)
        bar.set_postfix(kl=f"{sum(h[-1] for h in state.losses) / len(state.losses):.3f}")
        if state.step % config.checkpoint_every == 0 or state.step == steps:
            state.prompts, state.optimizer = prompts.detach(), optimizer.state_dict()
            save_run(run_dir, state, config)
    bar.close()
    final_seen = state.step * config.batch
    if not any(p["examples"] == final_seen for p in state.curve):
        state.curve.append(curve_point(model, prompts, config.layers, dev, logp, final_seen))
    state.prompts, state.optimizer = prompts.detach(), optimizer.state_dict()
    save_run(run_dir, state, config)
    if out_dir is not None:
        write_artifacts(model, state, config, out_dir)
    return state


def final_loss(history: list[float], window: int = 25) -> float:
    """Mean of the last `window` per-step losses (nan if none)."""
    tail = history[-window:]
    return sum(tail) / len(tail) if tail else math.nan


def write_artifacts(model: LoadedModel, state: RunState, config: TrainConfig, out_dir: Path) -> None:
    """One contract artifact per layer; metrics are the last learning-curve point on the dev subset."""
    last = state.curve[-1]
    for i, layer in enumerate(config.layers):
        metadata = {
            "trained_on_n": ",".join(str(n) for n in config.targets),
            "objective": "kl(p_original||p_patched), teacher-forced",
            "examples": state.step * config.batch,
            "steps": state.step,
            "batch": config.batch,
            "lr": config.lr,
            "lr_schedule": config.lr_schedule,
            "init": config.init,
            "seed": config.seed,
            "final_loss": f"{final_loss(state.losses[i]):.5f}",
        }
        dev = last["layers"][str(layer)]
        metrics = {f"{n}_{k}": v for n, values in dev.items() for k, v in values.items()}
        metrics["dev_examples"] = config.curve_dev
        save_soft_prompt(out_dir, model, layer, state.prompts[i], metadata, metrics)
