"""FastAPI application factory: the page, the JSON API and permalinks for one served model."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.staticfiles import StaticFiles

from future_lens import __version__
from future_lens.server.config import Settings, get_limits
from future_lens.lens.grid import SCHEMA
from future_lens.paths import packaged_required, shipped_reports, user_reports
from future_lens.server.retention import RetentionJanitor, retention_policy
from future_lens.service import LensService
from future_lens.server.store import GridStore, PostgresGridStore, SQLiteGridStore
from future_lens.server.web import api, cells, compare, docs, pages
from future_lens.server.web.bodylimit import install_body_limit
from future_lens.server.web.errors import install_error_handlers
from future_lens.server.web.keeper import GridKeeper
from future_lens.server.web.ratelimit import TokenBuckets
from future_lens.server.web.render import asset_version, template_environment
from future_lens.server.worker import InferenceWorker

DESCRIPTION = f"""
What each hidden state of a language model anticipates: for every (layer, token) of a text, the next N tokens
decoded from that single hidden state (Future Lens, Pal et al., CoNLL 2023), or the logit lens / a fixed prompt.

`POST /lens` computes a grid (schema `{SCHEMA}`, see docs/grid-format.md) and stores it under a
permalink; identical requests are served from the store. Invalid requests get HTTP 422 with a JSON body whose
`field` names the problem.
"""


def reports_root(settings: Settings, model_id: str) -> Path:
    """Where /about reads the served model's report: configured, else the user's own reports when they hold one for
    this model (`future-lens eval` writes there), else the reports shipped in the package."""
    if settings.reports_dir is not None:
        return settings.reports_dir
    own = user_reports()
    return own if (own / model_id / "eval.json").is_file() else shipped_reports()


def open_store(settings: Settings) -> GridStore:
    """PostgreSQL when `db_url` is set (replicas share it), else the SQLite file at `db_path`."""
    return PostgresGridStore(settings.db_url) if settings.db_url else SQLiteGridStore(settings.db_path)


def create_app(
    settings: Settings | None = None, service: LensService | None = None, store: GridStore | None = None
) -> FastAPI:
    """An app serving one model; pass `service` to reuse an already loaded model, `store` to override `open_store`."""
    settings = settings or Settings()
    service = service or LensService.load(settings.model, settings.device, settings.dtype, settings.prompt_dir)
    store = store or open_store(settings)
    worker = InferenceWorker(settings.max_queue, settings.request_timeout_s, max_batch_cost=settings.merge_max_cells)
    secret = settings.secret.get_secret_value().encode() if settings.secret else None
    keeper = GridKeeper(service, store, worker, secret)
    janitor = RetentionJanitor(store, retention_policy(settings), settings.retention_interval_s)
    static_dir = packaged_required("server", "static")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        janitor.start()
        yield
        janitor.stop()
        keeper.worker.stop()
        store.close()

    app = FastAPI(
        title="Future Lens",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # /docs is served from vendored Swagger UI files (future_lens/server/web/docs.py), never a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.service = service
    app.state.store = store
    app.state.keeper = keeper
    app.state.janitor = janitor
    app.state.templates = template_environment(packaged_required("server", "templates"))
    app.state.reports_dir = reports_root(settings, service.model.id)
    app.state.asset_version = asset_version(static_dir)

    install_error_handlers(app)
    install_body_limit(app, get_limits().max_body_bytes)
    app.state.rate_limit = (  # read by every route that spends model time (future_lens/server/web/ratelimit.py)
        None
        if settings.rate_limit_per_minute is None
        else TokenBuckets(settings.rate_limit_per_minute, settings.rate_limit_burst)
    )
    app.include_router(api.router)
    app.include_router(cells.router)
    app.include_router(compare.router)
    app.include_router(pages.router)
    app.include_router(docs.router)
    app.mount("/static", StaticFiles(directory=static_dir), name="static")

    @app.middleware("http")
    async def no_sniffing(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    return app
