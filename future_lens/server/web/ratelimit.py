"""Per-client rate limit for a public deployment: a token bucket per client address on the routes that compute
(every route with `dependencies=[SPENDS_MODEL_TIME]`).

Each client may start `burst` grids at once and `per_minute` more every minute; a request beyond that gets
429 with `Retry-After` (seconds until a token is back) in the API's JSON error shape. Off unless configured
(`FUTURE_LENS_RATE_LIMIT_PER_MINUTE`): the embedded single-user run never sees it. Behind a reverse proxy the
client address is the proxy's unless uvicorn runs with `--proxy-headers` and `--forwarded-allow-ips`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from fastapi import Depends, Request
from starlette.routing import BaseRoute

MAX_CLIENTS = 100_000  # buckets kept at most (full buckets are forgotten first)


class RateLimitedError(RuntimeError):
    """A client started more computations than its bucket allows; answered 429 with `Retry-After`."""

    def __init__(self, client: str, retry_after_s: int):
        super().__init__(f"too many grids from {client}; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


def limit_model_time(request: Request) -> None:
    """The dependency of every route that may run the model (`SPENDS_MODEL_TIME`): take a token from the client's
    bucket, or refuse (when the app has a rate limit, `app.state.rate_limit`)."""
    buckets: TokenBuckets | None = getattr(request.app.state, "rate_limit", None)
    if buckets is None:
        return
    client = request.client.host if request.client else "unknown"
    wait = buckets.take(client)
    if wait > 0:
        raise RateLimitedError(client, max(1, math.ceil(wait)))


#: `dependencies=[SPENDS_MODEL_TIME]` on a route that may run the model; lookups of stored grids and pages have none.
SPENDS_MODEL_TIME = Depends(limit_model_time)


def model_time_routes(routes: Iterable[BaseRoute]) -> set[str]:
    """`METHOD path` of every route (in included routers too) that depends on `limit_model_time`."""
    found: set[str] = set()
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            found |= model_time_routes(included.routes)
        elif any(getattr(d, "dependency", None) is limit_model_time for d in getattr(route, "dependencies", ())):
            found |= {f"{method} {route.path}" for method in getattr(route, "methods", ())}
    return found


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
