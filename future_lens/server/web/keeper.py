"""Grid keeping: validate a request, look it up in the permalink store, compute it only when it is new.

The permalink id is an HMAC, under the deployment's secret, of everything that determines a grid: the canonical
request (resolved layers, effective N, the fixed prompt), the model's id, weights fingerprint and dtype, and the
hashes of the soft prompts used. So an identical request is served from the store, a retrained prompt gives a new id
instead of changing old links, and without the secret nobody can tell whether a given text was submitted.

All model work runs on one `InferenceWorker` (server/worker.py): a bounded queue in front of a single thread, so the
model never runs two requests at once, identical concurrent requests are computed once (single flight keyed by the
permalink id), a full queue is refused at once and work nobody waits for any more is skipped. Waiting requests that
differ only in their text (`PlannedGrid.merge_group`) are computed together in one engine pass, up to the worker's
cap on cells (`merge_max_cells`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from fastapi import Request

from future_lens.lens import Grid
from future_lens.server.store import GridStore, StoredGrid, grid_id, new_stored_grid
from future_lens.server.worker import DeadlineExceededError, InferenceWorker, Merge, Ticket
from future_lens.service import GridRequest, LensService, PlannedGrid


class StaleGridError(RuntimeError):
    """The stored grid was computed by a lens (model, prompts) this server no longer has."""


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


def grid_document_json(grid: Grid, key: str) -> str:
    """The JSON document served and stored for `grid` under the permalink id `key`."""
    document = {**grid.model_dump(mode="json", by_alias=True), "id": key, "permalink": permalink_path(key)}
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


class GridKeeper:
    """Serves grids for one `LensService`, storing each new grid in `store` under its permalink id.

    `secret` keys the ids (HMAC); by default the one the store keeps (generated once, shared by replicas)."""

    def __init__(
        self,
        service: LensService,
        store: GridStore,
        worker: InferenceWorker | None = None,
        secret: bytes | None = None,
    ):
        self.service = service
        self.store = store
        self.worker = worker or InferenceWorker()
        self.secret = store.secret() if secret is None else secret

    def _compute_and_store(self, key: str, planned: PlannedGrid) -> KeptGrid:
        """Runs on the worker thread: `_compute_and_store_many` for one grid."""
        return self._compute_and_store_many([(key, planned)])[0]

    def _compute_and_store_many(self, jobs: Sequence[tuple[str, PlannedGrid]]) -> list[KeptGrid]:
        """Runs on the worker thread: compute the grids (of one merge group) not stored meanwhile, by any process
        sharing the store (`computing_all` makes them take turns per id), in one pass; store them; answer each."""
        keys = [key for key, _ in jobs]
        with self.store.computing_all(keys):
            found = {key: self.store.get(key) for key in keys}
            missing = [(key, planned) for key, planned in jobs if found[key] is None]
            grids = self.service.compute_many([planned for _, planned in missing]) if missing else []
            kept = {key: KeptGrid.from_stored(stored, cached=True) for key, stored in found.items() if stored}
            for (key, planned), grid in zip(missing, grids, strict=True):
                record = new_stored_grid(key, self.service.model.id, planned.canonical(), grid_document_json(grid, key))
                kept[key] = KeptGrid.from_stored(self.store.put(record), cached=False)
        return [kept[key] for key in keys]

    def lookup_or_submit(self, request: GridRequest) -> KeptGrid | Ticket:
        """The stored grid if there is one, else a ticket for its computation on the worker (merged with waiting
        requests of its merge group when the worker allows it).

        Raises `InvalidRequestError` before anything is queued or stored when the request is invalid, and
        `QueueFullError` when too many grids are already waiting.
        """
        planned = self.service.plan(request)
        key = grid_id(planned.canonical(), self.secret)
        stored = self.store.get(key)
        if stored is not None:
            self.store.opened(stored)
            return KeptGrid.from_stored(stored, cached=True)
        merge = Merge(planned.merge_group(), planned.cells, (key, planned), self._compute_and_store_many)
        return self.worker.submit(key, lambda: self._compute_and_store(key, planned), merge=merge)

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
        if stored is None:
            return None
        self.store.opened(stored)
        return KeptGrid.from_stored(stored, cached=True)


def keeper_of(request: Request) -> GridKeeper:
    """The app's grid keeper (set up by `create_app`)."""
    return request.app.state.keeper
