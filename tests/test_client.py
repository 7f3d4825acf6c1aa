"""The notebook client (`future_lens.client`): against a live server on loopback (real uvicorn, real HTTP) and
in-process, on the embedded model with random soft prompts. Both give the same cells; figures, HTML, trajectories
and code come from the server's routes or the same export code; refusals name the field in both modes."""

from __future__ import annotations

import builtins
import html
import json
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from future_lens.client import Grid, LensRequestError, lens
from future_lens.client.grid import PANDAS_MISSING
from future_lens.server.config import Settings
from future_lens.server.web.app import create_app
from future_lens.service import LensService
from tests.server_helpers import serving
from tests.webapp_helpers import random_prompt_dir

pytestmark = pytest.mark.embedded

TEXT = "Marty McFly from"
REQUEST = {"method": "future", "n_future": 2, "layers": [0, 15, 29], "top_k": 3}
XSS = "<script>alert(1)</script><img src=x onerror=alert(2)>"


@pytest.fixture(scope="module")
def prompt_dir(smollm2, tmp_path_factory) -> Path:
    return random_prompt_dir(tmp_path_factory.mktemp("prompts"), smollm2)


@pytest.fixture(scope="module")
def server(smollm2, prompt_dir, tmp_path_factory):
    service = LensService(smollm2, prompt_dir=prompt_dir)
    app = create_app(Settings(db_path=tmp_path_factory.mktemp("db") / "grids.sqlite3"), service=service)
    with serving(app) as url:
        yield url


@pytest.fixture(scope="module")
def remote(server) -> Grid:
    return lens(TEXT, server=server, **REQUEST)


@pytest.fixture(scope="module")
def local(prompt_dir) -> Grid:
    return lens(TEXT, device="cpu", dtype="float32", prompt_dir=prompt_dir, **REQUEST)


def cells_of(grid: Grid) -> list:
    return [[[(t["id"], round(t["prob"], 5)) for t in cell["tokens"]] for cell in row] for row in grid.data["cells"]]


def test_remote_and_in_process_grids_agree(remote, local):
    assert remote.id and local.id is None
    assert remote.layers == local.layers == [0, 15, 29]
    assert remote.tokens == local.tokens and remote.tokens[-1] == " from"
    assert cells_of(remote) == cells_of(local)
    assert remote.predicted(15, 2) == [t["text"] for t in remote.data["cells"][1][2]["tokens"]]
    assert repr(remote).startswith("<Grid future · smollm2-135m-instruct · N = 2 · 3 layers × ")


def test_to_pandas_is_long_format(remote):
    frame = remote.to_pandas()
    n_cells = 3 * len(remote.tokens)
    assert len(frame) == n_cells * (2 + 3)
    assert set(frame["kind"]) == {"predicted", "topk"}
    first = frame[(frame.layer == 15) & (frame.position == 2) & (frame.kind == "predicted") & (frame.k == 0)]
    assert first.iloc[0]["token_id"] == remote.cell(15, 2)["tokens"][0]["id"]
    assert first.iloc[0]["input_token"] == remote.tokens[2]


