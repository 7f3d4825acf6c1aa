"""The example notebook (examples/future_lens_demo.ipynb) runs end to end in a real Jupyter kernel (nbclient), on the
embedded model with the shipped soft prompts, and shows what it says: the grid, a trajectory chart, the code behind a
cell and the SVG figure."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.embedded

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "future_lens_demo.ipynb"


def outputs(cell) -> list[dict]:
    return [output for output in cell.get("outputs", []) if output["output_type"] != "stream" or output["text"]]


def test_the_example_notebook_runs_and_shows_the_demo(embedded_dir, tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    client = NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError on any failing cell
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code)
    shown = [output for cell in code for output in outputs(cell)]
    assert not [output for output in shown if output["output_type"] == "error"]
    rich = [output["data"] for output in shown if output["output_type"] in ("execute_result", "display_data")]
    frames = [data["text/html"] for data in rich if "future-lens-grid" in data.get("text/html", "")]
    assert frames and frames[0].startswith("<iframe") and "srcdoc=" in frames[0]
    charts = [data["image/svg+xml"] for data in rich if "image/svg+xml" in data]
    assert any("Trajectory of" in chart for chart in charts)
    assert any("Future lens" in chart and "Mart" in chart and "Trajectory" not in chart for chart in charts)
    printed = "".join(output.get("text", "") for output in shown if output["output_type"] == "stream")
    assert "layer  0:" in printed and "layer 27:" in printed and "model's own next token:" in printed
    assert "from nnsight import save" in printed and "predicted ids" in printed  # the code behind a cell
