"""Merged requests vs one at a time: 8 concurrent clients with short texts on the embedded model, in one run.

Run: `python -m benchmarks.merge` (options: `--clients`, `--requests` per client, `--layers`, `--n-future`). The model
is loaded once; two keepers serve the same request mix side by side, one whose worker merges waiting requests
(`merge_max_cells`, default from server/config.py) and one that runs one request per pass (cap 0). Each client sends its
requests one after the other (a new text each time, so nothing comes from the store) and times each answer. Prints
throughput (grids/s) and p50/p95 latency for both and their ratios; the last line is JSON. A warm-up round runs
first; the modes then alternate round by round, so background load hits both alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import torch

from future_lens.lens.models import DEFAULT_MODEL
from future_lens.server.config import Settings
from future_lens.server.store import MemoryGridStore
from future_lens.server.web.keeper import GridKeeper
from future_lens.server.worker import InferenceWorker
from future_lens.service import LensService, parse_request

SUBJECTS = ["The river", "My neighbour", "A small lamp", "The violin", "Seven engines", "Her garden", "Silver", "He"]
VERBS = ["is", "was found near", "makes", "belongs to", "runs past", "looks like"]


def short_text(client: int, index: int) -> str:
    """A short text (3-6 tokens), different for every (client, index)."""
    return f"{SUBJECTS[client % len(SUBJECTS)]} {VERBS[index % len(VERBS)]} {client * 1000 + index}"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[round(share * (len(ordered) - 1))]


def run_round(keeper: GridKeeper, clients: int, requests: int, fields: dict[str, object], offset: int) -> dict:
    """`clients` threads each asking `requests` grids in turn; throughput and latency of this round."""
    latencies: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def client(number: int) -> None:
        start.wait()
        for index in range(requests):
            request = parse_request(text=short_text(number, offset + index), **fields)
            began = time.perf_counter()
            try:
                keeper.get_or_compute(request)
            except Exception as error:  # reported below
                errors.append(error)
            with lock:
                latencies.append(time.perf_counter() - began)

    threads = [threading.Thread(target=client, args=(number,)) for number in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, first: {errors[0]!r}")
    return {"seconds": time.perf_counter() - began, "latencies": latencies}


def summary(rounds: list[dict], worker: InferenceWorker) -> dict[str, float]:
    latencies = [latency for r in rounds for latency in r["latencies"]]
    seconds = sum(r["seconds"] for r in rounds)
    return {
        "grids": len(latencies),
        "grids_per_s": round(len(latencies) / seconds, 3),
        "p50_s": round(statistics.median(latencies), 3),
        "p95_s": round(percentile(latencies, 0.95), 3),
        "passes": worker.runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=3, help="requests per client per round")
    parser.add_argument("--rounds", type=int, default=2, help="measured rounds per mode (alternating)")
    parser.add_argument("--layers", default="all")
    parser.add_argument("--n-future", type=int, default=4)
    parser.add_argument("--method", default="future", choices=["future", "logit", "fixed"])
    args = parser.parse_args()
    service = LensService.load(DEFAULT_MODEL)
    cap = Settings().merge_max_cells
    keepers = {
        "merged": GridKeeper(service, MemoryGridStore(), InferenceWorker(64, 600, max_batch_cost=cap), b"b" * 32),
        "one_at_a_time": GridKeeper(service, MemoryGridStore(), InferenceWorker(64, 600, max_batch_cost=0), b"b" * 32),
    }
    fields = {"method": args.method, "layers": args.layers, "n_future": args.n_future}
    cells = service.plan(parse_request(text=short_text(0, 0), **fields)).cells
    print(
        f"{DEFAULT_MODEL} on {service.model.device}, {torch.get_num_threads()} threads; {args.clients} clients x "
        f"{args.requests} requests x {args.rounds} rounds per mode; method {args.method}, layers {args.layers}, "
        f"N={args.n_future}; about {cells} cells per grid; merge cap {cap} cells",
        flush=True,
    )
    run_round(keepers["one_at_a_time"], args.clients, 1, fields, offset=10_000)  # warm-up (prefixes, allocator)
    rounds: dict[str, list[dict]] = {name: [] for name in keepers}
    for number in range(args.rounds):
        for name, keeper in keepers.items() if number % 2 == 0 else reversed(keepers.items()):
            rounds[name].append(run_round(keeper, args.clients, args.requests, fields, offset=number * 100))
            done = rounds[name][-1]
            print(f"round {number + 1} {name}: {len(done['latencies'])} grids in {done['seconds']:.1f} s", flush=True)
    results = {name: summary(rounds[name], keeper.worker) for name, keeper in keepers.items()}
    merged, alone = results["merged"], results["one_at_a_time"]
    for name, result in results.items():
        print(
            f"{name:>14}: {result['grids_per_s']:.2f} grids/s, p50 {result['p50_s']:.2f} s, "
            f"p95 {result['p95_s']:.2f} s ({result['grids']} grids in {result['passes']} passes)"
        )
    ratios = {
        "throughput": round(merged["grids_per_s"] / alone["grids_per_s"], 2),
        "p50": round(merged["p50_s"] / alone["p50_s"], 2),
        "p95": round(merged["p95_s"] / alone["p95_s"], 2),
    }
    print(f"merged / one at a time: throughput x{ratios['throughput']}, p50 x{ratios['p50']}, p95 x{ratios['p95']}")
    for keeper in keepers.values():
        keeper.worker.stop()
    print(json.dumps({"config": vars(args), "cells_per_grid": cells, "merge_cap": cap, **results, "ratio": ratios}))


if __name__ == "__main__":
    main()
