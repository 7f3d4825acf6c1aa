"""What `future-lens train` / `future-lens eval` do: resolve options, load model and data, run, write outputs.

`TrainOptions` and `EvalOptions` are the commands' settings as typed objects: the CLI's defaults are read from
them, and code (tests, notebooks) builds them directly.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from future_lens import defaults
from future_lens.atomic import atomic_write_json, atomic_write_text
from future_lens.lens import (
    DEFAULT_MODEL,
    LayerSpecError,
    LoadedModel,
    ModelNotAvailableError,
    PromptArtifactError,
    load_model,
    load_soft_prompts,
    parse_layers,
)
from future_lens.lens.linear import (
    LINEAR_KINDS,
    LinearLensArtifactError,
    LinearMaps,
    load_linear_maps,
    save_linear_maps,
)
from future_lens.lens.prompts import default_prompt_dir, output_prompt_dir
from future_lens.paths import user_reports
from future_lens.training.data import (
    DataConfig,
    Dataset,
    data_cache_root,
    dev_example_parts,
    dev_parts,
    document_tokens,
    prepare_dataset,
    train_token_stream,
)
from future_lens.training.evaluate import (
    LINEAR_METHODS,
    METHODS,
    evaluate,
    merge_reports,
    report_markdown,
    report_tables,
    update_manifest_metrics,
    write_report,
)
from future_lens.training.linear_fit import (
    JacobianLensRecipe,
    TunedLensRecipe,
    fit_jacobian_lens,
    fit_tuned_lens,
    token_windows,
)
from future_lens.training.plot import (
    calibration_data,
    figure_data,
    kl_data,
    learning_curve_data,
    load_paper_reference,
    render_calibration,
    render_figure,
    render_kl,
    render_learning_curve,
)
from future_lens.training.regression import write_regression_slice
from future_lens.training.train import LR_SCHEDULES, TrainConfig, resume_key, train_prompts

#: Where this workspace keeps its corpus and the paper's reference values (relative to the working directory).
WORKSPACE_CORPUS = Path("../shared/data/pile-sample.jsonl")
WORKSPACE_PAPER_REFERENCE = Path("../shared/reference/paper-figure4.json")


class PipelineError(ValueError):
    """Bad input to train/eval (named option), or a missing model/corpus/prompts."""


@dataclass(frozen=True)
class RunOptions:
    """What train and eval share: which model and layers, the data, where outputs go, device and dtype."""

    model: str = DEFAULT_MODEL
    layers: str = defaults.LAYERS
    seed: int = 0
    corpus: Path = WORKSPACE_CORPUS
    train_pool: int = DataConfig.max_train
    dev_pool: int = DataConfig.max_dev
    limit: int | None = None
    prompt_dir: Path | None = None
    report_dir: Path | None = None
    device: str = "cpu"
    dtype: str = "float32"

    def reports(self, model: LoadedModel) -> Path:
        """Where reports are written: the named folder, else the user's reports folder (never the package)."""
        return self.report_dir or user_reports() / model.id

    def prompts(self, model: LoadedModel) -> Path:
        """Where prompts and lens maps are read: the named folder, else the model's default (`default_prompt_dir`)."""
        return self.prompt_dir or default_prompt_dir(model.id)

    def prompts_out(self, model: LoadedModel) -> Path:
        """Where training writes prompts and lens maps: the named folder, else the user's own (never the package)."""
        return self.prompt_dir or output_prompt_dir(model.id)


@dataclass(frozen=True)
class TrainOptions(RunOptions):
    """`future-lens train`: the soft-prompt budget and objective (paper: 10k examples, batch 8, lr 5e-4, N=1)."""

    examples: int = 10_000
    batch: int = 8
    lr: float = 5e-4
    targets: str = "1"
    init: str = "fixed"
    prompt_len: int = TrainConfig.prompt_len
    lr_schedule: str = TrainConfig.lr_schedule
    method: str = "prompt"
    steps: int = TunedLensRecipe.steps
    tokens_per_step: int = TunedLensRecipe.tokens_per_step
    texts: int = JacobianLensRecipe.prompts
    text_tokens: int = JacobianLensRecipe.tokens


@dataclass(frozen=True)
class EvalOptions(RunOptions):
    """`future-lens eval`: which methods, on how many dev examples, and the paper's curve for the plot."""

    probe_epochs: int = 2
    dev_examples: int | None = None
    dev_part: str = "report"
    methods: str | None = None
    paper_reference: Path | None = WORKSPACE_PAPER_REFERENCE


def data_config(options: RunOptions) -> DataConfig:
    """The dataset recipe: train/dev pools of examples, both capped by `limit` (each its own cache entry)."""
    path, seed, limit = Path(options.corpus), options.seed, options.limit
    if not path.exists():
        raise PipelineError(f"--corpus: {path} does not exist (give a JSONL/.txt corpus)")
    if limit is not None and limit < 1:
        raise PipelineError("--limit must be at least 1")
    if options.train_pool < 1 or options.dev_pool < 1:
        raise PipelineError("--train-pool and --dev-pool must be at least 1")
    config = DataConfig(corpus=str(path.resolve()), seed=seed, max_train=options.train_pool, max_dev=options.dev_pool)
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


