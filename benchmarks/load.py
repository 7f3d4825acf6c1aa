"""Load benchmark: concurrent clients against a real server on loopback (bounded in count and time).

Run: `python benchmarks/load.py --clients 20 --requests 10`. Mixes repeated (stored) and new texts, polls /healthz
throughout, and prints latency percentiles, throughput, status counts and the server's RSS before and after;
the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from benchmarks.serving import ServerProcess

WORDS = ["river", "lamp", "orange", "quiet", "seven", "engine", "garden", "silver", "honest", "violin"]


def request_body(client: int, index: int, cached_share: float) -> dict[str, object]:
    """Every few requests repeat a shared text (served from the store); the rest are new texts."""
    if (index * 7 + client) % 10 < cached_share * 10:
        text = "The Eiffel Tower is in the city of"
    else:
        text = f"The {WORDS[client % 10]} {WORDS[index % 10]} number {client * 100 + index} is"
    return {"text": text, "method": "logit", "layers": "::3"}


def is_unexpected_5xx(status: int | str) -> bool:
    """A server error other than the deliberate 503 (busy) and 504 (deadline)."""
    return isinstance(status, int) and status >= 500 and status not in (503, 504)


def run_clients(url: str, clients: int, requests: int, cached_share: float, timeout_s: float):
    latencies: list[float] = []
    statuses: Counter[int | str] = Counter()
    lock = threading.Lock()

    def client_loop(client: int) -> None:
        with httpx.Client(base_url=url, timeout=timeout_s) as http:
            for index in range(requests):
                started = time.perf_counter()
                try:
                    status = http.post("/lens", json=request_body(client, index, cached_share)).status_code
                except httpx.HTTPError as error:
                    status = type(error).__name__
                with lock:
                    latencies.append(time.perf_counter() - started)
                    statuses[status] += 1

    threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    return threads, latencies, statuses


def run_load(clients: int, requests: int, cached_share: float = 0.3, timeout_s: float = 120) -> dict[str, object]:
    """Start a server on a fresh DB, run the clients to the end while polling /healthz, and summarise."""
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp) / "load.sqlite3").start()
        try:
            rss_before = server.rss_mb()
            started = time.perf_counter()
            threads, latencies, statuses = run_clients(server.url, clients, requests, cached_share, timeout_s)
            health: Counter[int | str] = Counter()
            while any(thread.is_alive() for thread in threads):
                try:
                    health[httpx.get(f"{server.url}/healthz", timeout=5).status_code] += 1
                except httpx.HTTPError as error:
                    health[type(error).__name__] += 1
                time.sleep(0.5)
            elapsed = time.perf_counter() - started
            rss_after = server.rss_mb()
        finally:
            server.stop()
    ordered = sorted(latencies)
    return {
        "clients": clients,
        "requests": len(latencies),
        "seconds": round(elapsed, 2),
        "throughput_rps": round(len(latencies) / elapsed, 2),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))] * 1000, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items(), key=str)},
        "unexpected_5xx": sum(n for status, n in statuses.items() if is_unexpected_5xx(status)),
        "healthz": {str(k): v for k, v in health.items()},
        "rss_mb_before": round(rss_before, 1),
        "rss_mb_after": round(rss_after, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--cached-share", type=float, default=0.3)
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    result = run_load(args.clients, args.requests, args.cached_share, args.timeout)
    print(
        f"{result['requests']} requests from {args.clients} clients in {result['seconds']} s "
        f"({result['throughput_rps']} req/s): p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms; "
        f"statuses {result['statuses']}; /healthz {result['healthz']}; "
        f"RSS {result['rss_mb_before']} -> {result['rss_mb_after']} MB"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
