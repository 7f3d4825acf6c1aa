"""Command line: `future-lens grid|models|prepare|import-prompt|serve` (and training commands)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from app.lens import DEFAULT_MODEL, Grid
from app.lens.display import visible_whitespace
from app.lens.models import PAPER_MODEL
from app.training.pipeline import EvalOptions, PipelineError, RunOptions, TrainOptions, run_eval, run_train

Options = TypeVar("Options", bound=RunOptions)
cli = typer.Typer(add_completion=False, no_args_is_help=True, help="Future Lens: what each hidden state anticipates.")

ModelOption = Annotated[str, typer.Option("--model", "-m", help="catalog id or local HF model directory")]
DeviceOption = Annotated[str, typer.Option(help="cpu, cuda, cuda:1 ... or auto")]
DtypeOption = Annotated[str, typer.Option(help="float32, bfloat16, float16 or auto")]


def fail(message: str) -> None:
    """Print an error for a person and exit non-zero (2: bad input)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def render_grid(grid: Grid, width: int = 14) -> str:
    """A terminal table: one row per layer, one column per input token, whitespace made visible; a row computed
    with another layer's trained prompt ends in `(prompt from layer k)`."""

    def fit(text: str) -> str:
        text = visible_whitespace(text)
        return (text[: width - 1] + "…" if len(text) > width else text).ljust(width)

    lines = ["layer ".rjust(7) + " ".join(fit(t.text) for t in grid.tokens)]
    lines.append("-" * len(lines[0]))
    prompt_layers = grid.prompt_layers or grid.layers
    for layer, prompt_layer, row in zip(grid.layers, prompt_layers, grid.cells, strict=True):
        line = f"{layer:>5}  " + " ".join(fit("".join(t.text for t in cell.tokens)) for cell in row)
        lines.append(line + (f"  (prompt from layer {prompt_layer})" if prompt_layer != layer else ""))
    lines.append("-" * len(lines[0]))
    lines.append("  next " + " ".join(fit(t.text) for t in grid.next_tokens))
    return "\n".join(lines)


@cli.command()
def grid(
    text: Annotated[str, typer.Argument(help="the input text")],
    method: Annotated[str, typer.Option(help="future, logit or fixed")] = "future",
    layers: Annotated[str, typer.Option(help="e.g. all, 0-29, 0,5,10 or ::3")] = "all",
    n_future: Annotated[int, typer.Option("--n-future", "-n", help="tokens decoded per cell")] = 4,
    top_k: Annotated[int, typer.Option(help="alternatives kept for the first token")] = 5,
    prompt: Annotated[str | None, typer.Option(help="fixed lens: the prompt text")] = None,
    prompt_dir: Annotated[Path | None, typer.Option(help="future lens: folder of trained soft prompts")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the grid JSON")] = False,
    model: ModelOption = DEFAULT_MODEL,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
) -> None:
    """Compute the grid of TEXT: one row per layer, one column per token."""
    from app.service import InvalidRequestError, LensService, parse_request

    try:
        request = parse_request(text=text, method=method, layers=layers, n_future=n_future, top_k=top_k, prompt=prompt)
        service = LensService.load(model, device=device, dtype=dtype, prompt_dir=prompt_dir)
        result = service.compute(request)
    except (InvalidRequestError, ValueError, RuntimeError) as error:
        fail(str(error))
    typer.echo(result.model_dump_json(indent=2) if as_json else render_grid(result))


@cli.command()
def models() -> None:
    """List the model catalog and what is installed here."""
    from app.lens.models import catalog_status

    for row in catalog_status():
        typer.echo(f"{row['id']:<24} {row['status']:<10} {row['description']}")
        if row["status"] == "missing":
            typer.echo(f"{'':<24} install: {row['install']}")
    typer.echo("Any local Hugging Face causal-LM directory works too: --model /path/to/model")


@cli.command()
def prepare(model: ModelOption = DEFAULT_MODEL) -> None:
    """Convert/cache a catalog model once so later loads are fast (no-op when already done)."""
    from app.lens.models import ModelNotAvailableError, model_directory

    try:
        model_id, directory, _ = model_directory(model)
    except ModelNotAvailableError as error:
        fail(str(error))
    typer.echo(f"{model_id}: ready at {directory}")


@cli.command("import-prompt")
def import_prompt(
    file: Annotated[Path, typer.Argument(help="the paper authors' torch-saved prompt (nn.Parameter [10, d])")],
    layer: Annotated[int, typer.Option(help="the block index it was trained for")],
    model: ModelOption = PAPER_MODEL,
    prompt_dir: Annotated[Path | None, typer.Option(help="where to write (default checkpoints/<model>)")] = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
) -> None:
    """Import a released soft prompt as a safetensors artifact bound to the model's fingerprint."""
    from app.lens.models import load_model
    from app.lens.prompts import default_prompt_dir, import_paper_prompt

    if not file.is_file():
        fail(f"{file} does not exist")
    try:
        loaded = load_model(model, device=device, dtype=dtype)
        if not 0 <= layer < loaded.adapter.n_layers:
            fail(f"layer {layer} does not exist: the model has blocks 0..{loaded.adapter.n_layers - 1}")
        path = import_paper_prompt(file, loaded, layer, prompt_dir or default_prompt_dir(loaded.id))
    except (ValueError, RuntimeError) as error:
        fail(str(error))
    typer.echo(f"wrote {path}")


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address")] = None,
    port: Annotated[int | None, typer.Option(help="port")] = None,
    db: Annotated[Path | None, typer.Option("--db", help="SQLite file for permalinks")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="catalog id or local model directory")] = None,
) -> None:
    """Start the web app (uvicorn)."""
    import uvicorn

    from app.config import Settings
    from app.web.app import create_app

    overrides = {k: v for k, v in {"host": host, "port": port, "db_path": db, "model": model}.items() if v is not None}
    settings = Settings(**overrides)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port)