TRAIN_METHODS = ("prompt", *LINEAR_KINDS)


def curve_selection(model: LoadedModel, dataset: Dataset) -> torch.Tensor:
    """The dev examples a learning curve may look at: the selection part's (so that stopping and schedule choices
    never see the report part), or every dev example when the split has no selection part (tiny --limit runs)."""
    selection = dev_example_parts(model, dataset)["selection"]
    return selection if len(selection) else torch.arange(len(dataset.dev))


def run_train(options: TrainOptions) -> Path:
    """Train prompts for the chosen layers, or fit a linear lens (`--method`); returns what was written."""
    if options.method not in TRAIN_METHODS:
        raise PipelineError(f"--method: expected one of {', '.join(TRAIN_METHODS)}, got {options.method!r}")
    if options.examples < 1 or options.batch < 1 or options.lr <= 0:
        raise PipelineError("--examples, --batch and --lr must be positive")
    if options.method != "prompt":
        return run_fit_linear(options)
    if options.init not in ("fixed", "normal"):
        raise PipelineError(f"--init: expected fixed or normal, got {options.init!r}")
    if options.lr_schedule not in LR_SCHEDULES:
        raise PipelineError(f"--lr-schedule: expected one of {', '.join(LR_SCHEDULES)}, got {options.lr_schedule!r}")
    if options.prompt_len < 1:
        raise PipelineError("--prompt-len must be at least 1")
    offsets = parse_targets(options.targets)
    torch.manual_seed(options.seed)
    model = load(options.model, options.device, options.dtype)
    chosen = resolve_layers(options.layers, model)
    data = data_config(options)
    dataset = load_data(model, data)
    examples = options.examples if options.limit is None else min(options.examples, options.limit)
    config = TrainConfig(
        layers=chosen,
        examples=examples,
        batch=options.batch,
        lr=options.lr,
        targets=offsets,
        init=options.init,
        seed=options.seed,
        prompt_len=options.prompt_len,
        lr_schedule=options.lr_schedule,
    )
    curve_examples = curve_selection(model, dataset)
    config.curve_dev = min(config.curve_dev, len(curve_examples))
    out = options.prompts_out(model)
    run_dir = run_directory(model, data, config)
    state = train_prompts(model, dataset, config, run_dir, out, curve_examples=curve_examples)
    reports = options.reports(model)
    curve = {"config": asdict(config), "seconds": round(state.seconds, 1), "points": state.curve}
    atomic_write_json(reports / "learning_curve.json", curve, indent=1)
    render_learning_curve(learning_curve_data(state.curve), reports / "learning_curve")
    return out


