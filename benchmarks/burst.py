"""The rate limiter under a loopback burst: a real server with a per-client rate limit, then one burst of requests
from one client address, all at once.

Run: `python -m benchmarks.burst` (options: `--requests 50 --per-minute 30 --burst 10`). Prints how many requests were
admitted (200), refused (429, with their Retry-After range), answered 5xx or failed, and the elapsed time; the last
line is JSON. Expected: about `burst` admitted (plus what the rate refills during the burst), the rest 429, no 5xx.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from benchmarks.serving import ServerProcess


def fire(url: str, requests: int, timeout_s: float) -> tuple[Counter[int | str], list[int]]:
    """`requests` POST /lens sent at once (one thread each, released together); status counts and Retry-After."""
    statuses: Counter[int | str] = Counter()
    retry_after: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(requests)

    def one(index: int) -> None:
        body = {"text": f"Burst request number {index}", "method": "logit", "layers": "::3"}
        with httpx.Client(base_url=url, timeout=timeout_s) as http:
            start.wait()
            try:
                response = http.post("/lens", json=body)
                status: int | str = response.status_code
            except httpx.HTTPError as error:
                status, response = type(error).__name__, None
        with lock:
            statuses[status] += 1
            if response is not None and "Retry-After" in response.headers:
                retry_after.append(int(response.headers["Retry-After"]))

    threads = [threading.Thread(target=one, args=(index,)) for index in range(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses, retry_after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--per-minute", type=float, default=30)
    parser.add_argument("--burst", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    limit = {"FUTURE_LENS_RATE_LIMIT_PER_MINUTE": str(args.per_minute), "FUTURE_LENS_RATE_LIMIT_BURST": str(args.burst)}
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp) / "burst.sqlite3", env=limit).start()
        try:
            began = time.perf_counter()
            statuses, retry_after = fire(server.url, args.requests, args.timeout)
            elapsed = time.perf_counter() - began
            healthy = httpx.get(f"{server.url}/healthz", timeout=10).status_code
        finally:
            server.stop()
    result = {
        "requests": args.requests,
        "per_minute": args.per_minute,
        "burst": args.burst,
        "admitted": statuses.get(200, 0),
        "refused_429": statuses.get(429, 0),
        "server_errors_5xx": sum(n for s, n in statuses.items() if isinstance(s, int) and s >= 500),
        "other": {
            str(s): n for s, n in statuses.items() if s not in (200, 429) and not (isinstance(s, int) and s >= 500)
        },
        "retry_after_s": [min(retry_after), max(retry_after)] if retry_after else None,
        "seconds": round(elapsed, 2),
        "healthz_after": healthy,
    }
    print(
        f"{args.requests} requests at once from one address, limit {args.per_minute}/min after a burst of "
        f"{args.burst}: {result['admitted']} admitted, {result['refused_429']} refused (429, Retry-After "
        f"{result['retry_after_s']} s), {result['server_errors_5xx']} 5xx, other {result['other']}; "
        f"{result['seconds']} s; /healthz {healthy}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
