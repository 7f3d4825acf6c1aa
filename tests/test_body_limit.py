"""The body size middleware on its own (no model): what the app behind it sees, and what the client gets back."""

from __future__ import annotations

import asyncio
import json

from starlette.types import Message, Receive, Scope, Send

from future_lens.server.web.bodylimit import BodySizeLimitMiddleware

LIMIT = 100


class Recorder:
    """An ASGI app that reads the whole body chunk by chunk, recording what it got, then answers 200."""

    def __init__(self) -> None:
        self.called = False
        self.received = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.called = True
        more = True
        while more:
            message = await receive()
            self.received += len(message.get("body", b""))
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def run(app: Recorder, body_chunks: list[bytes], content_length: int | None) -> tuple[int, bytes, int]:
    """Send one POST through the middleware; return (status, response body, chunks the client handed over)."""
    headers = [(b"content-type", b"application/json")]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    scope: Scope = {"type": "http", "method": "POST", "path": "/lens", "headers": headers, "query_string": b""}
    pending = list(body_chunks)
    sent: list[Message] = []

    async def receive() -> Message:
        chunk = pending.pop(0) if pending else b""
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(BodySizeLimitMiddleware(app, max_bytes=LIMIT)(scope, receive, send))
    status = next(message["status"] for message in sent if message["type"] == "http.response.start")
    body = b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
    return status, body, len(body_chunks) - len(pending)


def assert_413(status: int, body: bytes) -> None:
    assert status == 413
    error = json.loads(body)
    assert error["field"] == "body"
    assert f"limit of {LIMIT} bytes" in error["message"]
    assert error["detail"] == f"body: {error['message']}"


def test_declared_length_over_the_limit_is_refused_before_the_app_runs():
    app = Recorder()
    status, body, handed_over = run(app, [b"x" * (LIMIT + 1)], content_length=LIMIT + 1)
    assert_413(status, body)
    assert f"({LIMIT + 1} bytes)" in json.loads(body)["message"]
    assert not app.called
    assert handed_over == 0  # not even read


def test_streamed_body_is_cut_off_once_it_passes_the_limit():
    app = Recorder()
    status, body, handed_over = run(app, [b"x" * 40] * 10, content_length=None)
    assert_413(status, body)
    assert app.called
    assert handed_over == 3  # 40 + 40 + 40 > 100: reading stops at the third chunk
    assert app.received <= LIMIT


def test_a_body_lying_about_its_length_is_still_counted():
    app = Recorder()
    status, body, _ = run(app, [b"x" * 60] * 3, content_length=10)
    assert_413(status, body)


def test_bodies_up_to_the_limit_pass_through_untouched():
    for chunks in ([b"x" * LIMIT], [b"x" * 50, b"x" * 50], [b""]):
        app = Recorder()
        status, body, _ = run(app, chunks, content_length=sum(map(len, chunks)))
        assert (status, body) == (200, b"ok")
        assert app.received == sum(map(len, chunks))


def test_non_http_scopes_pass_through():
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    async def nothing() -> Message:
        return {}

    async def ignore(_: Message) -> None:
        return None

    asyncio.run(BodySizeLimitMiddleware(app, max_bytes=LIMIT)({"type": "lifespan"}, nothing, ignore))
    assert seen == ["lifespan"]
