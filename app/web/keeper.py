"""Grid keeping: validate a request, look it up in the permalink store, compute it only when it is new.

The permalink id hashes everything that determines a grid: the canonical request (resolved layers, effective N,
the fixed prompt), the model's id, weights fingerprint and dtype, and the hashes of the soft prompts used. So an
identical request is served from the store, and a retrained prompt gives a new id instead of changing old links.

All model work runs on one `InferenceWorker` (app/worker.py): a bounded queue in front of a single thread, so the
model never runs two requests at once, identical concurrent requests are computed once (single flight keyed by the
permalink id), a full queue is refused at once and work nobody waits for any more is skipped.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Request

from app.lens import Grid
from app.service import GridRequest, LensService, PlannedGrid
from app.store import GridStore, StoredGrid, grid_id, new_stored_grid
from app.worker import DeadlineExceededError, InferenceWorker, Ticket


class ClientGoneError(RuntimeError):
    """The client disconnected while its grid was waiting to be computed."""


@dataclass(frozen=True)
class KeptGrid:
    """A grid as served: its id, the exact JSON document, and whether it came from the store."""

    id: str
    document_json: str
    request: dict[str, object]
    cached: bool

    @property
    def grid(self) -> Grid:
        """The document parsed back into the typed grid (extra keys `id`, `permalink` are ignored)."""
        return Grid.model_validate_json(self.document_json)

    @classmethod
    def from_stored(cls, stored: StoredGrid, cached: bool) -> KeptGrid:
        return cls(stored.id, stored.document_json, json.loads(stored.request_json), cached)


def permalink_path(grid_id: str) -> str:
    """The page of a stored grid (relative, so stored documents do not depend on the host name)."""
    return f"/g/{grid_id}"


def _awaitable_done(ticket: Ticket) -> asyncio.Future[None]:
    """An asyncio future set when the ticket's job ends; cancelling it never cancels the shared job."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def notify(_: object) -> None:
        loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

    ticket.future.add_done_callback(notify)
    return done


class GridKeeper:
    """Serves grids for one `LensService`, storing each new grid in `store` under its permalink id."""

    def __init__(self, service: LensService, store: GridStore, worker: InferenceWorker | None = None):
        self.service = service
        self.store = store
        self.worker = worker or InferenceWorker()

    def _compute_and_store(self, key: str, planned: PlannedGrid) -> KeptGrid:
        """Runs on the worker thread: compute the grid unless it was stored meanwhile (by any process sharing the
        store: `computing` makes them take turns per id), then store it."""
        with self.store.computing(key):
            stored = self.store.get(key)
            if stored is not None:
                return KeptGrid.from_stored(stored, cached=True)
            grid: Grid = self.service.compute(planned)
            document = {**grid.model_dump(mode="json", by_alias=True), "id": key, "permalink": permalink_path(key)}
            document_json = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
            stored = self.store.put(new_stored_grid(key, self.service.model.id, planned.canonical(), document_json))
            return KeptGrid.from_stored(stored, cached=False)

    def lookup_or_submit(self, request: GridRequest) -> KeptGrid | Ticket:
        """The stored grid if there is one, else a ticket for its computation on the worker.

        Raises `InvalidRequestError` before anything is queued or stored when the request is invalid, and
        `QueueFullError` when too many grids are already waiting.
        """
        planned = self.service.plan(request)
        key = grid_id(planned.canonical())
        stored = self.store.get(key)
        if stored is not None:
            return KeptGrid.from_stored(stored, cached=True)
        return self.worker.submit(key, lambda: self._compute_and_store(key, planned))

    def get_or_compute(self, request: GridRequest) -> KeptGrid:
        """Blocking form of `lookup_or_submit`: wait (up to the worker's deadline) for the grid."""
        outcome = self.lookup_or_submit(request)
        return outcome if isinstance(outcome, KeptGrid) else outcome.result(self.worker.default_timeout_s)

    async def get_or_compute_async(
        self, request: GridRequest, disconnected: Callable[[], Awaitable[bool]], poll_s: float = 0.25
    ) -> KeptGrid:
        """Await the grid without holding a thread; give the work up if the client leaves or the deadline passes."""
        outcome = await asyncio.to_thread(self.lookup_or_submit, request)
        if isinstance(outcome, KeptGrid):
            return outcome
        waiting = _awaitable_done(outcome)
        deadline = time.monotonic() + self.worker.default_timeout_s
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=poll_s)
            if done:
                return outcome.result(timeout=0)
            if await disconnected():
                outcome.give_up()
                raise ClientGoneError("the client disconnected before its grid was computed")
            if time.monotonic() > deadline:
                outcome.give_up()
                raise DeadlineExceededError(f"no result within {self.worker.default_timeout_s:.0f} s")

    def lookup(self, grid_id: str) -> KeptGrid | None:
        """A stored grid by id (no computation)."""
        stored = self.store.get(grid_id)
        return KeptGrid.from_stored(stored, cached=True) if stored else None


def keeper_of(request: Request) -> GridKeeper:
    """The app's grid keeper (set up by `create_app`)."""
    return request.app.state.keeper
