"""FastAPI application factory: the page, the JSON API and permalinks for one served model."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.staticfiles import StaticFiles

from future_lens import __version__
from future_lens.lens.grid import SCHEMA
from future_lens.lens.models import ModelNotAvailableError
from future_lens.paths import MissingAssetError, packaged_required, shipped_reports, user_reports
from future_lens.server.config import Settings
from future_lens.server.nnsight_safety import tolerate_object_mounts
from future_lens.server.retention import RetentionJanitor, retention_policy
from future_lens.server.store import GridStore, SQLiteGridStore, StoreError
from future_lens.server.web import api, cells, compare, docs, pages
from future_lens.server.web.bodylimit import install_body_limit
from future_lens.server.web.errors import install_error_handlers
from future_lens.server.web.keeper import GridKeeper
from future_lens.server.web.ratelimit import TokenBuckets
from future_lens.server.web.render import asset_version, template_environment
from future_lens.server.worker import InferenceWorker
from future_lens.service import LensService

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


class StartupError(RuntimeError):
    """The server cannot start: one line naming the setting, asset, model or database at fault."""


def open_store(settings: Settings) -> GridStore:
    """PostgreSQL when `db_url` is set (replicas share it), else the SQLite file at `db_path`."""
    if settings.db_url:
        from future_lens.server.store import PostgresGridStore  # the `postgres` extra: imported only when used

        return PostgresGridStore(settings.db_url)
    return SQLiteGridStore(settings.sqlite_path())


def load_service(settings: Settings) -> LensService:
    """The served model and its lenses; a model that cannot be loaded is a `StartupError` naming it."""
    try:
        return LensService.load(settings.model, settings.device, settings.dtype, settings.prompt_dir, settings.limits)
    except (ModelNotAvailableError, ValueError, OSError) as error:
        raise StartupError(f"model {settings.model!r}: {error}") from None


def checked_store(settings: Settings) -> GridStore:
    """The permalink store, opened last (so a failed start leaves no database file); failures name the database."""
    where = "FUTURE_LENS_DB_URL" if settings.db_url else str(settings.sqlite_path())
    try:
        return open_store(settings)
    except (StoreError, OSError) as error:
        raise StartupError(f"permalink database {where}: {error}") from None


def create_app(
    settings: Settings | None = None, service: LensService | None = None, store: GridStore | None = None
) -> FastAPI:
    """An app serving one model; pass `service` to reuse an already loaded model, `store` to override `open_store`.

    Checks run cheapest first (the packaged assets, then the model, then the database): a `StartupError` says what
    is wrong before anything is written."""
    tolerate_object_mounts()  # anyio works even if nnsight mounted `.save` on every object (nnsight_safety.py)
    settings = settings or Settings()
    try:
        static_dir = packaged_required("server", "static")
        templates = template_environment(packaged_required("server", "templates"))
    except MissingAssetError as error:
        raise StartupError(str(error)) from None
    service = service or load_service(settings)
    store = store or checked_store(settings)
    worker = InferenceWorker(settings.max_queue, settings.request_timeout_s, max_batch_cost=settings.merge_max_cells)
    secret = settings.secret.get_secret_value().encode() if settings.secret else None
    keeper = GridKeeper(service, store, worker, secret)
    janitor = RetentionJanitor(store, retention_policy(settings), settings.retention_interval_s)

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
    app.state.templates = templates
    app.state.reports_dir = reports_root(settings, service.model.id)
    app.state.asset_version = asset_version(static_dir)

    install_error_handlers(app)
    install_body_limit(app, service.limits.max_body_bytes)
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
