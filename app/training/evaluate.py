"""Evaluate every method on the dev split with the paper's protocol and assemble `eval.json`.

Methods: learned prompt, fixed prompt (paper's text), logit lens (N=0), bigram, linear model approximation, linear
vocabulary probe. The headline compares each method at its own best layer per N.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from app.atomic import atomic_write_json
from app.lens.lenses import PAPER_FIXED_PROMPT, prompt_embeddings
from app.lens.models import LoadedModel
from app.lens.prompts import SoftPromptSet, read_manifest, save_soft_prompt
from app.training.baselines import bigram_table, bigram_topk, linear_baselines, logit_lens_topk
from app.training.data import Dataset, train_token_stream
from app.training.metrics import original_log_probs_table, patched_topk, score

METHODS = ["learned_prompt", "fixed_prompt", "logit_lens", "bigram", "linear_model", "linear_vocab"]
OFFSETS = [0, 1, 2, 3]


def best_layers(per_layer: dict[str, dict]) -> dict[str, dict]:
    """For each N: the layer with the highest precision@1 and its metrics."""
    best = {}
    for n in OFFSETS:
        key = f"N{n}"
        scored = [(values[key]["p1"], int(layer)) for layer, values in per_layer.items() if key in values]
        if scored:
            _, layer = max(scored, key=lambda item: (item[0], -item[1]))
            best[key] = {"layer": layer, **per_layer[str(layer)][key]}
    return best


def headline(methods: dict[str, dict], n_layers: int) -> dict:
    """Method × N at each method's best layer, plus the learned prompt's margin over the best baseline."""
    table = {name: best_layers(result["layers"]) for name, result in methods.items()}
    for entry in table.values():
        for cell in entry.values():
            cell["depth"] = round((cell["layer"] + 1) / n_layers, 3)
    margins = {}
    for n in OFFSETS[1:]:
        key = f"N{n}"
        baselines = [(table[m][key]["p1"], m) for m in table if m != "learned_prompt" and key in table[m]]
        if "learned_prompt" in table and key in table["learned_prompt"] and baselines:
            best_value, best_name = max(baselines)
            margins[key] = {
                "learned_prompt": table["learned_prompt"][key]["p1"],
                "best_baseline": best_name,
                "best_baseline_p1": best_value,
                "margin": round(table["learned_prompt"][key]["p1"] - best_value, 4),
            }
    return {"table": table, "margins": margins}


def evaluate(
    model: LoadedModel,
    dataset: Dataset,
    prompts: SoftPromptSet | None,
    layers: list[int],
    probe_epochs: int = 2,
    progress: bool = True,
    dev_examples: int | None = None,
    only: list[str] | None = None,
) -> dict:
    """Every method's per-layer metrics on the dev split (its first `dev_examples`), and the headline."""
    dev = dataset.dev.subset(slice(0, dev_examples))
    logp = original_log_probs_table(model, dev)
    timings: dict[str, float] = {}
    methods: dict[str, dict] = {}

    def record(name: str, topk: dict[int, torch.Tensor], offsets: list[int], started: float) -> None:
        per_layer = {str(layer): score(values, dev.teacher, logp, offsets) for layer, values in topk.items()}
        methods[name] = {"layers": per_layer}
        timings[name] = round(time.monotonic() - started, 1)

    wanted = set(only or METHODS)
    if prompts is not None and "learned_prompt" in wanted:
        started = time.monotonic()
        contexts = {layer: prompts.for_layer(layer) for layer in layers}
        record("learned_prompt", patched_topk(model, contexts, dev), OFFSETS, started)
    if "fixed_prompt" in wanted:
        started = time.monotonic()
        fixed = prompt_embeddings(model, PAPER_FIXED_PROMPT).float().cpu()
        record("fixed_prompt", patched_topk(model, dict.fromkeys(layers, fixed), dev), OFFSETS, started)
    if "logit_lens" in wanted:
        started = time.monotonic()
        record("logit_lens", logit_lens_topk(model, dev, layers), [0], started)
    if "bigram" in wanted:
        started = time.monotonic()
        table, _ = bigram_table(train_token_stream(model, dataset), model.adapter.vocab_size)
        record("bigram", dict.fromkeys(layers, bigram_topk(table, dev)), OFFSETS, started)
    if wanted & {"linear_model", "linear_vocab"}:
        started = time.monotonic()
        linear_model, linear_vocab = linear_baselines(model, dataset.train, dev, layers, probe_epochs, progress)
        record("linear_model", linear_model, OFFSETS, started)
        record("linear_vocab", linear_vocab, OFFSETS, started)
    n_layers = model.adapter.n_layers
    return {
        "model_id": model.id,
        "model_fingerprint": model.fingerprint,
        "n_layers": n_layers,
        "layers": layers,
        "dev_examples": len(dev),
        "train_examples_available": len(dataset.train),
        "protocol": "teacher forcing with the model's own greedy tokens; precision@1/@5; surprisal = -ln p_original "
        "of the top-1 prediction (nats)",
        "data": {k: v for k, v in dataset.meta.items() if k not in ("train_docs", "dev_docs")}
        | {"train_documents": len(dataset.meta["train_docs"]), "dev_documents": len(dataset.meta["dev_docs"])},
        "prompts": prompt_summary(prompts) if "learned_prompt" in methods else {},
        "seconds": timings,
        "methods": methods,
        "headline": headline(methods, n_layers),
    }


