"""One inference worker for the model: a single thread fed by a bounded queue, with single flight, deadlines and
merged runs.

The model never runs two forwards at once (the engine already batches a request's cells); identical requests that
arrive while one is queued or running share its result; work whose every waiter has gone (deadline passed, client
disconnected) before it started is skipped instead of computed.

Merging: a job submitted with a `Merge` may run together with the compatible jobs (equal `Merge.group`) that are
waiting in the queue when the worker takes it: one call of its `run_many` answers them all. The worker takes the
oldest job, then adds compatible waiting jobs in queue order while the batch's total `cost` stays within
`max_batch_cost` (the oldest job always runs, even alone over the cap). So a merged pass is never longer than the
cap (or than the oldest job alone): a fast request merged with slow ones, or overtaken by compatible ones, waits at
most one such pass more. The worker never waits for more work to merge: it merges only what is already queued, so a
lone request is not delayed. If a merged run raises, its jobs are run again one at a time, so each waiter gets its
own job's result or error.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from typing import Any


class QueueFullError(RuntimeError):
    """Too many requests are waiting; the client should retry later."""

    def __init__(self, retry_after_s: int):
        super().__init__(f"the server is busy; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class DeadlineExceededError(TimeoutError):
    """A request was not answered within its deadline."""


class WorkerStoppedError(RuntimeError):
    """The worker was shut down."""


@dataclass(frozen=True)
class Merge:
    """How a job may share one run with compatible queued jobs: `run_many(items)` returns one result per item, in
    order, for jobs of equal `group`; `cost` is the job's share of the worker's `max_batch_cost`."""

    group: Hashable
    cost: int
    item: Any
    run_many: Callable[[Sequence[Any]], Sequence[Any]]


@dataclass
class _Job:
    key: Hashable
    fn: Callable[[], Any]
    deadline: float
    merge: Merge | None = None
    future: Future = field(default_factory=Future)
    waiters: int = 1


class Ticket:
    """One waiter's claim on a job: wait for its result, or give up (which may cancel the job if unstarted)."""

    def __init__(self, worker: InferenceWorker, job: _Job):
        self._worker = worker
        self._job = job
        self.future: Future = job.future

    def result(self, timeout: float | None = None) -> Any:
        """Block for the result; raises DeadlineExceededError after `timeout` seconds (and gives up the claim)."""
        try:
            return self.future.result(timeout=timeout)
        except TimeoutError:
            self.give_up()
            raise DeadlineExceededError(f"no result within {timeout or 0:.0f} s") from None
        except CancelledError:
            raise WorkerStoppedError("the request was dropped before it was computed; retry") from None

    def give_up(self) -> None:
        self._worker._release(self._job)


