"""Importing future_lens leaves nnsight as the user has it, and both the user's nnsight and ours keep working.

Each check runs in a fresh interpreter (nnsight reads its config and mounts `.save` once, at its first import), with
no network (`HF_HUB_OFFLINE=1`), no inherited `NNSIGHT_*`/`NDIF_*` variables and `XDG_CONFIG_HOME` in `tmp_path`, so
the machine's own nnsight config plays no part. The subprocess prints one JSON line that the test reads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OUR_MODULES = "future_lens, future_lens.lens.tracing, future_lens.lens.lenses, future_lens.server.web.app"

#: A tiny random Llama shared by our lens (`wrap_model`, as tests/conftest.py's fixtures do) and the user's own
#: `nnsight.LanguageModel` over the very same weights; `expected` is block 0's output from plain transformers.
TINY_LLAMA = """
import torch
from transformers import LlamaForCausalLM
from future_lens.lens.models import wrap_model
from tests.conftest import TINY_VOCAB, tiny_llama_config, word_tokenizer, words

torch.manual_seed(3)
hf = LlamaForCausalLM(tiny_llama_config(TINY_VOCAB, n_layers=2)).eval()
ours = wrap_model("tiny-llama", hf, word_tokenizer(), None)
ids = torch.tensor([[5, 6, 7, 8]])
with torch.no_grad():
    expected = hf(ids, output_hidden_states=True).hidden_states[1]
"""

USER_TRACE = """
def user_trace(lm):
    with lm.trace(ids):
        h = lm.model.layers[0].output.save()  # the user's own code: `.save()` as a method (nnsight's mount)
    assert isinstance(h, torch.Tensor), type(h)
    assert torch.allclose(h, expected, atol=1e-5)
"""


def user_env(tmp_path: Path, **variables: str) -> dict[str, str]:
    """This process's environment as a user's shell would have it: no nnsight/NDIF settings of ours or the host's."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("NNSIGHT_", "NDIF_"))}
    (tmp_path / "xdg").mkdir(exist_ok=True)
    return env | {"HF_HUB_OFFLINE": "1", "XDG_CONFIG_HOME": str(tmp_path / "xdg"), **variables}


def run_python(code: str, env: dict[str, str]) -> dict:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-6000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_user_config(path: Path, api_key: str, pymount: bool | None = None) -> bytes:
    """A user's nnsight config file (an NDIF key and host, and PYMOUNT if given); returns its bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = f"# my own nnsight settings\nAPI:\n  APIKEY: {api_key}\n  HOST: https://ndif.example.test\n"
    if pymount is not None:
        text += f"APP:\n  PYMOUNT: {str(pymount).lower()}\n"
    path.write_text(text)
    return path.read_bytes()


IMPORT_AND_REPORT = f"""
import json, os, sys
import torch, transformers.modeling_utils  # third-party imports that set variables of their own (torch's inductor
                                           # cache dir): imported first, so `changed` is what our modules change
assert "nnsight" not in sys.modules  # our import is the one that brings nnsight in
before = dict(os.environ)
import {OUR_MODULES}
import nnsight
changed = sorted(name for name in before.keys() | os.environ.keys() if before.get(name) != os.environ.get(name))
print(json.dumps({{
    "changed": changed,
    "NNSIGHT_CONFIG": os.environ.get("NNSIGHT_CONFIG"),
    "api_key": nnsight.CONFIG.API.APIKEY,
    "host": nnsight.CONFIG.API.HOST,
    "PYMOUNT": nnsight.CONFIG.APP.PYMOUNT,
    "mounted": "save" in vars(object),
}}))
"""


def test_importing_changes_no_environment_variable_and_no_nnsight_setting(tmp_path) -> None:
    """No user config at all: nnsight's own defaults, `.save` mounted as nnsight does, NNSIGHT_CONFIG still unset."""
    seen = run_python(IMPORT_AND_REPORT, user_env(tmp_path))
    assert seen["changed"] == []
    assert seen["NNSIGHT_CONFIG"] is None
    assert (seen["api_key"], seen["host"]) == (None, "https://api.ndif.us")
    assert seen["PYMOUNT"] and seen["mounted"]


def test_the_users_nnsight_config_file_named_by_nnsight_config_is_read_and_untouched(tmp_path) -> None:
    config = tmp_path / "elsewhere" / "my-nnsight.yaml"
    written = write_user_config(config, "user-key-from-NNSIGHT_CONFIG")
    seen = run_python(IMPORT_AND_REPORT, user_env(tmp_path, NNSIGHT_CONFIG=str(config)))
    assert seen["changed"] == []
    assert seen["NNSIGHT_CONFIG"] == str(config)
    assert (seen["api_key"], seen["host"]) == ("user-key-from-NNSIGHT_CONFIG", "https://ndif.example.test")
    assert seen["PYMOUNT"] and seen["mounted"]
    assert config.read_bytes() == written
    assert sorted(p.name for p in config.parent.iterdir()) == ["my-nnsight.yaml"]


def test_the_users_default_nnsight_config_file_is_read_and_untouched(tmp_path) -> None:
    """`~/.config/nnsight/config.yaml` (here under XDG_CONFIG_HOME), with the user's own PYMOUNT: false, respected."""
    config = tmp_path / "xdg" / "nnsight" / "config.yaml"
    written = write_user_config(config, "user-key-from-xdg", pymount=False)
    seen = run_python(IMPORT_AND_REPORT, user_env(tmp_path))
    assert seen["changed"] == [] and seen["NNSIGHT_CONFIG"] is None
    assert (seen["api_key"], seen["host"]) == ("user-key-from-xdg", "https://ndif.example.test")
    assert (seen["PYMOUNT"], seen["mounted"]) == (False, False)
    assert config.read_bytes() == written