def prompt_summary(prompts: SoftPromptSet | None) -> dict:
    """Training facts of the learned prompts (from their artifact metadata)."""
    if prompts is None:
        return {}
    first = prompts.metadata[min(prompts.metadata)]
    keys = ("trained_on_n", "examples", "steps", "batch", "lr", "init", "seed", "objective")
    return {"directory": str(prompts.directory), **{k: first.get(k) for k in keys}}


def update_manifest_metrics(model: LoadedModel, prompts: SoftPromptSet, report: dict) -> None:
    """Record each trained layer's full dev metrics (learned prompt) in the prompts' manifest."""
    learned = report["methods"].get("learned_prompt", {}).get("layers", {})
    manifest = read_manifest(prompts.directory)
    for layer, tensor in prompts.prompts.items():
        if str(layer) not in learned or str(layer) not in manifest.get("layers", {}):
            continue
        metrics = {f"{n}_{k}": v for n, values in learned[str(layer)].items() for k, v in values.items()}
        metrics["dev_examples"] = report["dev_examples"]
        metadata = dict(prompts.metadata[layer])
        save_soft_prompt(prompts.directory, model, layer, tensor, metadata, metrics)


def write_report(report: dict, directory: Path) -> Path:
    path = directory / "eval.json"
    atomic_write_json(path, report, indent=1, sort_keys=True)
    return path


def headline_markdown(report: dict, paper: dict | None = None) -> str:
    """The headline as Markdown: precision@1 (best layer, depth) per method × N, margins, paper reference."""
    table = report["headline"]["table"]
    lines = [
        "| method | N=0 | N=1 | N=2 | N=3 |",
        "|---|---|---|---|---|",
    ]
    for method in METHODS:
        if method not in table:
            continue
        cells = []
        for n in OFFSETS:
            cell = table[method].get(f"N{n}")
            where = "" if method == "bigram" else f" (L{cell['layer']}, {cell['depth']:.2f})" if cell else ""
            cells.append(f"{cell['p1']:.3f}{where}" if cell else "–")
        lines.append(f"| {method.replace('_', ' ')} | " + " | ".join(cells) + " |")
    if paper:
        curves = paper["precision_at_1_prompt_trained_on_N1"]["learned_prompt"]
        cells = []
        for n in OFFSETS:
            values = [(v, i) for i, v in enumerate(curves[f"N{n}"]) if v is not None]
            best, layer = max(values)
            cells.append(f"{best:.3f} (L{layer}, {(layer + 1) / len(curves[f'N{n}']):.2f})")
        lines.append("| *paper GPT-J learned prompt* | " + " | ".join(cells) + " |")
    lines.append("")
    for key, margin in report["headline"]["margins"].items():
        lines.append(
            f"- {key}: learned prompt {margin['learned_prompt']:.3f} vs best baseline "
            f"{margin['best_baseline'].replace('_', ' ')} {margin['best_baseline_p1']:.3f} "
            f"(margin {margin['margin']:+.3f})"
        )
    return "\n".join(lines) + "\n"


def merge_reports(old: dict, new: dict) -> dict:
    """`new` plus the methods of `old` it did not recompute (same weights, layers and dev set), headline redone."""
    same = all(old.get(k) == new.get(k) for k in ("model_fingerprint", "layers", "dev_examples", "data"))
    if not same:
        return new
    merged = {**new, "methods": {**old["methods"], **new["methods"]}, "seconds": {**old["seconds"], **new["seconds"]}}
    merged["prompts"] = new["prompts"] or old.get("prompts", {})
    merged["headline"] = headline(merged["methods"], new["n_layers"])
    return merged


def per_layer_markdown(report: dict) -> str:
    """Dev precision@1 per layer (rows) for every method × N (columns: N0/N1/N2/N3 joined by slashes)."""
    present = [m for m in METHODS if m in report["methods"]]
    lines = ["| layer | " + " | ".join(m.replace("_", " ") for m in present) + " |"]
    lines.append("|---" * (len(present) + 1) + "|")
    for layer in report["layers"]:
        cells = []
        for method in present:
            values = report["methods"][method]["layers"].get(str(layer), {})
            cells.append("/".join(f"{values[f'N{n}']['p1']:.2f}" if f"N{n}" in values else "–" for n in OFFSETS))
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
