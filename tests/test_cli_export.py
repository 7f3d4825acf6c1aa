"""`future-lens export FILE --format svg|png|csv|html`: a saved grid JSON exported without a model, the same bytes
as the API's export of that grid; unreadable files and bad options exit with code 2 and a message."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from future_lens.export import export, grid_from_csv, select
from future_lens.lens.grid import Grid
from future_lens.server.cli import cli
from tests.export_helpers import sample_grid

runner = CliRunner()


@pytest.fixture
def saved(tmp_path) -> tuple[Grid, Path]:
    """A grid saved as the API serves it (with its `id` and `permalink` beside the grid fields)."""
    grid = sample_grid(n_layers=4, n_tokens=5, seed=3)
    path = tmp_path / "grid.json"
    document = {**grid.model_dump(mode="json", by_alias=True), "id": "abcdefghijkl", "permalink": "/g/abcdefghijkl"}
    path.write_text(json.dumps(document, ensure_ascii=False))
    return grid, path


def run(*args: str):
    return runner.invoke(cli, ["export", *args])


@pytest.mark.parametrize("fmt", ["svg", "png", "csv", "html"])
def test_export_writes_what_the_api_would(saved, tmp_path, fmt):
    grid, path = saved
    out = tmp_path / f"out.{fmt}"
    result = run(str(path), "--format", fmt, "-o", str(out))
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    assert out.read_bytes() == export(grid, fmt, select(grid, None, None)).content


def test_svg_parses_and_holds_every_cell(saved, tmp_path):
    grid, path = saved
    out = tmp_path / "out.svg"
    assert run(str(path), "-o", str(out)).exit_code == 0  # svg is the default
    titles = [el.text for el in ET.parse(out).getroot().iter("{http://www.w3.org/2000/svg}title")]
    assert len([t for t in titles if t and t.startswith("layer ")]) == len(grid.layers) * len(grid.tokens)


def test_png_decodes_at_the_chosen_scale_and_selection(saved, tmp_path):
    grid, path = saved
    out = tmp_path / "out.png"
    result = run(
        str(path), "-f", "png", "--scale", "1", "--layers", f"{grid.layers[1]}", "--tokens", "1:3", "-o", str(out)
    )
    assert result.exit_code == 0, result.output
    image = Image.open(io.BytesIO(out.read_bytes()))
    expected = export(grid, "png", select(grid, str(grid.layers[1]), "1:3"), scale=1.0).content
    assert image.size == Image.open(io.BytesIO(expected)).size


def test_csv_round_trips_to_the_saved_grid(saved, tmp_path):
    grid, path = saved
    out = tmp_path / "out.csv"
    assert run(str(path), "-f", "csv", "-o", str(out)).exit_code == 0
    text = out.read_bytes().decode("utf-8")  # as written: CSV line ends and newlines inside tokens kept apart
    assert grid_from_csv(text, json.loads(path.read_text())) == grid


def test_svg_to_stdout(saved):
    result = run(str(saved[1]))
    assert result.exit_code == 0 and result.output.startswith("<?xml")


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (None, ["missing.json"], "cannot read"),
        ("not json", ["bad.json"], "is not a Future Lens grid JSON"),
        ('{"schema": "x"}', ["bad.json"], "is not a Future Lens grid JSON"),
        ("grid", ["grid.json", "--format", "gif"], "format"),
        ("grid", ["grid.json", "--layers", "99"], "layers"),
        ("grid", ["grid.json", "--tokens", "40:50"], "tokens"),
        ("grid", ["grid.json", "--format", "json", "--layers", "0"], "--layers"),
    ],
)
def test_bad_input_exits_2_with_a_message(saved, tmp_path, monkeypatch, setup, args, message):
    monkeypatch.chdir(tmp_path)
    if setup not in (None, "grid"):
        (tmp_path / "bad.json").write_text(setup)
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output
