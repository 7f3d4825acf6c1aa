"""The package as a user installs it: sdist and wheel built from the checkout, the wheel installed with the `server`
extra into a fresh venv outside the checkout, next to a numpy other than the lock's, and used from another folder.

Checks: the wheel holds `future_lens` only and every shipped artifact; installing keeps the user's numpy and torch;
`pip check` is clean; `future-lens grid --method future` runs with the packaged prompts; `future-lens serve` answers
the page, its stylesheet, /about and `POST /lens` (learned prompts and the logit lens); nothing is written to the
working directory. A dry run shows the ranges accept a torch other than the lock's without replacing it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
USER_NUMPY = "2.3.5"  # a numpy inside our range that is not the lock's (constraints.txt)
STUB_TORCH = "2.14.1"  # a torch inside our range that is not the lock's: only its metadata, for a resolver dry run
INSTALL_TIMEOUT_S = 900

pytestmark = pytest.mark.wheel


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = INSTALL_TIMEOUT_S) -> str:
    """Run a command, failing the test with its output when it fails."""
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def user_env(home: Path) -> dict[str, str]:
    """The environment of a user outside the checkout: no PYTHONPATH, offline, the shared model cache."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", FUTURE_LENS_DATA=str(home / "data"))
    return env


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path]:
    """sdist, then the wheel built from that sdist (so the sdist is complete too)."""
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], cwd=ROOT)
    (wheel,) = out.glob("future_lens-*.whl")
    (sdist,) = out.glob("future_lens-*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def shipped_files() -> list[str]:
    """The tracked files that must travel in the wheel: artifacts, report, templates, static files, catalog."""
    listed = run(
        ["git", "ls-files", "future_lens/checkpoints", "future_lens/server/templates", "future_lens/server/static"],
        cwd=ROOT,
    ).split()
    reports = [str(path.relative_to(ROOT)) for path in (ROOT / "future_lens" / "reports").glob("*/*") if path.is_file()]
    return [*listed, *reports, "future_lens/catalog.toml", "future_lens/py.typed"]


def test_the_wheel_holds_future_lens_only_and_every_shipped_file(dist) -> None:
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        infos = {info.filename: info for info in wheel.infolist()}
    top_level = {name.split("/")[0] for name in infos if ".dist-info/" not in name}
    assert top_level == {"future_lens"}
    missing = [name for name in shipped_files() if name not in infos]
    assert not missing, f"the wheel lacks {missing}"
    for name in ("lens.css", "cells.css", "lens.js"):  # the export's links to the page's files become copies
        page = infos[f"future_lens/export/page/{name}"]
        assert page.file_size == (ROOT / "future_lens" / "server" / "static" / name).stat().st_size
    assert not [name for name in infos if name.startswith(("app/", "tests/", "benchmarks/"))]


@pytest.fixture(scope="module")
def venv(dist, tmp_path_factory) -> Path:
    """A fresh venv outside the checkout: torch as this machine installs it, the user's own numpy, then the wheel."""
    home = tmp_path_factory.mktemp("user")
    root = home / "venv"
    run([sys.executable, "-m", "venv", str(root)], cwd=home)
    python = str(root / "bin" / "python")
    run([python, "-m", "pip", "install", "--quiet", "torch==2.13.0", f"numpy=={USER_NUMPY}"], cwd=home)
    run([python, "-m", "pip", "install", "--quiet", f"{dist['wheel']}[server]"], cwd=home)
    return root


def installed_version(venv: Path, distribution: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({distribution!r}))"
    return run([str(venv / "bin" / "python"), "-c", code], cwd=venv).strip()


def test_installing_keeps_the_users_numpy_and_torch(venv) -> None:
    assert installed_version(venv, "numpy") == USER_NUMPY
    assert installed_version(venv, "torch").startswith("2.13.0")


def test_pip_check_is_clean(venv) -> None:
    assert "No broken requirements found" in run([str(venv / "bin" / "python"), "-m", "pip", "check"], cwd=venv)


def test_the_library_imports_from_another_folder(venv, tmp_path) -> None:
    (tmp_path / "app.py").write_text("raise SystemExit('the user app.py must not be imported')\n")
    code = "import future_lens; from future_lens import FutureLens, load_model; print(future_lens.__file__)"
    printed = run([str(venv / "bin" / "python"), "-c", code], cwd=tmp_path, env=user_env(tmp_path)).strip()
    assert printed.startswith(str(venv)) and "site-packages" in printed


def test_the_cli_reads_the_packaged_prompts_from_another_folder(venv, tmp_path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    printed = run(
        [str(venv / "bin" / "future-lens"), "grid", "Marty McFly from", "--method", "future", "--json"],
        cwd=work,
        env=user_env(tmp_path),
    )
    grid = json.loads(printed)
    assert grid["method"] == "future" and len(grid["cells"]) == 30 and grid["cells"][0][0]["tokens"]
    assert list(work.iterdir()) == []  # nothing written to the working directory


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fetch(url: str, body: dict | None = None) -> tuple[int, bytes, str]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(request, timeout=300) as answer:
        return answer.status, answer.read(), answer.headers.get("Content-Type", "")


def test_serve_answers_the_page_its_assets_about_and_the_api(venv, tmp_path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    port = free_port()
    server = subprocess.Popen(
        [str(venv / "bin" / "future-lens"), "serve", "--port", str(port)],
        cwd=work,
        env=user_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if server.poll() is not None:
                pytest.fail(f"serve exited {server.returncode}:\n{server.stdout.read()}")
            try:
                fetch(base + "/healthz")
                break
            except OSError:
                time.sleep(0.5)
        status, page, _ = fetch(base + "/")
        assert status == 200 and b"Future Lens" in page
        stylesheet = page.decode().split('href="/static/lens.css', 1)[1].split('"', 1)[0]
        status, css, media = fetch(f"{base}/static/lens.css{stylesheet}")
        assert status == 200 and media.startswith("text/css") and len(css) > 1000
        status, about, _ = fetch(base + "/about")
        assert status == 200 and b"precision" in about.lower()
        for method in ("future", "logit"):
            status, body, _ = fetch(base + "/lens", {"text": "Marty McFly from", "method": method, "layers": "::10"})
            grid = json.loads(body)
            assert status == 200 and grid["method"] == method and grid["cells"][0][0]["tokens"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert list(work.iterdir()) == []  # the database went to the user's data directory
    assert (tmp_path / "data" / "future-lens.sqlite3").is_file()


def test_the_ranges_accept_another_torch_without_replacing_it(dist, tmp_path) -> None:
    """torch other than 2.13.0 is a multi-GB download here, so a venv holds only its metadata (a stub dist-info of
    torch 2.14.1): pip's resolver, asked to install the wheel, plans no torch at all."""
    root = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(root)], cwd=tmp_path)
    python = str(root / "bin" / "python")
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path).strip())
    stub = site / f"torch-{STUB_TORCH}.dist-info"
    stub.mkdir()
    (stub / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {STUB_TORCH}\n")
    (stub / "INSTALLER").write_text("pip\n")
    (stub / "RECORD").write_text("")
    report = tmp_path / "report.json"
    run(
        [python, "-m", "pip", "install", "--quiet", "--dry-run", "--report", str(report), str(dist["wheel"])],
        cwd=tmp_path,
    )
    planned = {
        item["metadata"]["name"].lower(): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    assert "future-lens" in planned and "torch" not in planned
