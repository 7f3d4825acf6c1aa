"""Benchmark streamed grids against plain ones: time to the first row and to the whole grid, side by side.

Run: `python -m benchmarks.streaming` (`--repeats 3`). The embedded model with its shipped prompts, a 20-token text,
two settings: the page's defaults (future lens, N=4, layer stride 2: 16 of 30 layers) and all 30 layers. A plain
grid shows nothing before it is whole, so its time to first row is its full time. Each figure is the median of
`--repeats` interleaved rounds after one warm-up run of each mode (prefix keys/values cached, as on a running
server); the last line is JSON. Streamed modes: the shipped schedule (`stream_waves`: two rows first, the rest as
they leave, overlapped in one running decode, lens/staggered.py), and the same waves decoded one after another
(each its own batched decode, as streaming first worked), which shows what overlapping saves.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from future_lens.lens.grid import stream_waves
from future_lens.lens.layers import strided_layers
from future_lens.lens.lenses import FutureLens
from future_lens.lens.models import DEFAULT_MODEL, load_model
from future_lens.lens.source import tokenize

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


class OneWaveAtATime(FutureLens):
    """The future lens decoding each wave on its own (`decode_patched` per wave), for comparison."""

    def staggered(self, *args, **kwargs) -> None:
        return None


def streamed(lens: FutureLens, text: str, layers: list[int], n_future: int) -> tuple[float, float]:
    """Seconds to the first row and to the whole grid."""
    started = time.perf_counter()
    stream = lens.stream(text, layers=layers, n_future=n_future)
    first = None
    for _ in stream.rows():
        first = first or time.perf_counter() - started
    stream.grid()
    return first, time.perf_counter() - started


def interleaved_medians(
    modes: dict[str, Callable[[], tuple[float, ...]]], repeats: int
) -> dict[str, tuple[float, ...]]:
    """Each mode's median of every figure: one warm-up each (prefix keys/values stored, allocator warm), then
    `repeats` rounds running every mode once, so a change in the machine's load hits all modes alike."""
    for fn in modes.values():
        fn()
    runs: dict[str, list[tuple[float, ...]]] = {name: [] for name in modes}
    for _ in range(repeats):
        for name, fn in modes.items():
            runs[name].append(fn())
    return {name: tuple(statistics.median(column) for column in zip(*got, strict=True)) for name, got in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--n-future", type=int, default=4)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = load_model(DEFAULT_MODEL)
    lenses = {"staggered (shipped)": FutureLens(model), "one wave at a time": OneWaveAtATime(model)}
    text = text_of_tokens(model, args.tokens)
    n_layers = model.adapter.n_layers
    print(
        f"{model.id} on {model.device} ({model.dtype_name}), {torch.get_num_threads()} threads; "
        f"{len(tokenize(model, text))}-token text, N={args.n_future}; median of {args.repeats} interleaved rounds"
    )
    print(f"{'setting':<20}{'mode':<22}{'first row s':>12}{'full s':>8}{'first/plain':>12}{'full/plain':>11}")
    results = []
    for name, layers in [
        ("UI defaults (16 L)", strided_layers(n_layers, 2)),
        ("all layers (30 L)", list(range(n_layers))),
    ]:
        modes = {"plain": lambda layers=layers: plain(lenses["staggered (shipped)"], text, layers, args.n_future)}
        for mode, lens in lenses.items():
            modes[mode] = lambda layers=layers, lens=lens: streamed(lens, text, layers, args.n_future)
        medians = interleaved_medians(modes, args.repeats)
        plain_full = medians["plain"][1]
        waves = stream_waves(len(layers), args.n_future)
        row = {"setting": name, "layers": len(layers), "waves": waves, "plain_full_s": plain_full, "streamed": {}}
        for mode, (first, full) in medians.items():
            print(
                f"{name:<20}{mode:<22}{first:>12.2f}{full:>8.2f}{first / plain_full:>12.2f}{full / plain_full:>11.2f}"
            )
            if mode != "plain":
                row["streamed"][mode] = {"first_row_s": first, "full_s": full, "full_ratio": full / plain_full}
        results.append(row)
    print(json.dumps({"text_tokens": len(tokenize(model, text)), "n_future": args.n_future, "results": results}))


if __name__ == "__main__":
    main()
