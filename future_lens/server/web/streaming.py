"""Streamed grids: rows as they are computed, for the JSON API (NDJSON) and the page (Server-Sent Events).

A streamed request runs on the same inference worker, under the same permalink id, as a plain one (so identical
requests still share one computation). Its job computes the grid a few rows at a time (`PlannedGrid.stream`: the middle
row first), publishing the grid's frame and each row to a `RowFeed` that every streaming waiter of the id
reads. After every forward of the model the job asks the worker whether anybody still waits
(`InferenceWorker.abandoned`); when every client has gone (page closed, Cancel pressed, deadline passed) it stops,
which frees the worker for the next job at once. Only the finished grid is stored, as the plain path stores it: a
permalink never shows a partial grid.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator
from concurrent.futures import CancelledError
from dataclasses import dataclass

from future_lens.lens.grid import Grid, GridRow
from future_lens.server.store import grid_id, new_stored_grid
from future_lens.server.web.keeper import GridKeeper, KeptGrid, grid_document_json
from future_lens.server.worker import DeadlineExceededError, Ticket, WorkerStoppedError
from future_lens.service import GridRequest, PlannedGrid

log = logging.getLogger("future_lens.web")


class StreamCancelledError(RuntimeError):
    """Every client of a streamed grid left before it was complete; the work was stopped."""


@dataclass(frozen=True)
class StreamHead:
    """The grid's frame (tokens, layers, the model's own continuation; every row `[]`) before any row."""

    grid: Grid
    rows_total: int


@dataclass(frozen=True)
class StreamRow:
    """One computed row and how far the grid is."""

    row: GridRow
    rows_done: int
    rows_total: int


@dataclass(frozen=True)
class StreamDone:
    """The finished grid as stored (or found in the store)."""

    kept: KeptGrid


StreamEvent = StreamHead | StreamRow | StreamDone


class RowFeed:
    """What one streamed computation has published so far (append-only, thread-safe, any number of readers)."""

    def __init__(self) -> None:
        self._items: list[StreamHead | StreamRow] = []
        self._lock = threading.Lock()

    def publish(self, item: StreamHead | StreamRow) -> None:
        with self._lock:
            self._items.append(item)

    def since(self, cursor: int) -> list[StreamHead | StreamRow]:
        with self._lock:
            return self._items[cursor:]


class FeedHub:
    """The feeds of the streamed computations running now, by permalink id."""

    def __init__(self) -> None:
        self._feeds: dict[str, RowFeed] = {}
        self._lock = threading.Lock()

    def open(self, key: str) -> RowFeed:
        with self._lock:
            return self._feeds.setdefault(key, RowFeed())

    def get(self, key: str) -> RowFeed | None:
        with self._lock:
            return self._feeds.get(key)

    def close(self, key: str) -> None:
        with self._lock:
            self._feeds.pop(key, None)

    def discard(self, key: str, feed: RowFeed) -> None:
        """Forget `feed` if it is still the one under `key` (a finished computation's, kept for its readers)."""
        with self._lock:
            if self._feeds.get(key) is feed:
                del self._feeds[key]


_HUBS: weakref.WeakKeyDictionary[GridKeeper, FeedHub] = weakref.WeakKeyDictionary()
_HUBS_LOCK = threading.Lock()


def hub_of(keeper: GridKeeper) -> FeedHub:
    """The feed hub of a keeper (one per keeper, created on first use)."""
    with _HUBS_LOCK:
        return _HUBS.setdefault(keeper, FeedHub())


def compute_streamed(keeper: GridKeeper, key: str, planned: PlannedGrid) -> KeptGrid:
    """Runs on the worker thread: the grid wave by wave into the feed, stopping early (`StreamCancelledError`) once
    nobody waits; then stored exactly like a plain request's grid."""
    hub = hub_of(keeper)
    feed = hub.open(key)
    try:
        with keeper.store.computing(key):
            stored = keeper.store.get(key)
            if stored is not None:
                return KeptGrid.from_stored(stored, cached=True)
            stream = planned.stream()
            total = len(planned.layers)
            feed.publish(StreamHead(stream.head(), total))
            for row in stream.rows(stop=lambda: keeper.worker.abandoned(key)):
                feed.publish(StreamRow(row, stream.rows_done, total))
            if stream.rows_done < total:
                raise StreamCancelledError(f"stopped after {stream.rows_done} of {total} rows: nobody waits")
            grid = stream.grid()
            record = new_stored_grid(key, keeper.service.model.id, planned.canonical(), grid_document_json(grid, key))
            return KeptGrid.from_stored(keeper.store.put(record), cached=False)
    finally:
        hub.close(key)


@dataclass(frozen=True)
class StreamTicket:
    """A streamed grid being computed: its permalink id and the worker ticket."""

    key: str
    ticket: Ticket
    hub: FeedHub
    feed: RowFeed  # opened before the job is queued, so rows published before the first read are never lost


def start_stream(keeper: GridKeeper, request: GridRequest) -> KeptGrid | StreamTicket:
    """The stored grid, or a ticket for its streamed computation. Raises `InvalidRequestError` and `QueueFullError`
    before anything is streamed (so they are answered as plain 422 / 503)."""
    planned = keeper.service.plan(request)
    key = grid_id(planned.canonical(), keeper.secret)
    kept = keeper.lookup(key)
    if kept is not None:
        return kept
    hub = hub_of(keeper)
    feed = hub.open(key)  # the running computation's feed if there is one; else the one it will publish to
    try:
        ticket = keeper.worker.submit(key, lambda: compute_streamed(keeper, key, planned))
    except BaseException:
        hub.discard(key, feed)
        raise
    return StreamTicket(key, ticket, hub, feed)


async def follow(
    started: KeptGrid | StreamTicket, timeout_s: float, poll_s: float = 0.05
) -> AsyncIterator[StreamEvent]:
    """The events of a started stream: frame, rows, then the finished grid (only that when it was stored already, or
    when a plain request for the same grid was computing it). Leaving the iteration early (client gone, Cancel)
    gives the ticket up, which stops the computation when nobody else waits for it."""
    if isinstance(started, KeptGrid):
        yield StreamDone(started)
        return
    feed, cursor = started.feed, 0
    deadline = time.monotonic() + timeout_s
    future = started.ticket.future
    try:
        while True:
            finished = future.done()  # read before draining, so rows published before the end are all sent
            for item in feed.since(cursor):
                cursor += 1
                yield item
            if finished:
                yield StreamDone(started.ticket.result(timeout=0))
                return
            if time.monotonic() > deadline:
                raise DeadlineExceededError(f"no result within {timeout_s:.0f} s")
            await asyncio.sleep(poll_s)
    finally:
        if not future.done():
            started.ticket.give_up()
        else:  # a plain request's computation of the same grid never opened (or closed) this feed
            started.hub.discard(started.key, feed)


NDJSON = "application/x-ndjson"


def wants_ndjson(accept: str | None) -> bool:
    """True when an `Accept` header asks for NDJSON (the streamed form of `POST /lens`)."""
    return NDJSON in (accept or "")


def _json_line(payload: object) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")) + "\n"


def ndjson_line(event: StreamEvent) -> str:
    """One line of the NDJSON stream: `head`, `row`, or the final document exactly as stored."""
    if isinstance(event, StreamHead):
        grid = event.grid.model_dump(mode="json", by_alias=True)
        return _json_line({"kind": "head", "rows_total": event.rows_total, "grid": grid})
    if isinstance(event, StreamRow):
        row = event.row
        cells = [cell.model_dump(mode="json") for cell in row.cells]
        line = {"kind": "row", "row": row.index, "layer": row.layer, "rows_done": event.rows_done}
        return _json_line({**line, "rows_total": event.rows_total, "cells": cells})
    return event.kept.document_json + "\n"


#: Longest cause quoted from an unexpected error in a stream's last line or event.
MAX_CAUSE_CHARS = 300


def stream_failure(error: BaseException) -> tuple[int, str]:
    """(HTTP-like status, message for people) of an error that ended a stream after it started: the deadline, the
    worker stopping, every client leaving, or any other error (named, and logged with its traceback)."""
    if isinstance(error, DeadlineExceededError):
        return 504, f"the grid took too long to compute ({error})"
    if isinstance(error, WorkerStoppedError | StreamCancelledError | CancelledError):
        return 503, "the grid could not be computed; retry"
    log.error("a streamed grid failed", exc_info=error)
    cause = f"{type(error).__name__}: {error}"
    if len(cause) > MAX_CAUSE_CHARS:
        cause = cause[:MAX_CAUSE_CHARS] + "…"
    return 500, f"the grid could not be computed ({cause}); nothing was stored"


def error_line(error: BaseException) -> str:
    """The last line when a stream fails after it started (its HTTP status was already sent as 200)."""
    status, message = stream_failure(error)
    return _json_line({"kind": "error", "status": status, "detail": message, "field": None, "message": message})


async def ndjson_lines(started: KeptGrid | StreamTicket, timeout_s: float) -> AsyncIterator[str]:
    """The NDJSON body of a streamed `POST /lens`: it never ends without the final document or an error line."""
    try:
        async for event in follow(started, timeout_s):
            yield ndjson_line(event)
    except Exception as error:  # CancelledError included: a stream never ends silently
        yield error_line(error)
