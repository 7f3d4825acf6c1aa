"""The public lens API (`future_lens.lens`): the README's example runs, nnsight stays contained, layering holds."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from future_lens.atomic import atomic_path, atomic_write_json
from future_lens.lens import FixedPromptLens, FutureLens, LogitLens, load_soft_prompts
from future_lens.lens.prompts import default_prompt_dir
from tests.conftest import words

ROOT = Path(__file__).resolve().parents[1]


def readme_library_example() -> str:
    """The Python block that follows the README's `readme-library-example` marker."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- readme-library-example[^>]*-->\s*```python\n(.*?)```", readme, re.S)
    assert match, "README.md lost its library example"
    return match.group(1)


@pytest.mark.embedded
def test_readme_library_example_runs(embedded_dir, capsys) -> None:
    exec(compile(readme_library_example(), "README.md", "exec"), {})  # our own README
    future_line, logit_line = capsys.readouterr().out.strip().split("\n")
    layer, tokens = future_line.split(" ", 1)
    assert layer == "6"  # layers "::3" -> 0, 3, 6, ...
    assert len(ast.literal_eval(tokens)) == 4
    assert logit_line.strip()  # the last layer's top token at the last position, through the logit lens


@pytest.mark.embedded
def test_future_lens_defaults_to_the_shipped_prompts(smollm2) -> None:
    shipped = load_soft_prompts(default_prompt_dir(smollm2.id), smollm2)
    by_default, by_folder = FutureLens(smollm2), FutureLens(smollm2, default_prompt_dir(smollm2.id))
    assert sorted(by_default.prompts.prompts) == sorted(shipped.prompts) == sorted(by_folder.prompts.prompts)
    assert by_default.identity([3]) == by_folder.identity([3]) == {"prompt_hashes": {"3": shipped.hash_of(3)}}


def test_grid_takes_layer_specs_and_caps_n_for_the_logit_lens(tiny_gpt2) -> None:
    grid = LogitLens(tiny_gpt2).grid(words(3), layers="1:", n_future=4, top_k=2)
    assert grid.layers == [1, 2] and grid.n_future == 1
    assert all(len(cell.tokens) == 1 and len(cell.topk) == 2 for row in grid.cells for cell in row)
    texts = [words(2, seed=5), words(4, seed=6)]
    together = FixedPromptLens(tiny_gpt2, words(3, seed=7)).grids(texts, layers=[0], n_future=2)
    assert [len(g.tokens) for g in together] == [2, 4]


def test_lens_identity_names_what_determines_the_cells(tiny_gpt2) -> None:
    assert LogitLens(tiny_gpt2).identity([0]) == {}
    assert FixedPromptLens(tiny_gpt2, "w5 w6").identity([0]) == {"prompt": "w5 w6"}


def test_importing_the_app_leaves_nnsight_as_configured_and_anyio_whole(tmp_path) -> None:
    """With nnsight's defaults `.save` stays mounted (the user's `x.save()` works), yet every anyio module still
    imports after it: our tracing module defines anyio's attribute sets before nnsight mounts (future_lens/lens/
    tracing.py). Nothing of ours sets PYMOUNT or NNSIGHT_CONFIG, or uses nnsight's privates (tests/test_side_effects.py
    covers the user's config, environment and traces)."""
    code = (
        "import importlib, pkgutil, future_lens.server.web.app, future_lens.lens.source, nnsight, anyio;"
        "assert 'save' in vars(object) and nnsight.CONFIG.APP.PYMOUNT, 'nnsight is not as its defaults say';"
        "names = [m.name for m in pkgutil.walk_packages(anyio.__path__, 'anyio.')"
        " if m.name not in ('anyio.pytest_plugin', 'anyio._backends._trio')];"
        "[importlib.import_module(name) for name in names]"
    )
    env = {name: value for name, value in os.environ.items() if not name.startswith(("NNSIGHT_", "NDIF_"))}
    env |= {"XDG_CONFIG_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}  # as a fresh shell has it, no user config
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    sources = "\n".join(path.read_text() for path in (ROOT / "future_lens").rglob("*.py"))
    assert "nnsight._c" not in sources
    assert not re.search(r"PYMOUNT\s*=[^=]", sources)
    assert not re.search(r"environ(\.setdefault\(|\[|\.update\()\s*[\"']NNSIGHT", sources)


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    return names | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}


def test_the_engine_imports_no_web_store_or_training_code() -> None:
    for path in (ROOT / "future_lens" / "lens").glob("*.py"):
        forbidden = {
            name
            for name in imported_modules(path)
            if name.startswith(("future_lens.server.web", "future_lens.server.store", "future_lens.training"))
        }
        assert not forbidden, f"{path.name} imports {forbidden}"


@pytest.mark.parametrize("command", ["train", "eval", "grid"])
def test_python_dash_m_cli_knows_every_command(command: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "future_lens.server.cli", command, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Usage" in done.stdout and "No such command" not in done.stdout + done.stderr


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path) -> None:
    target = tmp_path / "manifest.json"
    atomic_write_json(target, {"version": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as staging:
        staging.write_text('{"version": 2, "trunc')
        raise RuntimeError("crash while writing")
    assert target.read_text() == '{"version": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no staging file left behind
    with atomic_path(tmp_path / "plot.svg") as staging:
        assert staging.suffix == ".svg"  # writers that infer the format from the suffix still work
        staging.write_text("<svg/>")
    assert (tmp_path / "plot.svg").read_text() == "<svg/>"


def test_permalink_id_includes_the_lens_semantics_version(tiny_gpt2, monkeypatch) -> None:
    """A fix that changes what lenses compute bumps `LENS_SEMANTICS`: old ids then never serve the new grids."""
    from future_lens import service
    from future_lens.server.store import grid_id

    planned = service.LensService(tiny_gpt2).plan(service.parse_request(text=words(2), method="logit"))
    before = grid_id(planned.canonical())
    monkeypatch.setattr(service, "LENS_SEMANTICS", service.LENS_SEMANTICS + 1)
    assert grid_id(planned.canonical()) != before


def test_the_package_exports_every_lens_and_load_model() -> None:
    """`from future_lens import ...` gives the same objects as their modules (loaded on first use)."""
    import future_lens
    from future_lens import FixedPromptLens as Fixed
    from future_lens import IdentityPatchscope, JacobianLens, TunedLens, load_model
    from future_lens.lens import lenses, linear, models

    assert load_model is models.load_model and Fixed is lenses.FixedPromptLens
    assert IdentityPatchscope is lenses.IdentityPatchscope
    assert TunedLens is linear.TunedLens and JacobianLens is linear.JacobianLens
    assert set(future_lens.__all__) <= set(dir(future_lens)) | {"__version__"}
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        future_lens.nope  # noqa: B018
