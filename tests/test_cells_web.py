"""Trajectories and the code behind a cell over the web API, on the embedded model with random soft prompts:
`track` on POST /lens, /g/{id}/track.json|svg, /g/{id}/code.py; and the generated code, run with the venv's Python
as a user would (no project code), gives the grid's tokens for logit, fixed and future cells."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from future_lens.defaults import DEFAULT_LIMITS
from future_lens.server.config import Settings
from future_lens.server.web.app import create_app
from future_lens.service import LensService
from tests.webapp_helpers import random_prompt_dir

pytestmark = pytest.mark.embedded

TEXT = "Marty McFly from"
LAYERS = [0, 15, 29]
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def checkpoints(smollm2, tmp_path_factory) -> Path:
    """A checkpoints folder laid out like the repository's: `<root>/<model id>/layer_XX.safetensors`."""
    root = tmp_path_factory.mktemp("checkpoints")
    random_prompt_dir(root / smollm2.id, smollm2)
    return root


@pytest.fixture(scope="module")
def client(smollm2, checkpoints, tmp_path_factory) -> TestClient:
    service = LensService(smollm2, prompt_dir=checkpoints / smollm2.id)
    return TestClient(create_app(Settings(db_path=tmp_path_factory.mktemp("db") / "grids.sqlite3"), service=service))


def post(client: TestClient, **fields: object) -> dict:
    response = client.post("/lens", json={"text": TEXT, "layers": LAYERS, "n_future": 2, "top_k": 3, **fields})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def tracked(client) -> dict:
    first = post(client, method="future")
    ids = [first["cells"][1][2]["topk"][1]["id"], first["next_tokens"][0]["id"]]
    return post(client, method="future", track=ids)


def test_track_adds_trajectories_and_keeps_the_permalink(client, tracked):
    track = tracked["track"]
    assert track["method"] == "future" and track["layers"] == LAYERS and track["positions"] == len(tracked["tokens"])
    second = tracked["cells"][1][2]["topk"][1]
    assert track["tokens"][0]["id"] == second["id"]
    assert track["tokens"][0]["text"] == second["text"]
    assert track["tokens"][0]["probs"][1][2] == pytest.approx(second["prob"], abs=1e-5)
    assert track["tokens"][0]["ranks"][1][2] <= 2
    for token in track["tokens"]:
        assert len(token["probs"]) == len(LAYERS) and all(len(row) == track["positions"] for row in token["probs"])
        assert all(0.0 <= p <= 1.0 for row in token["probs"] for p in row)
        assert all(rank >= 1 for row in token["ranks"] for rank in row)
    stored = client.get(f"/g/{tracked['id']}.json").json()
    assert "track" not in stored  # the permalink's document is the grid alone
    assert {k: v for k, v in tracked.items() if k != "track"} == stored


@pytest.mark.parametrize(
    ("track", "message"),
    [([-1], "not in the vocabulary"), ([49152], "not in the vocabulary"), ([5, 5], "repeat"), ([], "between 1")],
)
def test_bad_track_ids_are_422_naming_track(client, track, message):
    response = client.post("/lens", json={"text": TEXT, "method": "logit", "track": track})
    assert response.status_code == 422
    assert response.json()["field"] == "track" and message in response.json()["message"]


def test_too_many_tracked_tokens_are_refused(client):
    limit = DEFAULT_LIMITS.max_track_tokens
    response = client.post("/lens", json={"text": TEXT, "method": "logit", "track": list(range(limit + 1))})
    assert response.status_code == 422 and response.json()["field"] == "track"


def test_track_json_and_svg_of_a_stored_grid(client, tracked):
    grid_id, token = tracked["id"], tracked["track"]["tokens"][0]
    answer = client.get(f"/g/{grid_id}/track.json", params={"token": [token["id"]]})
    assert answer.status_code == 200
    flat = [p for row in answer.json()["tokens"][0]["probs"] for p in row]
    assert flat == pytest.approx([p for row in token["probs"] for p in row], abs=1e-6)
    chart = client.get(f"/g/{grid_id}/track.svg", params={"token": token["id"], "position": 2})
    assert chart.status_code == 200 and chart.headers["content-type"].startswith("image/svg+xml")
    root = ET.fromstring(chart.content)
    texts = "".join(root.itertext())
    assert token["text"].replace(" ", "·") in texts
    strip = root.findall(f".//{SVG}g[@class='strip-cell']")
    assert len(strip) == len(LAYERS) * len(tracked["tokens"])
    assert len(root.findall(f".//{SVG}g[@class='chosen']/{SVG}circle")) == len(LAYERS)


