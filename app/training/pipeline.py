"""What `future-lens train` / `future-lens eval` do: resolve options, load model and data, run, write outputs."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import torch

from app.lens.layers import LayerSpecError, parse_layers
from app.lens.models import LoadedModel, ModelNotAvailableError, load_model
from app.lens.prompts import PromptArtifactError, default_prompt_dir, load_soft_prompts
from app.training.data import DEFAULT_CORPUS, DataConfig, Dataset, data_cache_root, prepare_dataset
from app.training.evaluate import (
    METHODS,
    evaluate,
    headline_markdown,
    merge_reports,
    per_layer_markdown,
    update_manifest_metrics,
    write_report,
)
from app.training.plot import (
    figure_data,
    learning_curve_data,
    load_paper_reference,
    render_figure,
    render_learning_curve,
)
from app.training.train import TrainConfig, resume_key, train_prompts

REPORTS = Path(__file__).resolve().parents[2] / "reports"


class PipelineError(ValueError):
    """Bad input to train/eval (named option), or a missing model/corpus/prompts."""


def data_config(corpus: Path | None, seed: int, limit: int | None) -> DataConfig:
    """The dataset recipe; `limit` caps both splits (and so gets its own cache entry)."""
    path = corpus or DEFAULT_CORPUS
    if not path.exists():
        raise PipelineError(f"--corpus: {path} does not exist (give a JSONL/.txt corpus)")
    if limit is not None and limit < 1:
        raise PipelineError("--limit must be at least 1")
    config = DataConfig(corpus=str(path.resolve()), seed=seed)
    if limit is not None:
        config = DataConfig(**{**asdict(config), "max_train": limit, "max_dev": limit})
    return config


def parse_targets(text: str) -> tuple[int, ...]:
    try:
        targets = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise PipelineError(f"--targets: expected offsets like 1 or 0,1,2,3, got {text!r}") from None
    if not targets or min(targets) < 0 or max(targets) > 3:
        raise PipelineError(f"--targets: offsets must be within 0..3, got {text!r}")
    return targets


def parse_methods(text: str | None) -> list[str]:
    """`--methods` (comma list, default all) checked against the known method names."""
    if text is None:
        return list(METHODS)
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [m for m in chosen if m not in METHODS]
    if unknown or not chosen:
        raise PipelineError(f"--methods: unknown {unknown or text!r}; choose from {', '.join(METHODS)}")
    return chosen


def load(model_name: str, device: str, dtype: str) -> LoadedModel:
    try:
        return load_model(model_name, device=device, dtype=dtype)
    except ModelNotAvailableError as error:
        raise PipelineError(str(error)) from None


def resolve_layers(spec: str, model: LoadedModel) -> list[int]:
    try:
        return parse_layers(spec, model.adapter.n_layers)
    except (LayerSpecError, ValueError) as error:
        raise PipelineError(f"--layers: {error}") from None


def load_data(model: LoadedModel, config: DataConfig) -> Dataset:
    dataset, _ = prepare_dataset(model, config)
    if len(dataset.train) == 0 or len(dataset.dev) == 0:
        raise PipelineError("--corpus: too little text to cut train and dev examples from")
    return dataset


def run_directory(model: LoadedModel, data: DataConfig, config: TrainConfig) -> Path:
    """Checkpoint folder for this exact (model, data, hyper-parameters) run, so a rerun resumes it."""
    raw = json.dumps({"data": data.key(model), "train": resume_key(asdict(config))}, sort_keys=True)
    return data_cache_root() / "runs" / f"{model.id}-{hashlib.sha256(raw.encode()).hexdigest()[:12]}"


def run_train(
    model_name: str,
    layers: str,
    examples: int,
    batch: int,
    lr: float,
    targets: str,
    init: str,
    seed: int,
    corpus: Path | None,
    limit: int | None,
    prompt_dir: Path | None,
    report_dir: Path | None,
    device: str,
    dtype: str,
) -> Path:
    """Train prompts for the chosen layers; returns the prompt folder."""
    if examples < 1 or batch < 1 or lr <= 0:
        raise PipelineError("--examples, --batch and --lr must be positive")
    if init not in ("fixed", "normal"):
        raise PipelineError(f"--init: expected fixed or normal, got {init!r}")
    offsets = parse_targets(targets)
    torch.manual_seed(seed)
    model = load(model_name, device, dtype)
    chosen = resolve_layers(layers, model)
    data = data_config(corpus, seed, limit)
    dataset = load_data(model, data)
    if limit is not None:
        examples = min(examples, limit)
    config = TrainConfig(layers=chosen, examples=examples, batch=batch, lr=lr, targets=offsets, init=init, seed=seed)
    config.curve_dev = min(config.curve_dev, len(dataset.dev))
    out = prompt_dir or default_prompt_dir(model.id)
    state = train_prompts(model, dataset, config, run_directory(model, data, config), out)
    reports = report_dir or REPORTS / model.id
    reports.mkdir(parents=True, exist_ok=True)
    curve = {"config": asdict(config), "seconds": round(state.seconds, 1), "points": state.curve}
    (reports / "learning_curve.json").write_text(json.dumps(curve, indent=1) + "\n")
    render_learning_curve(learning_curve_data(state.curve), reports / "learning_curve")
    return out


def run_eval(
    model_name: str,
    layers: str,
    seed: int,
    corpus: Path | None,
    limit: int | None,
    prompt_dir: Path | None,
    report_dir: Path | None,
    probe_epochs: int,
    device: str,
    dtype: str,
    dev_examples: int | None = None,
    methods: str | None = None,
) -> Path:
    """Evaluate every method; write eval.json, eval.png/.svg and the learned prompts' dev metrics."""
    model = load(model_name, device, dtype)
    chosen = resolve_layers(layers, model)
    dataset = load_data(model, data_config(corpus, seed, limit))
    only = parse_methods(methods)
    directory = prompt_dir or default_prompt_dir(model.id)
    prompts = None
    if "learned_prompt" in only:
        try:
            prompts = load_soft_prompts(directory, model)
        except PromptArtifactError as error:
            raise PipelineError(f"--prompt-dir: {error}") from None
    if dev_examples is not None and dev_examples < 1:
        raise PipelineError("--dev-examples must be at least 1")
    report = evaluate(model, dataset, prompts, chosen, probe_epochs, dev_examples=dev_examples, only=only)
    reports = report_dir or REPORTS / model.id
    if (reports / "eval.json").is_file():
        report = merge_reports(json.loads((reports / "eval.json").read_text()), report)
    curve_path = reports / "learning_curve.json"
    if curve_path.is_file():
        report["learning_curve"] = json.loads(curve_path.read_text())
    path = write_report(report, reports)
    paper = load_paper_reference()
    render_figure(figure_data(report, paper), reports / "eval")
    table = per_layer_markdown(report)
    (reports / "eval.md").write_text(
        headline_markdown(report, paper) + "\nPrecision@1 per layer (N=0/1/2/3):\n\n" + table
    )
    if prompts is not None:
        update_manifest_metrics(model, prompts, report)
    return path
