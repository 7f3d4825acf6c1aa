"""Benchmark the grid engine against the naive per-cell loop and the model's plain batched-forward throughput.

Run: `make bench` (or `python benchmarks/grid.py --dtypes float32 bfloat16 --repeats 3`). Everything is measured
side by side in one run on the same model, device and dtype; each figure is the median of `--repeats` runs; the last
line is JSON. The naive loop is timed on an evenly spread sample of cells (`--naive-cells`, 0 = all) and scaled to
the full grid, since all of it takes minutes.

On a GPU without the real weights at hand (no hub), `--synthetic gpt-j-6b --device cuda` builds the model at its real
shape with random weights: speed and memory are those of the real model; its predictions mean nothing.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GPTJConfig, PretrainedConfig

from future_lens.lens.architectures import block_output_tensor
from future_lens.lens.lenses import FutureLens
from future_lens.lens.models import (
    CATALOG,
    DEFAULT_MODEL,
    LoadedModel,
    converted_dir,
    load_model,
    resolve_dtype,
    wrap_model,
)
from future_lens.lens.prompts import SoftPromptSet, default_prompt_dir, load_soft_prompts
from future_lens.lens.source import run_source_pass, tokenize
from future_lens.lens.tracing import save

BASE_TEXT = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named after "
    "the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889 for the World's "
    "Fair. Locally nicknamed the Iron Lady, it was criticised by some of France's leading artists and "
    "intellectuals for its design, but it has since become a global cultural icon of France and one of the most "
    "recognisable structures in the world. "
)


def embedded_dir() -> Path:
    return converted_dir(CATALOG[DEFAULT_MODEL])


# Real shapes of models whose weights may not be at hand; random weights of these shapes time like the real thing.
SYNTHETIC: dict[str, Callable[[], PretrainedConfig]] = {
    "gpt-j-6b": GPTJConfig,  # the config's defaults are GPT-J-6B's: 28 blocks, d=4096
    "smollm2-135m": lambda: AutoConfig.from_pretrained(embedded_dir()),  # the embedded model's own config
}


def synthetic_model(name: str, device: str, dtype: str, tokenizer_dir: str | None) -> LoadedModel:
    """A random-weight model of a real architecture and size, built directly on the device in the target dtype."""
    torch_dtype = resolve_dtype(dtype, torch.device(device))
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or embedded_dir())
    with torch.device(device):
        hf = AutoModelForCausalLM.from_config(SYNTHETIC[name](), dtype=torch_dtype)
    return wrap_model(f"synthetic-{name}", hf, tokenizer)


def synchronize(model: LoadedModel) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


def peak_memory_mb(model: LoadedModel) -> dict[str, float]:
    peaks = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if model.device.type == "cuda":
        peaks["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(model.device) / 2**20, 1)
    return peaks


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


def timed(model: LoadedModel, fn, repeats: int) -> float:
    """Median wall seconds of `repeats` calls (the device's queued work included)."""
    samples = []
    for _ in range(repeats):
        synchronize(model)
        started = time.perf_counter()
        fn()
        synchronize(model)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def roofline(model: LoadedModel, rows: int, length: int = 32, repeats: int = 3) -> float:
    """Plain batched-forward throughput (token positions/s), logits for the last position only."""
    ids = torch.randint(100, 10_000, (rows, length), device=model.device)
    with torch.inference_mode():
        model.hf(ids[:4], logits_to_keep=1)  # warm-up
        seconds = timed(model, lambda: model.hf(ids, logits_to_keep=1), repeats)
    return rows * length / seconds


@torch.inference_mode()
def naive_cell(model: LoadedModel, context: torch.Tensor, layer: int, state: torch.Tensor, n_future: int) -> None:
    """The naive per-cell loop timed against the engine (the paper demo's way): N nnsight traces of the whole
    sequence (no KV cache), block `layer`'s output at the context's last position replaced by `state` in each, the
    argmax appended. The tests' oracle (tests/reference.py) checks what the engine computes; this only times it."""
    envoy = model.nnsight
    blocks = model.adapter.locate_blocks(envoy)
    patch_at = context.shape[0] - 1
    embeds = context.to(model.device, model.dtype)[None]
    for _ in range(n_future):
        with envoy.trace(inputs_embeds=embeds):
            block_output_tensor(blocks[layer].output)[0, patch_at] = state.to(model.device, model.dtype)
            logits = save(envoy.output.logits)
        best_id = torch.softmax(logits[0, -1].float(), dim=-1).argmax()
        embeds = torch.cat([embeds, model.adapter.embed_tokens(best_id.view(1, 1))], dim=1)


def naive_seconds_per_cell(
    model: LoadedModel, lens: FutureLens, text: str, n_future: int, sample: int, repeats: int
) -> float:
    """Median over `repeats` of the naive loop's mean seconds per cell, on an evenly spread sample of cells."""
    source = run_source_pass(model, tokenize(model, text))
    n_layers, n_tokens = source.hidden.shape[:2]
    cells = [(layer, t) for layer in range(n_layers) for t in range(n_tokens)]
    if sample:
        cells = cells[:: max(1, len(cells) // sample)][:sample]

    def loop() -> None:
        for layer, t in cells:
            naive_cell(model, lens.context_embeddings(layer), layer, source.hidden[layer, t], n_future)

    return timed(model, loop, repeats) / len(cells)


def bench_model(args: argparse.Namespace, dtype: str) -> LoadedModel:
    if args.synthetic:
        return synthetic_model(args.synthetic, args.device, dtype, args.tokenizer)
    return load_model(args.model, device=args.device, dtype=dtype)


def bench_dtype(dtype: str, args: argparse.Namespace) -> dict[str, object]:
    model = bench_model(args, dtype)
    prompts, kind = prompts_for(model)
    lens = FutureLens(model, prompts)
    layers = list(range(model.adapter.n_layers))
    text = text_of(model, args.tokens)
    lens.grid(text_of(model, 4), layers=layers, n_future=args.n_future)  # warm-up
    grids = []
    engine_s = timed(model, lambda: grids.append(lens.grid(text, layers=layers, n_future=args.n_future)), args.repeats)
    cells = len(layers) * args.tokens
    naive_cell_s = naive_seconds_per_cell(model, lens, text, args.n_future, args.naive_cells, args.repeats)
    naive_s = naive_cell_s * cells
    roofline_rows = args.roofline_rows or (256 if model.device.type == "cuda" else 64)
    forward_tps = roofline(model, roofline_rows, repeats=args.repeats)
    engine_tps = cells * args.n_future / engine_s
    growth = {
        n: round(
            timed(model, lambda n=n: lens.grid(text_of(model, n), layers=layers, n_future=args.n_future), args.repeats),
            3,
        )
        for n in args.growth
    }
    return {
        "model": model.id,
        "device": str(model.device),
        "dtype": dtype,
        "repeats": args.repeats,
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
        "engine_last_run_ms": {part: round(ms, 1) for part, ms in grids[-1].timings_ms.items()},
        "engine_s_by_tokens": growth,
        **peak_memory_mb(model),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="catalog id or local HF directory")
    parser.add_argument("--synthetic", choices=sorted(SYNTHETIC), help="random weights of this real shape instead")
    parser.add_argument("--tokenizer", help="tokenizer directory for --synthetic (default: the embedded model's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--n-future", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive-cells", type=int, default=30, help="cells timed for the naive loop; 0 = all")
    parser.add_argument("--roofline-rows", type=int, default=0, help="batch of the plain forward (0: by device)")
    parser.add_argument("--growth", type=int, nargs="*", default=[8, 32, 128])
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    results = []
    for dtype in args.dtypes:
        result = bench_dtype(dtype, args)
        results.append(result)
        print(
            f"{result['model']} {result['device']} {dtype:>9}: engine {result['engine_s']:.2f} s | "
            f"naive {result['naive_s']:.1f} s "
            f"({result['naive_s_per_cell'] * 1000:.0f} ms/cell x {result['cells']}) | "
            f"speedup {result['speedup_vs_naive']}x | engine {result['engine_positions_per_s']:.0f} pos/s vs "
            f"forward {result['forward_positions_per_s']:.0f} pos/s = {result['roofline_fraction']:.0%} of roofline | "
            f"by tokens {result['engine_s_by_tokens']} s | peak RSS {result['peak_rss_mb']:.0f} MB"
            + (f", GPU {result['peak_gpu_mb']:.0f} MB" if "peak_gpu_mb" in result else "")
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
