"""The inference worker: one job at a time, bounded queue, single flight, deadlines, abandoned work skipped."""

from __future__ import annotations

import threading
import time

import pytest

from app.worker import DeadlineExceededError, InferenceWorker, QueueFullError


@pytest.fixture
def worker():
    w = InferenceWorker(max_queue=3, default_timeout_s=10)
    yield w
    w.stop()


def blocker(worker: InferenceWorker, key: str = "block"):
    """Occupy the worker until the returned event is set."""
    release, started = threading.Event(), threading.Event()

    def job():
        started.set()
        release.wait(10)
        return key

    ticket = worker.submit(key, job)
    assert started.wait(5)
    return release, ticket


def test_jobs_never_overlap(worker) -> None:
    running, overlaps, lock = [0], [0], threading.Lock()

    def job(i: int):
        with lock:
            running[0] += 1
            overlaps[0] = max(overlaps[0], running[0])
        time.sleep(0.01)
        with lock:
            running[0] -= 1
        return i

    results = []
    threads = []
    for i in range(3):
        ticket = worker.submit(i, lambda i=i: job(i))
        threads.append(threading.Thread(target=lambda t=ticket: results.append(t.result(5))))
        threads[-1].start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [0, 1, 2] and overlaps[0] == 1


def test_identical_requests_are_computed_once(worker) -> None:
    release, _ = blocker(worker)
    calls = []
    first = worker.submit("same", lambda: calls.append(1) or "grid")
    second = worker.submit("same", lambda: calls.append(2) or "other")
    release.set()
    assert first.result(5) == second.result(5) == "grid"
    assert calls == [1]


def test_full_queue_is_refused_with_retry_after(worker) -> None:
    release, _ = blocker(worker)
    worker.submit("a", lambda: 1)
    worker.submit("b", lambda: 2)
    with pytest.raises(QueueFullError) as error:
        worker.submit("c", lambda: 3)
    assert error.value.retry_after_s > 0
    release.set()


def test_abandoned_work_is_skipped(worker) -> None:
    release, _ = blocker(worker)
    calls = []
    ticket = worker.submit("gone", lambda: calls.append("ran"))
    ticket.give_up()  # e.g. the client disconnected before the work started
    kept = worker.submit("kept", lambda: "done")
    release.set()
    assert kept.result(5) == "done"
    assert calls == [] and worker.skipped == 1


def test_deadline_raises(worker) -> None:
    release, _ = blocker(worker)
    ticket = worker.submit("late", lambda: "too late")
    with pytest.raises(DeadlineExceededError):
        ticket.result(timeout=0.05)
    release.set()


def test_errors_reach_the_waiter(worker) -> None:
    def broken():
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        worker.submit("x", broken).result(5)
    assert worker.submit("y", lambda: "still alive").result(5) == "still alive"
