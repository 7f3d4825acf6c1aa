"""One inference worker for the model: a single thread fed by a bounded queue, with single flight and deadlines.

The model never runs two forwards at once (the engine already batches a request's cells); identical requests that
arrive while one is queued or running share its result; work whose every waiter has gone (deadline passed, client
disconnected) before it started is skipped instead of computed.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Hashable
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


@dataclass
class _Job:
    key: Hashable
    fn: Callable[[], Any]
    deadline: float
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


class InferenceWorker:
    """Runs submitted callables one at a time on a dedicated thread."""

    def __init__(self, max_queue: int = 16, default_timeout_s: float = 60.0, retry_after_s: int = 5):
        self.max_queue = max_queue
        self.default_timeout_s = default_timeout_s
        self.retry_after_s = retry_after_s
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._pending: dict[Hashable, _Job] = {}
        self._lock = threading.Lock()
        self._stopped = False
        self.completed = 0
        self.skipped = 0
        self._thread = threading.Thread(target=self._run, name="inference-worker", daemon=True)
        self._thread.start()

    def submit(self, key: Hashable, fn: Callable[[], Any], timeout_s: float | None = None) -> Ticket:
        """Queue `fn` under `key` (or join the identical job already queued/running); QueueFullError if full."""
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
            job = _Job(key, fn, time.monotonic() + timeout_s)
            self._pending[key] = job
            self._queue.put(job)
            return Ticket(self, job)

    @property
    def queued(self) -> int:
        with self._lock:
            return len(self._pending)

    def _release(self, job: _Job) -> None:
        with self._lock:
            job.waiters -= 1

    def _should_skip(self, job: _Job) -> bool:
        with self._lock:
            abandoned = job.waiters <= 0 or time.monotonic() > job.deadline
            if abandoned:
                self._pending.pop(job.key, None)
            return abandoned

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if self._should_skip(job):
                self.skipped += 1
                job.future.cancel()
                continue
            if not job.future.set_running_or_notify_cancel():
                continue
            try:
                job.future.set_result(job.fn())
            except BaseException as error:  # handed to the waiters, who decide what it means
                job.future.set_exception(error)
            finally:
                with self._lock:
                    self._pending.pop(job.key, None)
                    self.completed += 1

    def stop(self, timeout: float = 5.0) -> None:
        """Finish the running job, cancel the queued ones, end the thread."""
        with self._lock:
            self._stopped = True
            for job in self._pending.values():
                job.future.cancel()
        self._queue.put(None)
        self._thread.join(timeout)
