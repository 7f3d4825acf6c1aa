"""Per-client rate limit for a public deployment: a token bucket per client address on the routes that compute.

Each client may start `burst` grids at once and `per_minute` more every minute; a request beyond that gets
429 with `Retry-After` (seconds until a token is back) in the API's JSON error shape. Off unless configured
(`FUTURE_LENS_RATE_LIMIT_PER_MINUTE`): the embedded single-user run never sees it. Behind a reverse proxy the
client address is the proxy's unless uvicorn runs with `--proxy-headers` and `--forwarded-allow-ips`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from app.web.errors import error_response

Endpoint = TypeVar("Endpoint", bound=Callable[..., object])


def spends_model_time(endpoint: Endpoint) -> Endpoint:
    """Mark a route's endpoint as one that may run the model (so the rate limit applies to it); put it under the
    route decorator. Lookups of stored grids and pages are never limited."""
    endpoint.spends_model_time = True  # type: ignore[attr-defined]
    return endpoint


def is_limited(scope: Scope) -> bool:
    """Whether the request goes to a route marked `spends_model_time`."""
    for route in scope["app"].router.routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return bool(getattr(getattr(route, "endpoint", None), "spends_model_time", False))
    return False

MAX_CLIENTS = 100_000  # buckets kept at most (full buckets are forgotten first)


@dataclass
class Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """Token buckets keyed by client; thread-safe, with an injectable clock for tests."""

    def __init__(self, per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic):
        if per_minute <= 0 or burst < 1:
            raise ValueError("rate limit: per_minute must be > 0 and burst >= 1")
        self.rate = per_minute / 60.0
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, Bucket] = {}
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """Take one token for `client`: 0 when admitted, else the seconds until one is available."""
        now = self.clock()
        with self._lock:
            bucket = self._buckets.get(client) or Bucket(float(self.burst), now)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            self._buckets[client] = bucket
            if len(self._buckets) > MAX_CLIENTS:
                self._forget_full(now)
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return 0.0
            return (1 - bucket.tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        """Drop clients whose buckets have refilled: they would start full anyway."""
        for client, bucket in list(self._buckets.items()):
            if bucket.tokens + (now - bucket.updated) * self.rate >= self.burst:
                del self._buckets[client]


class RateLimit:
    """ASGI middleware applying `TokenBuckets` to the routes marked `spends_model_time`, by the client's address."""

    def __init__(self, app: ASGIApp, buckets: TokenBuckets):
        self.app = app
        self.buckets = buckets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_limited(scope):
            client = (scope.get("client") or ("unknown", 0))[0]
            wait = self.buckets.take(client)
            if wait > 0:
                retry = max(1, math.ceil(wait))
                response = error_response(429, "client", f"too many grids from {client}; retry in {retry} s")
                response.headers["Retry-After"] = str(retry)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
