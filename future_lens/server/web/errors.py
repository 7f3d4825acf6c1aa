"""Error responses: every rejected request gets a JSON body naming the field; nothing ever shows a traceback."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from future_lens.server.store import StoreError
from future_lens.server.web.keeper import ClientGoneError, StaleGridError
from future_lens.server.web.ratelimit import RateLimitedError
from future_lens.server.worker import DeadlineExceededError, QueueFullError, WorkerStoppedError
from future_lens.service import InvalidRequestError

log = logging.getLogger("future_lens.web")
LOCATION_PREFIXES = {"body", "query", "path", "form", "header", "cookie"}
#: Error bodies stay small whatever the request held: a field name (it may be a hostile JSON key) and a message are
#: cut to these many characters (with `…`).
MAX_FIELD_CHARS = 80
MAX_MESSAGE_CHARS = 500


class ErrorBody(BaseModel):
    """The body of every 4xx/5xx answer of the JSON API."""

    detail: str = Field(description="one line for a person: `field: message`")
    field: str | None = Field(description="the request field at fault (`body` when the body itself is malformed)")
    message: str = Field(description="what is wrong and, for limits, the limit")


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, the last one `…` when it was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_response(status: int, field: str | None, message: str) -> JSONResponse:
    """A JSON error in the one shape the API uses; `field` and `message` are cut so the body is always small."""
    field = None if field is None else clip(field, MAX_FIELD_CHARS)
    message = clip(message, MAX_MESSAGE_CHARS)
    detail = f"{field}: {message}" if field else message
    return JSONResponse(ErrorBody(detail=detail, field=field, message=message).model_dump(), status_code=status)


def field_from_location(location: Sequence[object]) -> str:
    """pydantic's error location → a field name: `("body", "n_future")` → `n_future`; positions → `body`."""
    parts = [str(part) for part in location if not isinstance(part, int)]
    if parts and parts[0] in LOCATION_PREFIXES:
        parts = parts[1:] or [parts[0]]
    return ".".join(parts) or "body"


def known_fields(model: object, location: Sequence[object]) -> list[str] | None:
    """The field names of the pydantic model an error at `location` lies in (`model` is the route's body model,
    `location` the error's `loc` after `body`), or None when that is not a model."""
    for part in location[:-1]:
        fields = getattr(model, "model_fields", None) if isinstance(model, type) else None
        if not isinstance(part, str) or not fields or part not in fields:
            return None
        model = fields[part].annotation
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return None
    return list(model.model_fields)


def first_validation_error(errors: Sequence[dict], body_model: object = None) -> tuple[str, str]:
    """(field, message) of the first pydantic error, worded like `future_lens.service.parse_request`; an unknown JSON
    field is named, with the fields there are (`body_model`: the route's body model, if any)."""
    if not errors:
        return "body", "invalid request"
    first = errors[0]
    location = tuple(first.get("loc", ()))
    if first.get("type") == "extra_forbidden" and location and isinstance(location[-1], str):
        names = known_fields(body_model, location[1:]) if location[0] == "body" else None
        return clip(location[-1], MAX_FIELD_CHARS), "unknown field" + (
            f"; the fields are {', '.join(names)}" if names else ""
        )
    return field_from_location(location), str(first.get("msg", "invalid value")).removeprefix("Value error, ")


def body_model_of(request: Request) -> object:
    """The pydantic model of the matched route's JSON body, or None (FastAPI keeps it on `route.body_field`)."""
    field = getattr(request.scope.get("route"), "body_field", None)
    return getattr(getattr(field, "field_info", None), "annotation", None)


def is_undecodable_body(error: StarletteHTTPException) -> bool:
    """FastAPI's 400 for a JSON body whose bytes are not UTF-8 (it wraps the decode error): a malformed body."""
    return error.status_code == 400 and isinstance(error.__cause__, UnicodeDecodeError)


def install_error_handlers(app: FastAPI) -> None:
    """422 for invalid requests, 503 (+ Retry-After) when busy or the store is down, 504 past the deadline, a bare
    500 otherwise."""

    @app.exception_handler(InvalidRequestError)
    async def invalid_request(_: Request, error: InvalidRequestError) -> JSONResponse:
        return error_response(422, error.field, error.message)

    @app.exception_handler(RateLimitedError)
    async def rate_limited(_: Request, error: RateLimitedError) -> JSONResponse:
        response = error_response(429, "client", str(error))
        response.headers["Retry-After"] = str(error.retry_after_s)
        return response

    @app.exception_handler(QueueFullError)
    async def busy(_: Request, error: QueueFullError) -> JSONResponse:
        response = error_response(503, None, str(error))
        response.headers["Retry-After"] = str(error.retry_after_s)
        return response

    @app.exception_handler(WorkerStoppedError)
    async def dropped(_: Request, error: WorkerStoppedError) -> JSONResponse:
        response = error_response(503, None, str(error))
        response.headers["Retry-After"] = "1"
        return response

    @app.exception_handler(DeadlineExceededError)
    async def too_slow(_: Request, error: DeadlineExceededError) -> JSONResponse:
        return error_response(504, None, f"the grid took too long to compute ({error}); try fewer layers or tokens")

    @app.exception_handler(StoreError)
    async def store_unavailable(request: Request, error: StoreError) -> JSONResponse:
        log.error("permalink store failed on %s %s: %s", request.method, request.url.path, error)
        response = error_response(503, None, "the permalink database is unavailable; try again shortly")
        response.headers["Retry-After"] = "5"
        return response

    @app.exception_handler(StaleGridError)
    async def stale_grid(_: Request, error: StaleGridError) -> JSONResponse:
        return error_response(409, "id", str(error))  # the lens that computed the stored grid is no longer served

    @app.exception_handler(ClientGoneError)
    async def client_gone(_: Request, error: ClientGoneError) -> JSONResponse:
        return error_response(499, None, str(error))  # nobody reads it: the client has left

    @app.exception_handler(RequestValidationError)
    async def invalid_shape(request: Request, error: RequestValidationError) -> JSONResponse:
        field, message = first_validation_error(error.errors(), body_model_of(request))
        return error_response(422, field, message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        if is_undecodable_body(error):
            return error_response(422, "body", "the body is not valid JSON: it is not UTF-8 text")
        response = error_response(error.status_code, None, str(error.detail))
        response.headers.update(error.headers or {})
        return response

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, None, "internal error: the request failed on the server; it was logged")
