"""Request body size limit: a pure ASGI middleware answering 413 before an oversized body is read or buffered.

A declared `Content-Length` over the limit is refused before the app runs; a body without one (chunked) is counted
as it streams in and refused as soon as it passes the limit, so no more than the limit is ever held in memory.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from future_lens.server.web.errors import error_response

BODY_FIELD = "body"


def too_large_message(limit: int, size: int | None = None) -> str:
    """What the client is told: the limit, and the body's size when it was declared."""
    declared = f" ({size} bytes)" if size is not None else ""
    return f"request body is larger than the limit of {limit} bytes{declared}"


class BodyTooLargeError(HTTPException):
    """Raised from `receive` once a streamed body passes the limit (an HTTPException, so FastAPI passes it on)."""

    def __init__(self, limit: int, size: int | None = None):
        super().__init__(status_code=413, detail=too_large_message(limit, size))
        self.limit = limit
        self.size = size


async def send_too_large(send: Send, scope: Scope, receive: Receive, limit: int, size: int | None = None) -> None:
    """Answer 413 in the API's JSON error shape, naming the limit."""
    await error_response(413, BODY_FIELD, too_large_message(limit, size))(scope, receive, send)


def declared_length(scope: Scope) -> int | None:
    """The request's `Content-Length` as a number, or None when absent or not a number (the server rejects those)."""
    value = Headers(scope=scope).get("content-length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


class BodySizeLimitMiddleware:
    """Refuse request bodies larger than `max_bytes` with 413 `{"detail", "field": "body", "message"}`."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        size = declared_length(scope)
        if size is not None and size > self.max_bytes:
            await send_too_large(send, scope, receive, self.max_bytes, size)
            return
        received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLargeError(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLargeError as error:  # only when the app's own handlers did not answer it already
            if response_started:
                raise
            await send_too_large(send, scope, receive, error.limit, error.size)


def install_body_limit(app: FastAPI, max_bytes: int) -> None:
    """Add the middleware, and a handler so a body found too large while a route reads it gets the same 413."""

    async def body_too_large(_: Request, error: Exception) -> JSONResponse:
        limit = error.limit if isinstance(error, BodyTooLargeError) else max_bytes
        return error_response(413, BODY_FIELD, too_large_message(limit, getattr(error, "size", None)))

    app.add_exception_handler(BodyTooLargeError, body_too_large)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_bytes)
