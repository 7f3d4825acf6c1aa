"""`/docs`: Swagger UI for the JSON API, served from vendored files so it works offline and under the page CSP."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from future_lens.server.web.pages import render

router = APIRouter(include_in_schema=False)

SWAGGER_JS = "/static/vendor/swagger-ui/swagger-ui-bundle.js"
SWAGGER_CSS = "/static/vendor/swagger-ui/swagger-ui.css"
DOCS_INIT_JS = "/static/docs.js"


@router.get("/docs", response_class=HTMLResponse)
def api_docs(request: Request) -> HTMLResponse:
    """The interactive API reference; `static/docs.js` starts Swagger UI (no inline script)."""
    return render(
        request,
        "docs.html",
        openapi_url=request.app.openapi_url,
        swagger_js=SWAGGER_JS,
        swagger_css=SWAGGER_CSS,
        init_js=DOCS_INIT_JS,
    )
