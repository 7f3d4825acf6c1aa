"""Benchmark streamed grids against plain ones: time to the first row and to the whole grid, side by side.

Run: `python benchmarks/streaming.py` (`--repeats 3`). The embedded model with its shipped prompts, a 20-token text,
two settings: the page's defaults (future lens, N=4, layer stride 2: 16 of 30 layers) and all 30 layers. A plain
grid shows nothing before it is whole, so its time to first row is its full time. Each figure is the median of
`--repeats` interleaved rounds after one warm-up run of each mode (prefix keys/values cached, as on a running
server); the last line is JSON. The streamed modes: the shipped schedule (`stream_passes`) and the first one (4 rows
per pass), which showed what each extra pass costs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from app.lens.grid import COARSE_ROWS, MIN_ROWS_PER_PASS, stream_passes
from app.lens.layers import strided_layers
from app.lens.lenses import FutureLens
from app.lens.models import DEFAULT_MODEL, load_model
from app.lens.source import tokenize

TEXT_WORDS = [
    "The",
    "doctor",
    "said",
    "that",
    "he",
    "would",
    "call",
    "the",
    "family",
    "as",
    "soon",
    "as",
    "the",
    "results",
    "of",
    "the",
    "tests",
    "came",
    "back",
    "from",
    "the",
    "lab",
    "in",
    "the",
    "city",
    "hospital",
    "next",
    "week",
]


def text_of_tokens(model, n_tokens: int) -> str:
    """The longest prefix of TEXT_WORDS with at most `n_tokens` tokens, padded with words to exactly that many."""
    words: list[str] = []
    for word in TEXT_WORDS * 3:
        if len(tokenize(model, " ".join([*words, word]))) > n_tokens:
            break
        words.append(word)
    text = " ".join(words)
    while len(tokenize(model, text)) < n_tokens:
        text += " and"
    return text


def plain(lens: FutureLens, text: str, layers: list[int], n_future: int) -> tuple[float, float]:
    started = time.perf_counter()
    lens.grid(text, layers=layers, n_future=n_future)
    full = time.perf_counter() - started
    return full, full


def small_passes(n_rows: int, coarse: int = COARSE_ROWS, per_pass: int = 4) -> list[list[int]]:
    """The first schedule, kept for comparison: each coarse row in a pass of its own, then 4 rows per pass."""
    if n_rows <= coarse:
        return [[row] for row in range(n_rows)]
    spread = sorted({round(i * (n_rows - 1) / (coarse - 1)) for i in range(coarse)})
    rest = [row for row in range(n_rows) if row not in spread]
    return [[row] for row in spread] + [rest[i : i + per_pass] for i in range(0, len(rest), per_pass)]


SCHEDULES = {"shipped": stream_passes, "4 rows/pass": small_passes}


def streamed(lens: FutureLens, text: str, layers: list[int], n_future: int, schedule: str) -> tuple[float, float]:
    started = time.perf_counter()
    stream = lens.stream(text, layers=layers, n_future=n_future, passes=SCHEDULES[schedule](len(layers)))
    first = None
    for _ in stream.rows():
        first = first or time.perf_counter() - started
    stream.grid()
    return first, time.perf_counter() - started


def interleaved_medians(
    modes: dict[str, Callable[[], tuple[float, float]]], repeats: int
) -> dict[str, tuple[float, float]]:
    """Each mode's median (first row s, full s): one warm-up each (prefix keys/values stored, allocator warm), then
    `repeats` rounds running every mode once, so a change in the machine's load hits all modes alike."""
    for fn in modes.values():
        fn()
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in modes}
    for _ in range(repeats):
        for name, fn in modes.items():
            runs[name].append(fn())
    return {
        name: (statistics.median(r[0] for r in got), statistics.median(r[1] for r in got)) for name, got in runs.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--n-future", type=int, default=4)
    parser.add_argument(
        "--schedules", nargs="+", default=list(SCHEDULES), choices=list(SCHEDULES), help="streaming schedules to time"
    )
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = load_model(DEFAULT_MODEL)
    lens = FutureLens(model)
    text = text_of_tokens(model, args.tokens)
    n_layers = model.adapter.n_layers
    print(
        f"{model.id} on {model.device} ({model.dtype_name}), {torch.get_num_threads()} threads; "
        f"{len(tokenize(model, text))}-token text, N={args.n_future}; shipped schedule: 1 row, {COARSE_ROWS - 1} more "
        f"over depth, then >= {MIN_ROWS_PER_PASS} rows per pass; median of {args.repeats} interleaved rounds"
    )
    results = []
    header = f"{'setting':<22}{'mode':<26}{'first row s':>12}{'full grid s':>12}{'first/plain':>12}{'full/plain':>12}"
    print(header)
    for name, layers in [
        ("UI defaults (16 L)", strided_layers(n_layers, 2)),
        ("all layers (30 L)", list(range(n_layers))),
    ]:
        modes = {"plain": lambda layers=layers: plain(lens, text, layers, args.n_future)}
        for schedule in args.schedules:
            modes[schedule] = lambda layers=layers, schedule=schedule: streamed(
                lens, text, layers, args.n_future, schedule
            )
        medians = interleaved_medians(modes, args.repeats)
        plain_first, plain_full = medians.pop("plain")
        print(f"{name:<22}{'plain':<26}{plain_first:>12.2f}{plain_full:>12.2f}{1:>12.2f}{1:>12.2f}")
        row = {"setting": name, "layers": len(layers), "plain_full_s": plain_full, "streamed": {}}
        for schedule, (first, full) in medians.items():
            passes = len(SCHEDULES[schedule](len(layers)))
            mode = f"streamed, {schedule} ({passes})"
            print(
                f"{name:<22}{mode:<26}{first:>12.2f}{full:>12.2f}{first / plain_full:>12.2f}{full / plain_full:>12.2f}"
            )
            entry = {"passes": passes, "first_row_s": first, "full_s": full, "full_ratio": full / plain_full}
            row["streamed"][schedule] = entry
        results.append(row)
    print(json.dumps({"text_tokens": len(tokenize(model, text)), "n_future": args.n_future, "results": results}))


if __name__ == "__main__":
    main()