OUR_GRIDS = """
from future_lens.lens.lenses import FixedPromptLens, LogitLens

def our_grids():
    grids = [
        LogitLens(ours).grid(words(5), layers=[0, 1], n_future=1, top_k=2),
        FixedPromptLens(ours, words(3, seed=7)).grid(words(5), layers=[0, 1], n_future=2, top_k=2),
    ]
    return [[[[token.id for token in cell.tokens] for cell in row] for row in grid.cells] for grid in grids]
"""
REPORT_GRIDS = "print(json.dumps({'mounted': 'save' in vars(object), 'grids': grids}))\n"


def test_the_users_own_save_works_beside_our_lenses(tmp_path) -> None:
    """After `import future_lens` and after one of our grids, the user's `lm.trace(...)` with `.save()` works."""
    user_steps = """
user_trace(nnsight.LanguageModel(hf, tokenizer=word_tokenizer()))
grids = our_grids()
user_trace(nnsight.LanguageModel(hf, tokenizer=word_tokenizer()))
"""
    prelude = f"import json\nimport {OUR_MODULES}\nimport nnsight\n"
    mounted = run_python(prelude + TINY_LLAMA + USER_TRACE + OUR_GRIDS + user_steps + REPORT_GRIDS, user_env(tmp_path))
    assert mounted["mounted"]
    assert [len(grid) for grid in mounted["grids"]] == [2, 2] and all(len(row) == 5 for row in mounted["grids"][0])
    # ours computes the same grids where the user turned the mount off (their config; no `.save()` for them there)
    write_user_config(tmp_path / "xdg" / "nnsight" / "config.yaml", "k", pymount=False)
    ours_only = prelude + TINY_LLAMA + OUR_GRIDS + "grids = our_grids()\n" + REPORT_GRIDS
    unmounted = run_python(ours_only, user_env(tmp_path))
    assert not unmounted["mounted"]
    assert unmounted["grids"] == mounted["grids"]


SERVE = (
    """
import json, os
from fastapi.testclient import TestClient
from future_lens.server.config import Settings
from future_lens.server.store import MemoryGridStore
from future_lens.server.web.app import create_app
from future_lens.service import LensService
import nnsight
"""
    + TINY_LLAMA
    + USER_TRACE
    + """
app = create_app(Settings(db_path=os.environ["GRID_DB"]), service=LensService(ours), store=MemoryGridStore())
with TestClient(app) as client:  # the lifespan too: anyio's portal, thread pools and streams all run
    posted = client.post("/lens", json={"text": words(4), "method": "logit", "top_k": 2})
    assert posted.status_code == 200, posted.text
    with client.stream("POST", "/lens", json={"text": words(3, seed=1), "method": "logit"},
                       headers={"Accept": "application/x-ndjson"}) as streamed:
        assert streamed.status_code == 200
        lines = [json.loads(line) for line in streamed.iter_lines() if line]
    assert "schema" in lines[-1], lines[-1]
    page = client.get("/g/" + posted.json()["id"])
    assert page.status_code == 200, page.text[-500:]
if "save" in vars(object):
    user_trace(nnsight.LanguageModel(hf, tokenizer=word_tokenizer()))  # the server changed nothing for the user
print(json.dumps({"mounted": "save" in vars(object), "PYMOUNT": nnsight.CONFIG.APP.PYMOUNT,
                  "cells": len(posted.json()["cells"])}))
"""
)


@pytest.mark.parametrize("first", ["nnsight", "future_lens", "nnsight without the mount"])
def test_the_web_app_answers_whether_or_not_nnsight_mounted_save(tmp_path, first: str) -> None:
    """`POST /lens` (JSON and NDJSON) and a permalink page work with `.save` mounted on `object`, also when the
    process imported nnsight before anything of ours (anyio's attribute sets not yet defined), and without it."""
    if first == "nnsight without the mount":
        write_user_config(tmp_path / "xdg" / "nnsight" / "config.yaml", "k", pymount=False)
    prelude = "import nnsight\n" if first.startswith("nnsight") else "import future_lens.lens.tracing\n"
    seen = run_python(prelude + SERVE, user_env(tmp_path, GRID_DB=str(tmp_path / "grids.sqlite3")))
    mounted = first != "nnsight without the mount"
    assert (seen["mounted"], seen["PYMOUNT"]) == (mounted, mounted)
    assert seen["cells"] == 2  # the tiny Llama's two blocks


def test_nnsights_mount_is_what_breaks_anyio_and_the_server_tolerates_it(tmp_path) -> None:
    """The failure itself, for the record: with `.save` mounted, a new anyio `TypedAttributeSet` subclass is refused;
    after `tolerate_object_mounts()` it is accepted, and the check still refuses a genuinely unannotated attribute."""
    code = """
import json
import nnsight
from anyio import TypedAttributeSet
from future_lens.server.nnsight_safety import tolerate_object_mounts

def define(**attributes):
    try:
        type("Probe", (TypedAttributeSet,), attributes)
        return "ok"
    except TypeError as error:
        return str(error)

before = define()
tolerate_object_mounts()
tolerate_object_mounts()
after, unannotated = define(), define(colour=1)
print(json.dumps({"before": before, "after": after, "unannotated": unannotated, "mounted": "save" in vars(object)}))
"""
    seen = run_python(code, user_env(tmp_path))
    assert seen == {
        "before": "Attribute 'save' is missing its type annotation",
        "after": "ok",
        "unannotated": "Attribute 'colour' is missing its type annotation",
        "mounted": True,
    }