# --- training: thin wrappers over app.training.pipeline; defaults come from its option objects ---

LimitOption = Annotated[
    int | None, typer.Option(help="cap train and dev examples (quick runs, CI); changes the dataset cache key")
]
CorpusOption = Annotated[
    Path,
    typer.Option(
        help="JSONL with a `text` field, a .txt file or a folder of .txt; the default, relative to the working "
        "directory, is this workspace's Pile sample"
    ),
]
TrainPoolOption = Annotated[int, typer.Option(help="training examples cut from the corpus (the data cache's size)")]
DevPoolOption = Annotated[int, typer.Option(help="dev examples cut from held-out documents")]
LayersOption = Annotated[str, typer.Option(help="e.g. all, 0-29, 0,5,10 or ::3")]
SeedOption = Annotated[int, typer.Option(help="data split, example order and init seed (eval: the one trained with)")]
PromptDirOption = Annotated[Path | None, typer.Option(help="the soft prompts' folder (default checkpoints/<model>)")]
ReportDirOption = Annotated[Path | None, typer.Option(help="where reports and plots go (default reports/<model>)")]


def run_pipeline(step: Callable[[Options], Path], options: Options) -> None:
    """Run a training/eval step, reporting bad options as a CLI error (exit code 2)."""
    try:
        written = step(options)
    except (PipelineError, ValueError) as error:
        fail(str(error))
    typer.echo(f"wrote {written}")


@cli.command()
def train(
    model: ModelOption = RunOptions.model,
    layers: LayersOption = RunOptions.layers,
    examples: Annotated[int, typer.Option(help="training examples per layer (paper: 10000)")] = TrainOptions.examples,
    batch: Annotated[int, typer.Option(help="examples per AdamW step (paper: 8)")] = TrainOptions.batch,
    lr: Annotated[float, typer.Option(help="AdamW learning rate (paper: 5e-4)")] = TrainOptions.lr,
    targets: Annotated[str, typer.Option(help="future offsets in the loss, e.g. 1 or 0,1,2,3")] = TrainOptions.targets,
    init: Annotated[
        str, typer.Option(help="fixed (the paper's fixed prompt's embeddings) or normal")
    ] = TrainOptions.init,
    seed: SeedOption = RunOptions.seed,
    corpus: CorpusOption = RunOptions.corpus,
    train_pool: TrainPoolOption = RunOptions.train_pool,
    dev_pool: DevPoolOption = RunOptions.dev_pool,
    limit: LimitOption = RunOptions.limit,
    prompt_dir: PromptDirOption = RunOptions.prompt_dir,
    report_dir: ReportDirOption = RunOptions.report_dir,
    device: DeviceOption = RunOptions.device,
    dtype: DtypeOption = RunOptions.dtype,
) -> None:
    """Train one soft prompt per layer (resumable: rerun the same command to continue)."""
    run_pipeline(run_train, TrainOptions(**locals()))


@cli.command("eval")
def evaluate(
    model: ModelOption = RunOptions.model,
    layers: LayersOption = RunOptions.layers,
    seed: SeedOption = RunOptions.seed,
    corpus: CorpusOption = RunOptions.corpus,
    train_pool: TrainPoolOption = RunOptions.train_pool,
    dev_pool: DevPoolOption = RunOptions.dev_pool,
    limit: LimitOption = RunOptions.limit,
    prompt_dir: PromptDirOption = RunOptions.prompt_dir,
    report_dir: ReportDirOption = RunOptions.report_dir,
    probe_epochs: Annotated[
        int, typer.Option(help="fine-tune epochs of the linear baselines")
    ] = EvalOptions.probe_epochs,
    dev_examples: Annotated[
        int | None, typer.Option(help="evaluate on the first K dev examples only")
    ] = EvalOptions.dev_examples,
    methods: Annotated[
        str | None, typer.Option(help="comma list (default all); merged into an existing report")
    ] = EvalOptions.methods,
    paper_reference: Annotated[
        Path | None,
        typer.Option(help="the paper's Figure-4 values (JSON), drawn dashed; skipped when the file is missing"),
    ] = EvalOptions.paper_reference,
    device: DeviceOption = RunOptions.device,
    dtype: DtypeOption = RunOptions.dtype,
) -> None:
    """Evaluate the learned prompts and every baseline on the dev split; write the report and the plot."""
    run_pipeline(run_eval, EvalOptions(**locals()))


def main() -> None:
    """Console entry point (`future-lens`, `python -m app.cli`): every command is registered by now."""
    try:
        cli()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