@pytest.mark.parametrize(
    ("path", "params", "status", "field"),
    [
        ("track.svg", {"token": 5, "position": 99}, 422, "position"),
        ("track.svg", {"token": -3}, 422, "token"),
        ("track.json", {"token": "x"}, 422, "token"),
        ("code.py", {"layer": 3, "position": 0}, 422, "layer"),
        ("code.py", {"layer": 15, "position": 40}, 422, "position"),
        ("code.py", {"layer": 15}, 422, "position"),
    ],
)
def test_bad_cell_parameters_are_4xx_naming_the_field(client, tracked, path, params, status, field):
    answer = client.get(f"/g/{tracked['id']}/{path}", params=params)
    assert answer.status_code == status, answer.text
    assert answer.json()["field"] == field


def test_unknown_grid_is_404(client):
    assert client.get("/g/aaaaaaaaaaaa/track.svg", params={"token": 5}).status_code == 404
    assert client.get("/g/aaaaaaaaaaaa/code.py", params={"layer": 0, "position": 0}).status_code == 404
    assert client.get("/g/not-an-id/track.json", params={"token": 5}).status_code == 404


def test_openapi_documents_track(client):
    schema = client.get("/openapi.json").json()
    assert "track" in schema["components"]["schemas"]["GridRequest"]["properties"]
    for path in ("/g/{grid_id}/track.json", "/g/{grid_id}/track.svg", "/g/{grid_id}/code.py"):
        assert path in schema["paths"]


def run_snippet(code: str, workdir: Path, checkpoints: Path) -> tuple[list[int], list[float]]:
    """Run a generated script as a user would: the venv's Python, a fresh folder, offline."""
    script = workdir / "cell.py"
    script.write_text(code)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FUTURE_LENS_CHECKPOINTS": str(checkpoints)}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [sys.executable, str(script)], cwd=workdir, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ids = re.search(r"^predicted ids: (\[.*\])$", done.stdout, re.M)
    probs = re.search(r"^probabilities: (\[.*\])$", done.stdout, re.M)
    assert ids and probs, done.stdout
    return [int(i) for i in ids.group(1).strip("[]").split(",")], [
        float(p) for p in probs.group(1).strip("[]").split(",")
    ]


@pytest.mark.parametrize(
    ("method", "layer", "position"), [("logit", 15, 4), ("fixed", 29, 2), ("future", 15, 2), ("future", 0, 0)]
)
def test_the_code_behind_a_cell_reproduces_it(client, checkpoints, tmp_path, method, layer, position):
    grid = post(client, method=method, n_future=3)
    answer = client.get(f"/g/{grid['id']}/code.py", params={"layer": layer, "position": position})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/x-python")
    code = answer.text
    assert "import future_lens" not in code and "from future_lens" not in code  # plain transformers + nnsight
    compile(code, "cell.py", "exec")
    ids, probs = run_snippet(code, tmp_path, checkpoints)
    cell = grid["cells"][LAYERS.index(layer)][position]
    assert ids == [token["id"] for token in cell["tokens"]]
    assert probs == pytest.approx([token["prob"] for token in cell["tokens"]], abs=2e-4)  # printed to 4 digits


def test_text_in_the_code_is_a_literal_not_code(client, tmp_path):
    text = "'''\"\"\" ); import os; os.system('echo pwned') #\n\\x00 \u2028"
    answer = client.post("/lens", json={"text": text, "method": "logit", "layers": [3]})
    assert answer.status_code == 200, answer.text
    code = client.get(f"/g/{answer.json()['id']}/code.py", params={"layer": 3, "position": 0}).text
    namespace: dict[str, object] = {}
    text_line = next(line for line in code.splitlines() if line.startswith("TEXT = "))
    exec(text_line, namespace)  # the one line that holds the text: it only assigns the string
    assert namespace["TEXT"] == text.replace("\r\n", "\n")
    assert all(line.startswith("#") or "pwned" not in line for line in code.splitlines() if line != text_line)
