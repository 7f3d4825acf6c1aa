"""Every mention of the grid schema's version comes from the one constant (`future_lens.lens.grid.SCHEMA`): the README,
docs, templates and code say the version the code writes; the OpenAPI description, /docs and /about show it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from future_lens.lens.grid import SCHEMA
from future_lens.server.config import Settings
from future_lens.server.web.api import GridDocument
from future_lens.server.web.app import DESCRIPTION, create_app
from future_lens.service import LensService

ROOT = Path(__file__).resolve().parents[1]
MENTION = re.compile(r"future-lens\.grid/\d+")
#: Lines that talk about older versions on purpose (a changelog heading, stored documents of an older version).
ABOUT_OLDER_VERSIONS = ("Changes from", "older")


def scanned_files() -> list[Path]:
    files = [ROOT / "README.md", *ROOT.glob("docs/**/*.md"), *ROOT.glob("future_lens/**/*.py")]
    files += [path for path in ROOT.glob("future_lens/**/templates/**/*") if path.is_file()]
    return sorted(files)


def stale_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of each line mentioning a schema other than SCHEMA, except the lines about older
    versions."""
    return [
        (number, line)
        for number, line in enumerate(text.splitlines(), start=1)
        if not any(context in line for context in ABOUT_OLDER_VERSIONS)
        and any(mention != SCHEMA for mention in MENTION.findall(line))
    ]


def test_the_scan_covers_the_places_that_mention_the_schema():
    names = {path.relative_to(ROOT).as_posix() for path in scanned_files()}
    assert {
        "README.md",
        "docs/grid-format.md",
        "future_lens/server/templates/about.html",
        "future_lens/server/web/app.py",
        "future_lens/lens/grid.py",
    } <= names


def test_every_mention_of_the_grid_schema_is_the_current_one():
    stale = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in scanned_files()
        for number, line in stale_lines(path.read_text(encoding="utf-8"))
    ]
    assert not stale, "hand-written schema versions other than " + SCHEMA + ":\n" + "\n".join(stale)


def test_the_readme_and_the_format_doc_name_the_current_schema():
    assert SCHEMA in (ROOT / "README.md").read_text()
    assert (ROOT / "docs/grid-format.md").read_text().splitlines()[0] == f"# Grid JSON format — `{SCHEMA}`"


def test_only_the_lines_about_older_versions_are_let_through():
    text = f"now `{SCHEMA}`\n## Changes from `future-lens.grid/1`\nstill `future-lens.grid/1` here\n"
    assert stale_lines(text) == [(3, "still `future-lens.grid/1` here")]


def test_the_code_formats_its_mentions_from_schema():
    assert SCHEMA in DESCRIPTION
    assert not [mention for mention in MENTION.findall(GridDocument.__doc__ or "") if mention != SCHEMA]


@pytest.fixture(scope="module")
def client(tiny_llama, tmp_path_factory) -> TestClient:
    db_path = tmp_path_factory.mktemp("db") / "grids.sqlite3"
    return TestClient(create_app(Settings(db_path=db_path), service=LensService(tiny_llama)))


def test_openapi_and_about_show_the_current_schema(client):
    openapi = client.get("/openapi.json")
    assert openapi.status_code == 200
    assert SCHEMA in openapi.json()["info"]["description"]
    assert not [mention for mention in MENTION.findall(openapi.text) if mention != SCHEMA]
    about = client.get("/about")
    assert about.status_code == 200
    assert f"<code>{SCHEMA}</code>" in about.text
    assert not [mention for mention in MENTION.findall(about.text) if mention != SCHEMA]
