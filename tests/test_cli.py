"""The command line: readable grids, JSON, and exit code 2 with a clear message for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from future_lens.lens import models
from future_lens.lens.grid import Grid
from future_lens.server.cli import cli
from tests.webapp_helpers import random_prompt_dir

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["grid", ""], "text"),
        (["grid", "hello", "--model", "no-such-model"], "unknown model"),
        (["grid", "hello", "--layers", "3-1"], "layers"),
        (["grid", "hello", "--layers", "0-99", "--method", "logit"], "do not exist"),
        (["grid", "hello", "--n-future", "0"], "n_future"),
        (["grid", "hello", "--n-future", "99"], "n_future"),
        (["grid", "hello", "--method", "telepathy"], "method"),
        (["grid", "hello", "--top-k", "0"], "top_k"),
        (["grid", "hello", "--dtype", "float8"], "dtype"),
    ],
)
def test_bad_input_exits_2_with_a_message(args: list[str], message: str) -> None:
    result = runner.invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_future_without_prompts_names_the_problem(tmp_path) -> None:
    result = runner.invoke(cli, ["grid", "hello", "--method", "future", "--prompt-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "no trained soft prompts" in result.output


@pytest.mark.embedded
def test_logit_grid_is_readable() -> None:
    result = runner.invoke(cli, ["grid", "The Eiffel Tower is in the city of", "--method", "logit"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["layer", "The", "·E"]  # whitespace made visible
    last_layer = next(line for line in lines if line.strip().startswith("29 "))
    assert last_layer.split()[-1] == "·Paris"


@pytest.mark.embedded
def test_json_output_is_a_valid_grid() -> None:
    result = runner.invoke(cli, ["grid", "Hello world", "--method", "fixed", "--layers", "0,29", "-n", "2", "--json"])
    assert result.exit_code == 0, result.output
    grid = Grid.model_validate(json.loads(result.output))
    assert grid.layers == [0, 29] and grid.n_future == 2 and grid.method == "fixed"
    assert len(grid.cells[0]) == len(grid.tokens) == 2


def test_models_lists_the_catalog() -> None:
    result = runner.invoke(cli, ["models"])
    assert result.exit_code == 0
    assert "smollm2-135m-instruct" in result.output and "gpt-j-6b" in result.output


@pytest.mark.embedded
def test_prepare_is_a_no_op_when_cached(embedded_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the converted model cached, `prepare` loads no GGUF and rewrites no file."""
    loads: list[object] = []

    class NoLoading:
        @staticmethod
        def from_pretrained(*args: object, **kwargs: object) -> None:
            loads.append(args)
            raise AssertionError("prepare loaded the GGUF again")

    monkeypatch.setattr(models, "AutoModelForCausalLM", NoLoading)
    monkeypatch.setattr(models, "AutoTokenizer", NoLoading)

    def files() -> dict[str, tuple[int, int]]:
        return {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in embedded_dir.iterdir()}

    before = files()
    result = runner.invoke(cli, ["prepare"])
    assert result.exit_code == 0, result.output
    assert f"ready at {embedded_dir}" in result.output
    assert loads == [] and files() == before


@pytest.mark.embedded
def test_whitespace_only_text_with_crlf_gives_the_same_tokens_as_the_web() -> None:
    result = runner.invoke(cli, ["grid", "\r\n\r\n", "--method", "logit", "--layers", "0", "--json"])
    assert result.exit_code == 0, result.output
    grid = Grid.model_validate(json.loads(result.output))
    assert "".join(token.text for token in grid.tokens) == "\n\n"  # \r\n normalised, as the form and API do
    assert all(token.piece for token in grid.tokens)
    readable = runner.invoke(cli, ["grid", "\r\n\r\n", "--method", "logit", "--layers", "0"])
    assert readable.exit_code == 0, readable.output
    assert readable.output.splitlines()[0].split() == ["layer", "↵↵"]


@pytest.mark.embedded
def test_rows_with_a_borrowed_prompt_say_whose(smollm2, tmp_path: Path) -> None:
    """Only layer 3 has a trained prompt: layer 2's row used it, and the readable table says so on that row."""
    prompts = random_prompt_dir(tmp_path, smollm2, layers=(3,))
    args = ["grid", "Hello world", "--method", "future", "--layers", "2,3", "-n", "1", "--prompt-dir", str(prompts)]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.output.splitlines() if line.split()[0] in ("2", "3")}
    assert rows["2"].endswith("  (prompt from layer 3)")
    assert "prompt from" not in rows["3"]
    as_json = runner.invoke(cli, [*args, "--json"])
    assert Grid.model_validate(json.loads(as_json.output)).prompt_layers == [3, 3]
