"""Benchmark the grid engine against the naive per-cell loop and the model's plain batched-forward throughput.

Run: `make bench` (or `python benchmarks/grid.py --dtypes float32 bfloat16 --repeats 3`). Everything is measured
side by side in one run on the same model and dtype; the last line is JSON. The naive loop is timed on an evenly
spread sample of cells (`--naive-cells`, 0 = all) and scaled to the full grid, since all of it takes minutes.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch

from app.lens.grid import compute_grid
from app.lens.lenses import FutureLens
from app.lens.models import DEFAULT_MODEL, LoadedModel, load_model
from app.lens.prompts import SoftPromptSet, default_prompt_dir, load_soft_prompts
from app.lens.reference import naive_cell
from app.lens.source import run_source_pass, tokenize

BASE_TEXT = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named after "
    "the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889 for the World's "
    "Fair. Locally nicknamed the Iron Lady, it was criticised by some of France's leading artists and "
    "intellectuals for its design, but it has since become a global cultural icon of France and one of the most "
    "recognisable structures in the world. "
)


def text_of(model: LoadedModel, n_tokens: int) -> str:
    """A text of exactly n_tokens tokens (cut from a repeated paragraph)."""
    ids = tokenize(model, BASE_TEXT * (1 + n_tokens // 60))[:n_tokens]
    return model.tokenizer.decode(ids)


def prompts_for(model: LoadedModel) -> tuple[SoftPromptSet, str]:
    try:
        return load_soft_prompts(default_prompt_dir(model.id), model), "trained"
    except ValueError:
        generator = torch.Generator().manual_seed(0)
        d_model = model.adapter.d_model
        layers = range(model.adapter.n_layers)
        return SoftPromptSet(None, {i: torch.randn(10, d_model, generator=generator) for i in layers}), "random"


def timed(fn, repeats: int) -> float:
    """Median wall seconds of `repeats` calls."""
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def roofline(model: LoadedModel, rows: int = 64, length: int = 32, repeats: int = 3) -> float:
    """Plain batched-forward throughput (token positions/s), logits for the last position only."""
    ids = torch.randint(100, 10_000, (rows, length))
    with torch.inference_mode():
        model.hf(ids[:4], logits_to_keep=1)  # warm-up
        seconds = timed(lambda: model.hf(ids, logits_to_keep=1), repeats)
    return rows * length / seconds


def naive_seconds_per_cell(model: LoadedModel, lens: FutureLens, text: str, n_future: int, sample: int) -> float:
    source = run_source_pass(model, tokenize(model, text))
    n_layers, n_tokens = source.hidden.shape[:2]
    cells = [(layer, t) for layer in range(n_layers) for t in range(n_tokens)]
    if sample:
        cells = cells[:: max(1, len(cells) // sample)][:sample]
    started = time.perf_counter()
    for layer, t in cells:
        naive_cell(model, lens.context_embeddings(layer), layer, source.hidden[layer, t], n_future)
    return (time.perf_counter() - started) / len(cells)


def bench_dtype(dtype: str, args: argparse.Namespace) -> dict[str, object]:
    model = load_model(DEFAULT_MODEL, device="cpu", dtype=dtype)
    prompts, kind = prompts_for(model)
    lens = FutureLens(model, prompts)
    layers = list(range(model.adapter.n_layers))
    text = text_of(model, args.tokens)
    compute_grid(model, lens, text_of(model, 4), layers, args.n_future)  # warm-up
    engine_s = timed(lambda: compute_grid(model, lens, text, layers, args.n_future), args.repeats)
    cells = len(layers) * args.tokens
    naive_cell_s = naive_seconds_per_cell(model, lens, text, args.n_future, args.naive_cells)
    naive_s = naive_cell_s * cells
    forward_tps = roofline(model, repeats=args.repeats)
    engine_tps = cells * args.n_future / engine_s
    growth = {
        n: round(timed(lambda n=n: compute_grid(model, lens, text_of(model, n), layers, args.n_future), 1), 3)
        for n in args.growth
    }
    return {
        "dtype": dtype,
        "prompts": kind,
        "tokens": args.tokens,
        "layers": len(layers),
        "n_future": args.n_future,
        "cells": cells,
        "engine_s": round(engine_s, 3),
        "naive_s": round(naive_s, 2),
        "naive_s_per_cell": round(naive_cell_s, 4),
        "naive_cells_timed": args.naive_cells or cells,
        "speedup_vs_naive": round(naive_s / engine_s, 1),
        "engine_positions_per_s": round(engine_tps, 1),
        "forward_positions_per_s": round(forward_tps, 1),
        "roofline_fraction": round(engine_tps / forward_tps, 3),
        "engine_s_by_tokens": growth,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--n-future", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive-cells", type=int, default=60, help="cells timed for the naive loop; 0 = all")
    parser.add_argument("--growth", type=int, nargs="*", default=[8, 32, 128])
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    results = []
    for dtype in args.dtypes:
        result = bench_dtype(dtype, args)
        results.append(result)
        print(
            f"{dtype:>9}: engine {result['engine_s']:.2f} s | naive {result['naive_s']:.1f} s "
            f"({result['naive_s_per_cell'] * 1000:.0f} ms/cell x {result['cells']}) | "
            f"speedup {result['speedup_vs_naive']}x | engine {result['engine_positions_per_s']:.0f} pos/s vs "
            f"forward {result['forward_positions_per_s']:.0f} pos/s = {result['roofline_fraction']:.0%} of roofline | "
            f"by tokens {result['engine_s_by_tokens']} s | peak RSS {result['peak_rss_mb']:.0f} MB"
        )
    first = results[0]
    print(
        json.dumps(
            {
                "speedup_vs_naive": first["speedup_vs_naive"],
                "roofline_fraction": first["roofline_fraction"],
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