def test_to_pandas_without_pandas_says_how_to_get_it(remote, monkeypatch):
    real_import = builtins.__import__

    def no_pandas(name, *args, **kwargs):
        if name == "pandas":
            raise ImportError("No module named 'pandas'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pandas)
    with pytest.raises(ImportError, match=r"future-lens\[notebook\]") as raised:
        remote.to_pandas()
    assert str(raised.value) == PANDAS_MISSING


def svg_texts(svg: str) -> str:
    return "".join(ET.fromstring(svg.encode()).itertext())


@pytest.mark.parametrize("mode", ["remote", "local"])
def test_figures_html_and_code_in_both_modes(request, server, mode):
    grid: Grid = request.getfixturevalue(mode)
    svg = grid.to_svg()
    assert all(t.replace(" ", "·") in svg_texts(svg) for t in grid.tokens)
    page = grid.to_html()
    assert page.lower().startswith("<!doctype html>") and "Content-Security-Policy" in page
    code = grid.code(15, 2)
    assert "model.trace(" in code and "TEXT = 'Marty McFly from'" in code
    if mode == "remote":
        import httpx

        assert svg == httpx.get(f"{server}/g/{grid.id}.svg").text


class Elements(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_rich_display_is_the_escaped_offline_file_in_a_sandboxed_frame(server):
    grid = lens(XSS, server=server, method="logit", layers=[29])
    shown = grid._repr_html_()
    parser = Elements()
    parser.feed(shown)
    assert [tag for tag, _ in parser.tags] == ["iframe"]  # the file's own markup stays inside the attribute
    attrs = parser.tags[0][1]
    assert attrs["sandbox"] == "allow-scripts"
    assert attrs["srcdoc"] == grid.to_html()
    inside = Elements()  # token text is escaped by the export itself: no element comes from it
    inside.feed(attrs["srcdoc"])
    assert "img" not in [tag for tag, _ in inside.tags]
    assert [tag for tag, _ in inside.tags].count("script") == 1  # the export's own, allowed by its CSP hash
    assert html.escape("<") in attrs["srcdoc"]


@pytest.mark.parametrize("mode", ["remote", "local"])
def test_track_in_both_modes(request, server, prompt_dir, mode):
    base: Grid = request.getfixturevalue(mode)
    token_id = base.cell(15, 2)["topk"][1]["id"]
    options = (
        {"server": server} if mode == "remote" else {"device": "cpu", "dtype": "float32", "prompt_dir": prompt_dir}
    )
    grid = lens(TEXT, track=[token_id], **REQUEST, **options)
    track = grid.track
    assert track["tokens"][0]["id"] == token_id
    assert track["tokens"][0]["probs"][1][2] == pytest.approx(base.cell(15, 2)["topk"][1]["prob"], abs=1e-5)
    rows = list(grid.track_rows())
    assert len(rows) == 3 * len(grid.tokens)
    assert grid.to_pandas("track")["rank"].min() >= 1
    chart = grid.track_svg(token_id, position=2)
    assert "Trajectory of" in svg_texts(chart)
    other = base.cell(0, 0)["topk"][0]["id"]  # not tracked by this request: computed on demand
    assert "Trajectory of" in svg_texts(grid.track_svg(other, position=0))


@pytest.mark.parametrize("mode", ["remote", "local"])
@pytest.mark.parametrize(
    ("fields", "field"),
    [({"n_future": 0}, "n_future"), ({"layers": "40"}, "layers"), ({"track": [-1]}, "track"), ({"text": ""}, "text")],
)
def test_refusals_name_the_field(server, prompt_dir, mode, fields, field):
    request = {"text": TEXT, "method": "logit", **fields}
    options = (
        {"server": server} if mode == "remote" else {"device": "cpu", "dtype": "float32", "prompt_dir": prompt_dir}
    )
    with pytest.raises(LensRequestError) as raised:
        lens(**request, **options)
    assert raised.value.field == field
    if mode == "remote":
        assert raised.value.status == 422


def test_bad_cell_for_code_names_the_field(remote, local):
    for grid in (remote, local):
        with pytest.raises(LensRequestError) as raised:
            grid.code(3, 0)
        assert raised.value.field == "layer"


def test_server_must_be_a_url():
    with pytest.raises(ValueError, match="http"):
        lens(TEXT, server="localhost:8000")


def test_grid_json_round_trips(remote):
    assert json.loads(remote.to_json()) == remote.data


def test_the_client_imports_no_server_code_until_it_computes_in_process():
    import subprocess
    import sys

    probe = (
        "import sys, future_lens.client; "
        "print(sorted(m for m in sys.modules if m.startswith(('future_lens.server', 'future_lens.lens', 'torch'))))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"
