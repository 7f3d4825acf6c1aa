"""`future-lens serve` refuses to start with one line naming the problem (exit code 2), never a traceback, and writes
no database file when it does not start: a bad setting, a missing packaged asset, a model that is not there, a
database path that cannot be written. The default database lives in the user's data folder, not the working one."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from future_lens.paths import MissingAssetError
from future_lens.server.cli import cli
from future_lens.server.config import Settings
from future_lens.server.web import app as app_module
from future_lens.service import LensService

runner = CliRunner()


@pytest.fixture
def user_dirs(tmp_path, monkeypatch):
    """The user's data folder and a working folder, both empty; serving itself is never reached."""
    data, work = tmp_path / "data", tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("FUTURE_LENS_DATA", str(data))
    monkeypatch.chdir(work)
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: pytest.fail("the server started serving"))
    return {"data": data, "work": work}


@pytest.fixture
def tiny_service(tiny_llama, monkeypatch):
    """`LensService.load` answers with the tiny model at once (the model is not what these tests are about)."""
    monkeypatch.setattr(LensService, "load", classmethod(lambda cls, *args, **kwargs: cls(tiny_llama)))


def refused(args: list[str], *fragments: str) -> str:
    result = runner.invoke(cli, ["serve", *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def no_files(*folders) -> bool:
    return all(not folder.exists() or not any(folder.rglob("*")) for folder in folders)


def test_a_bad_environment_setting_is_named(user_dirs, monkeypatch) -> None:
    monkeypatch.setenv("FUTURE_LENS_PORT", "eighty")
    refused([], "setting port", "FUTURE_LENS_PORT")
    assert no_files(user_dirs["data"], user_dirs["work"])


def test_a_bad_limit_is_named(user_dirs, monkeypatch) -> None:
    monkeypatch.setenv("FUTURE_LENS_MAX_TEXT_TOKENS", "0")
    refused([], "max_text_tokens")
    assert no_files(user_dirs["data"], user_dirs["work"])


def test_a_missing_model_is_named_and_no_database_is_written(user_dirs, tmp_path) -> None:
    refused(["--model", str(tmp_path / "no-such-model")], "model", "no-such-model")
    assert no_files(user_dirs["data"], user_dirs["work"])


def test_a_missing_packaged_asset_is_named(user_dirs, tiny_service, monkeypatch) -> None:
    def missing(*parts: str):
        raise MissingAssetError(f"the package's asset {'/'.join(parts)} is missing at /site/x: reinstall future-lens")

    monkeypatch.setattr(app_module, "packaged_required", missing)
    refused([], "server/static", "reinstall")
    assert no_files(user_dirs["data"], user_dirs["work"])


def test_an_unwritable_database_path_is_named(user_dirs, tiny_service, tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    line = refused(["--db", str(blocker / "grids.sqlite3")], "permalink database", str(blocker / "grids.sqlite3"))
    assert "Traceback" not in line and blocker.read_text() == "not a folder"
    assert no_files(user_dirs["data"], user_dirs["work"])


def test_the_default_database_is_in_the_users_data_folder(user_dirs) -> None:
    assert Settings().sqlite_path() == user_dirs["data"] / "future-lens.sqlite3"


def test_an_app_starts_and_opens_its_database_last(user_dirs, tiny_service, monkeypatch) -> None:
    """The database is the last thing opened: a start that gets that far creates it in the data folder only."""
    calls = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: calls.append(kwargs))
    result = runner.invoke(cli, ["serve", "--port", "8123"])
    assert result.exit_code == 0, result.output
    assert calls == [{"host": "127.0.0.1", "port": 8123}]
    assert (user_dirs["data"] / "future-lens.sqlite3").is_file()
    assert no_files(user_dirs["work"])