def _outcome(fn: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    """(result, None), or (None, the error) handed to the waiters, who decide what it means."""
    try:
        return fn(), None
    except BaseException as error:
        return None, error


class InferenceWorker:
    """Runs submitted callables one at a time (or compatible ones merged into one run) on a dedicated thread.

    `max_batch_cost` caps a merged run's total `Merge.cost`; 0 turns merging off (every job runs alone)."""

    def __init__(
        self, max_queue: int = 16, default_timeout_s: float = 60.0, retry_after_s: int = 5, max_batch_cost: int = 0
    ):
        self.max_queue = max_queue
        self.default_timeout_s = default_timeout_s
        self.retry_after_s = retry_after_s
        self.max_batch_cost = max_batch_cost
        self._queue: deque[_Job] = deque()
        self._pending: dict[Hashable, _Job] = {}
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._stopped = False
        self.completed = 0
        self.skipped = 0
        self.runs = 0  # calls into the model: one per job run alone, one per merged batch
        self.merged = 0  # jobs answered by a merged run of two or more
        self._thread = threading.Thread(target=self._run, name="inference-worker", daemon=True)
        self._thread.start()

    def submit(
        self, key: Hashable, fn: Callable[[], Any], timeout_s: float | None = None, merge: Merge | None = None
    ) -> Ticket:
        """Queue `fn` under `key` (or join the identical job already queued/running); QueueFullError if full.

        With `merge`, the job may instead be answered by a merged run with compatible queued jobs."""
        timeout_s = self.default_timeout_s if timeout_s is None else timeout_s
        with self._lock:
            if self._stopped:
                raise WorkerStoppedError("the inference worker is stopped")
            job = self._pending.get(key)
            if job is not None and not job.future.done():
                job.waiters += 1
                job.deadline = max(job.deadline, time.monotonic() + timeout_s)
                return Ticket(self, job)
            if len(self._pending) >= self.max_queue:
                raise QueueFullError(self.retry_after_s)
            job = _Job(key, fn, time.monotonic() + timeout_s, merge)
            self._pending[key] = job
            self._queue.append(job)
            self._ready.notify()
            return Ticket(self, job)

    @property
    def queued(self) -> int:
        with self._lock:
            return len(self._pending)

    def abandoned(self, key: Hashable) -> bool:
        """True when the job under `key` is pending and nobody waits for it any more: a running job that checks
        this between steps may stop early (raise), which frees the worker for the next job at once."""
        with self._lock:
            job = self._pending.get(key)
            return job is not None and self._abandoned(job)

    def _release(self, job: _Job) -> None:
        with self._lock:
            job.waiters -= 1

    def _abandoned(self, job: _Job) -> bool:
        """Nobody waits for `job` any more (all gave up or its deadline passed); call with the lock held."""
        return job.waiters <= 0 or time.monotonic() > job.deadline

    def _compatible(self, head: _Job) -> list[_Job]:
        """Queued live jobs that may join `head`'s run, oldest first, within the cost cap (lock held; removed)."""
        if head.merge is None or self.max_batch_cost <= 0:
            return []
        cost, joined = head.merge.cost, []
        for job in list(self._queue):
            if job.merge is None or job.merge.group != head.merge.group or self._abandoned(job):
                continue
            if cost + job.merge.cost <= self.max_batch_cost:
                self._queue.remove(job)
                joined.append(job)
                cost += job.merge.cost
        return joined

    def _take(self) -> list[_Job] | None:
        """The next batch to run: the oldest live job and the compatible ones; None once stopped."""
        with self._lock:
            while True:
                while not self._queue and not self._stopped:
                    self._ready.wait()
                if self._stopped:
                    return None
                head = self._queue.popleft()
                if self._abandoned(head):
                    self._pending.pop(head.key, None)
                    self.skipped += 1
                    head.future.cancel()
                    continue
                batch = [head, *self._compatible(head)]
                return [job for job in batch if job.future.set_running_or_notify_cancel()]

    def _execute(self, batch: list[_Job]) -> list[tuple[Any, BaseException | None]]:
        """Run a batch: alone through `fn`, merged through `run_many`, one by one again if the merged run fails."""
        self.runs += 1
        if len(batch) == 1:
            return [_outcome(batch[0].fn)]
        results, error = _outcome(lambda: batch[0].merge.run_many([job.merge.item for job in batch]))
        if error is None and len(results) == len(batch):
            self.merged += len(batch)
            return [(result, None) for result in results]
        self.runs += len(batch)
        return [_outcome(job.fn) for job in batch]

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            if not batch:
                continue
            outcomes = self._execute(batch)
            for job, (result, error) in zip(batch, outcomes, strict=True):
                if error is None:
                    job.future.set_result(result)
                else:
                    job.future.set_exception(error)
            with self._lock:
                for job in batch:
                    if self._pending.get(job.key) is job:  # not a newer job submitted under the key meanwhile
                        del self._pending[job.key]
                    self.completed += 1

    def stop(self, timeout: float = 5.0) -> None:
        """Finish the running job or batch, cancel the queued ones, end the thread."""
        with self._lock:
            self._stopped = True
            for job in self._pending.values():
                job.future.cancel()
            self._queue.clear()
            self._ready.notify_all()
        self._thread.join(timeout)
