"""`/docs` works offline: only local assets (vendored Swagger UI), no inline script, the page CSP, no ReDoc."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from future_lens.server.config import Settings
from future_lens.server.web.app import create_app
from future_lens.service import LensService


@pytest.fixture(scope="module")
def client(tiny_llama, tmp_path_factory) -> TestClient:
    return TestClient(
        create_app(Settings(db_path=tmp_path_factory.mktemp("db") / "g.sqlite3"), LensService(tiny_llama))
    )


def test_docs_page_uses_only_local_assets_and_no_inline_script(client):
    page = client.get("/docs")
    assert page.status_code == 200
    html = page.text
    urls = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert urls, html
    assert all(url.startswith("/") and not url.startswith("//") for url in urls), urls
    assert "://" not in html
    scripts = re.findall(r"<script([^>]*)>", html)
    assert len(scripts) == 2 and all('src="/static/' in attributes for attributes in scripts), scripts
    assert 'data-openapi-url="/openapi.json"' in html
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp


@pytest.mark.parametrize(
    ("path", "marker"),
    [
        ("/static/vendor/swagger-ui/swagger-ui-bundle.js", "SwaggerUIBundle"),
        ("/static/vendor/swagger-ui/swagger-ui.css", ".swagger-ui"),
        ("/static/vendor/swagger-ui/LICENSE", "Apache License"),
        ("/static/docs.js", "SwaggerUIBundle("),
    ],
)
def test_swagger_ui_files_are_served_locally(client, path, marker):
    response = client.get(path)
    assert response.status_code == 200
    assert marker in response.text


def test_redoc_is_off_and_the_schema_is_still_served(client):
    assert client.get("/redoc").status_code == 404
    schema = client.get("/openapi.json").json()
    assert "/lens" in schema["paths"]
    assert "/docs" not in schema["paths"]