def jacobian_texts(model: LoadedModel, dataset: Dataset, count: int, length: int) -> list[list[int]]:
    """`count` texts of `length` tokens from the training documents: consecutive slices, spread over the documents."""
    slices = [
        tokens[start : start + length]
        for tokens in train_token_stream(model, dataset)
        for start in range(0, len(tokens) - length + 1, length * 8)
    ]
    if not slices:
        raise PipelineError(f"--text-tokens: no training document has {length} tokens")
    step = max(1, len(slices) // count)
    return slices[::step][:count]


def tuned_windows(model: LoadedModel, dataset: Dataset, window: int) -> tuple[list[list[int]], list[list[int]]]:
    """Training windows from the training documents and dev-curve windows from the dev split's selection part (the
    report part is never looked at while fitting)."""
    train = token_windows(train_token_stream(model, dataset), window)
    selection = dev_parts(dataset.meta["dev_docs"], dataset.meta["config"]["seed"])["selection"]
    dev = token_windows(document_tokens(model, dataset, selection), window)
    if not train or not dev:
        raise PipelineError(f"--corpus: no training and dev documents of {window} tokens for the tuned lens")
    return train, dev[:: max(1, len(dev) // 24)][:24]


def fit_name(model: LoadedModel, data: DataConfig, recipe: TunedLensRecipe | JacobianLensRecipe) -> str:
    """The checkpoint folder's name for one linear-lens fit (model, data and recipe), so a rerun resumes it."""
    raw = json.dumps({"data": data.key(model), "recipe": type(recipe).__name__, **asdict(recipe)}, sort_keys=True)
    return f"{model.id}-{type(recipe).__name__.lower()}-{hashlib.sha256(raw.encode()).hexdigest()[:12]}"


def run_fit_linear(options: TrainOptions) -> Path:
    """Fit the tuned lens (the tuned-lens recipe on windows of the training documents; resumable) or the Jacobian
    lens (its authors' recipe on training texts; resumable); the tuned lens's dev KL curve goes to the reports."""
    if options.texts < 1 or options.text_tokens < 1 or options.steps < 1 or options.tokens_per_step < 1:
        raise PipelineError("--texts, --text-tokens, --steps and --tokens-per-step must be at least 1")
    torch.manual_seed(options.seed)
    model = load(options.model, options.device, options.dtype)
    data = data_config(options)
    dataset = load_data(model, data)
    runs = data_cache_root() / "runs"
    if options.method == "tuned":
        window = min(TunedLensRecipe.window, *(len(t) for t in train_token_stream(model, dataset)))
        recipe = TunedLensRecipe(steps=options.steps, tokens_per_step=options.tokens_per_step, window=window)
        train, dev = tuned_windows(model, dataset, window)
        run = runs / fit_name(model, data, recipe)
        maps, curve = fit_tuned_lens(model, train, dev, recipe, checkpoint_dir=run)
        curve_file = {"recipe": asdict(recipe), "lr": recipe.lr, "dev_windows": len(dev), "curve": curve}
        atomic_write_json(options.reports(model) / "tuned_lens_curve.json", curve_file, indent=1)
    else:
        recipe = JacobianLensRecipe(prompts=options.texts, tokens=options.text_tokens)
        texts = jacobian_texts(model, dataset, options.texts, options.text_tokens)
        run = runs / fit_name(model, data, recipe)
        maps = fit_jacobian_lens(model, texts, recipe, checkpoint_dir=run)
    return save_linear_maps(options.prompts_out(model), model, maps)


def load_linear_lenses(model: LoadedModel, options: EvalOptions, only: list[str]) -> dict[str, LinearMaps]:
    """The fitted linear lenses among `only`, from the prompts' folder: a missing one is an error when named in
    --methods, and skipped (with a note) when evaluating every method."""
    maps = {}
    for method, kind in LINEAR_METHODS.items():
        if method not in only:
            continue
        try:
            maps[kind] = load_linear_maps(options.prompts(model), model, kind)
        except LinearLensArtifactError as error:
            if options.methods is not None:
                raise PipelineError(f"--methods {method}: {error}") from None
            print(f"skipping {method}: {error}", file=sys.stderr)
    return maps


def selection_examples(model: LoadedModel, dataset: Dataset, part: str) -> torch.Tensor | None:
    """`report`: the dev examples of the selection part's documents (they choose each best layer; the report part's
    examples are the ones reported); `all`: None (every dev example chooses and is reported, as before)."""
    if part == "all":
        return None
    if part != "report":
        raise PipelineError(f"--dev-part: expected report or all, got {part!r}")
    index = dev_example_parts(model, dataset)["selection"]
    if len(index) in (0, len(dataset.dev)):
        raise PipelineError("--dev-part report: the dev split needs documents in both parts (try --dev-part all)")
    return index


def publish_report(report: dict, reports: Path, paper_reference: Path | None) -> Path:
    """Write `report` into `reports` with the fits' curves found there, its tables, eval.md and every plot (also
    how a report computed elsewhere is published into a report folder). Returns eval.json's path."""
    tuned_curve = reports / "tuned_lens_curve.json"
    if tuned_curve.is_file():
        report["tuned_lens_curve"] = json.loads(tuned_curve.read_text())
    curve_path = reports / "learning_curve.json"
    if curve_path.is_file():
        report["learning_curve"] = json.loads(curve_path.read_text())
    paper = load_paper_reference(paper_reference)
    report["tables"] = report_tables(report, paper)
    path = write_report(report, reports)
    render_figure(figure_data(report, paper), reports / "eval")
    render_calibration(calibration_data(report), reports / "calibration")
    if any("kl" in v for m in report["methods"].values() for v in m["layers"].values()):
        render_kl(kl_data(report), reports / "kl")
    atomic_write_text(reports / "eval.md", report_markdown(report))
    return path


def run_eval(options: EvalOptions) -> Path:
    """Evaluate every method; write eval.json, eval.png/.svg and the learned prompts' dev metrics."""
    model = load(options.model, options.device, options.dtype)
    chosen = resolve_layers(options.layers, model)
    dataset = load_data(model, data_config(options))
    only = parse_methods(options.methods)
    prompts = None
    if "learned_prompt" in only:
        try:
            prompts = load_soft_prompts(options.prompts(model), model)
        except PromptArtifactError as error:
            raise PipelineError(f"--prompt-dir: {error}") from None
    if options.dev_examples is not None and options.dev_examples < 1:
        raise PipelineError("--dev-examples must be at least 1")
    linear_maps = load_linear_lenses(model, options, only)
    selection = selection_examples(model, dataset, options.dev_part)
    report = evaluate(
        model,
        dataset,
        prompts,
        chosen,
        options.probe_epochs,
        dev_examples=options.dev_examples,
        only=only,
        linear_maps=linear_maps,
        selection=selection,
    )
    report["dev_part"] = options.dev_part
    reports = options.reports(model)
    if (reports / "eval.json").is_file():
        report = merge_reports(json.loads((reports / "eval.json").read_text()), report)
    path = publish_report(report, reports, options.paper_reference)
    if prompts is not None:
        update_manifest_metrics(model, prompts, report)
        write_regression_slice(model, prompts, dataset.dev)
    return path
