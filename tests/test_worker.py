"""The inference worker: one job at a time, bounded queue, single flight, deadlines, abandoned work skipped, and
compatible waiting jobs merged into one run within a cost cap."""

from __future__ import annotations

import threading
import time

import pytest

from future_lens.server.worker import DeadlineExceededError, InferenceWorker, Merge, QueueFullError


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


# ---------- merged runs ----------


class Recorder:
    """A `run_many` that records each batch of items and answers each item with its own result."""

    def __init__(self, fail: bool = False):
        self.batches: list[list[str]] = []
        self.fail = fail

    def __call__(self, items):
        self.batches.append(list(items))
        if self.fail:
            raise RuntimeError("merged run failed")
        return [f"merged {item}" for item in items]


def merged_submit(worker: InferenceWorker, key: str, run_many: Recorder, group: str = "g", cost: int = 1):
    return worker.submit(key, lambda: f"alone {key}", merge=Merge(group, cost, key, run_many))


@pytest.fixture
def merging():
    w = InferenceWorker(max_queue=10, default_timeout_s=10, max_batch_cost=10)
    yield w
    w.stop()


def test_compatible_waiting_jobs_run_merged_and_each_gets_its_own_result(merging) -> None:
    release, _ = blocker(merging)
    run_many = Recorder()
    tickets = {key: merged_submit(merging, key, run_many) for key in ("a", "b", "c")}
    release.set()
    assert {key: ticket.result(5) for key, ticket in tickets.items()} == {k: f"merged {k}" for k in "abc"}
    assert run_many.batches == [["a", "b", "c"]]
    assert merging.merged == 3


def test_a_lone_job_runs_alone_at_once(merging) -> None:
    run_many = Recorder()
    assert merged_submit(merging, "solo", run_many).result(5) == "alone solo"
    assert run_many.batches == []


def test_only_jobs_of_one_group_merge_and_others_keep_their_turn(merging) -> None:
    release, _ = blocker(merging)
    run_many, order = Recorder(), []
    first = merged_submit(merging, "a1", run_many, group="a")
    other = merging.submit("plain", lambda: order.append("plain") or "plain")  # no merge: always alone
    second = merged_submit(merging, "a2", run_many, group="a")
    b = merged_submit(merging, "b1", run_many, group="b")
    release.set()
    assert [first.result(5), second.result(5), other.result(5), b.result(5)] == [
        "merged a1",
        "merged a2",
        "plain",
        "alone b1",
    ]
    assert run_many.batches == [["a1", "a2"]]


def test_the_cap_bounds_a_merged_run_and_a_big_job_runs_alone(merging) -> None:
    release, _ = blocker(merging)
    run_many = Recorder()
    big = merged_submit(merging, "big", run_many, cost=25)  # over the cap of 10 on its own
    smalls = [merged_submit(merging, f"s{i}", run_many, cost=4) for i in range(5)]
    release.set()
    assert big.result(5) == "alone big"
    assert [t.result(5) for t in smalls] == [f"merged s{i}" for i in range(4)] + ["alone s4"]
    assert run_many.batches == [["s0", "s1"], ["s2", "s3"]]  # each pass at most 10: 4 + 4
    assert merging.runs == 1 + 1 + 3  # the blocker, big alone, two merged passes, s4 alone


def test_abandoned_jobs_are_not_merged(merging) -> None:
    release, _ = blocker(merging)
    run_many = Recorder()
    kept = merged_submit(merging, "kept", run_many)
    merged_submit(merging, "gone", run_many).give_up()
    also = merged_submit(merging, "also", run_many)
    release.set()
    assert [kept.result(5), also.result(5)] == ["merged kept", "merged also"]
    assert run_many.batches == [["kept", "also"]]
    merging.submit("after", lambda: None).result(5)
    assert merging.skipped == 1


def test_a_failed_merged_run_is_retried_one_job_at_a_time(merging) -> None:
    release, _ = blocker(merging)
    run_many = Recorder(fail=True)
    tickets = [merged_submit(merging, key, run_many) for key in ("x", "y")]

    def broken():
        raise ValueError("only z fails")

    z = merging.submit("z", broken, merge=Merge("g", 1, "z", run_many))
    release.set()
    assert [t.result(5) for t in tickets] == ["alone x", "alone y"]
    with pytest.raises(ValueError, match="only z fails"):
        z.result(5)
    assert run_many.batches == [["x", "y", "z"]]


def test_identical_merged_requests_still_share_one_job(merging) -> None:
    release, _ = blocker(merging)
    run_many = Recorder()
    first, second = merged_submit(merging, "same", run_many), merged_submit(merging, "same", run_many)
    other = merged_submit(merging, "other", run_many)
    release.set()
    assert first.result(5) == second.result(5) == "merged same" and other.result(5) == "merged other"
    assert run_many.batches == [["same", "other"]]
