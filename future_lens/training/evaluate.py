"""Evaluate every method on the dev split with the paper's protocol and assemble `eval.json`.

Methods: learned prompt, fixed prompt (paper's text), logit lens (N=0), bigram, linear model approximation, linear
vocabulary probe. Each is scored teacher-forced (the paper's protocol) and free-running (what the grid shows: the
lens decodes its own phrase), overall and by position bucket; the lenses' probabilities are checked for
calibration. The headline compares each method at its own best layer per N, in both protocols.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from future_lens.atomic import atomic_write_json
from future_lens.lens.engine import CellPredictions, PatchedCells, decode_patched
from future_lens.lens.lenses import IDENTITY_PATCHSCOPE_PROMPT, PAPER_FIXED_PROMPT, prompt_embeddings
from future_lens.lens.lenses import logit_lens_topk as lens_topk
from future_lens.lens.linear import LinearMapLens, LinearMaps
from future_lens.lens.models import LoadedModel
from future_lens.lens.prompts import SoftPromptSet, read_manifest, save_soft_prompt
from future_lens.lens.registry import lens_specs
from future_lens.training.baselines import bigram_chain, bigram_table, bigram_topk, linear_baselines
from future_lens.training.data import Dataset, Examples, train_token_stream
from future_lens.training.metrics import (
    MAX_N,
    POSITION_BUCKETS,
    TOP_K,
    free_running_score,
    original_log_probs_table,
    patched_topk,
    reliability,
    score,
)
from future_lens.training.objective import kl_divergence

#: The baselines of the paper that are no lens (they read no grid cell).
BASELINES = ["bigram", "linear_model", "linear_vocab"]
#: Every method scored: the registered lenses under their report names (`LensSpec.report_key`), then the baselines.
METHODS = [spec.report_key for spec in lens_specs() if spec.report_key] + BASELINES
#: methods that decode phrases (free-running differs from forced)
PATCHED = tuple(spec.report_key for spec in lens_specs() if spec.report_key and spec.decodes)
#: the linear lenses and the kind of maps each reads with (N = 0 only, like the logit lens)
LINEAR_METHODS = {
    spec.report_key: spec.lens_class.kind
    for spec in lens_specs()
    if spec.report_key and issubclass(spec.lens_class, LinearMapLens)
}
OFFSETS = [0, 1, 2, 3]


def best_layers(
    per_layer: dict[str, dict], protocol: str = "teacher_forced", chosen_on: dict[str, dict] | None = None
) -> dict[str, dict]:
    """For each N: the layer with the highest precision@1 under `protocol` (or `free_running`) and its metrics. With
    `chosen_on` (the same metrics on other examples: the dev selection part) the layer is chosen there and the
    metrics reported from `per_layer`, so the reported examples made no choice."""
    best = {}
    section = {layer: protocol_metrics(values, protocol) for layer, values in per_layer.items()}
    choosing = {layer: protocol_metrics(values, protocol) for layer, values in (chosen_on or per_layer).items()}
    for n in OFFSETS:
        key = f"N{n}"
        scored = [(values[key]["p1"], int(layer)) for layer, values in choosing.items() if key in values]
        if scored:
            _, layer = max(scored, key=lambda item: (item[0], -item[1]))
            best[key] = {"layer": layer, **section[str(layer)][key]}
    return best


def protocol_metrics(values: dict, protocol: str) -> dict:
    """One layer's metrics under a protocol: the teacher-forced `N0..N3` or the `free` section."""
    return values.get("free", {}) if protocol == "free_running" else values


def margins_of(table: dict[str, dict]) -> dict[str, dict]:
    """The learned prompt's precision@1 minus the best other method's, at each one's best layer, for N >= 1."""
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
    return margins


def headline(methods: dict[str, dict], n_layers: int) -> dict:
    """Method × N at each method's best layer (teacher-forced and free-running), and the learned prompt's margins."""
    out = {}
    for protocol, suffix in (("teacher_forced", ""), ("free_running", "_free")):
        table = {
            name: best_layers(result["layers"], protocol, result.get("selection_layers"))
            for name, result in methods.items()
        }
        table = {name: entry for name, entry in table.items() if entry}
        for entry in table.values():
            for cell in entry.values():
                cell["depth"] = round((cell["layer"] + 1) / n_layers, 3)
        out[f"table{suffix}"] = table
        out[f"margins{suffix}"] = margins_of(table)
    return out


@torch.inference_mode()
def free_running_patched(
    model: LoadedModel, contexts: dict[int, torch.Tensor], dev: Examples
) -> dict[int, CellPredictions]:
    """Per layer, the phrase (N = 0..3) the lens decodes freely from each dev state, as the grid does."""
    layers = list(contexts)
    distinct = list({id(context): context for context in contexts.values()}.values())
    index_of = {id(context): i for i, context in enumerate(distinct)}
    rows = len(dev)
    cells = PatchedCells(
        distinct,
        torch.tensor([index_of[id(contexts[layer])] for layer in layers]).repeat_interleave(rows),
        torch.tensor(layers).repeat_interleave(rows),
        dev.states[:, layers].transpose(0, 1).reshape(rows * len(layers), -1),
    )
    predictions = decode_patched(model, cells, n_future=MAX_N + 1, top_k=1)
    return {layer: predictions.take(torch.arange(i * rows, (i + 1) * rows)) for i, layer in enumerate(layers)}


@torch.inference_mode()
def readout_kl(model: LoadedModel, hidden: torch.Tensor, log_p: torch.Tensor, chunk: int = 64) -> float:
    """Mean KL(p_model ‖ p_lens) in nats of the readout (final norm + unembedding) of `hidden` [D, d] against the
    model's own next-token log-probabilities `log_p` [D, V]."""
    total = 0.0
    for start in range(0, len(hidden), chunk):
        rows = slice(start, start + chunk)
        logits = model.adapter.logits_from_hidden(hidden[rows].to(model.device, model.dtype)).float()
        target = log_p[rows].float().to(logits.device)
        total += kl_divergence(target, torch.log_softmax(logits, -1)).sum().item()
    return round(total / max(len(hidden), 1), 5)


def calibration_of(predictions: dict[int, CellPredictions], teacher: torch.Tensor) -> dict:
    """Reliability of a lens's probabilities over all its dev cells: the first token's probability vs that token
    being the model's own, and a cell's mean probability (N = 4 tokens, the grid's colour) vs its share of right
    tokens."""
    probs = torch.cat([p.probs for p in predictions.values()])
    hits = torch.cat([(p.token_ids == teacher[:, : p.token_ids.shape[1]]) for p in predictions.values()]).float()
    result = {"first_token": reliability(probs[:, 0], hits[:, 0])}
    if probs.shape[1] > 1:
        result["mean_prob"] = reliability(probs.mean(1), hits.mean(1))
    return result


def evaluate(
    model: LoadedModel,
    dataset: Dataset,
    prompts: SoftPromptSet | None,
    layers: list[int],
    probe_epochs: int = 2,
    progress: bool = True,
    dev_examples: int | None = None,
    only: list[str] | None = None,
    linear_maps: dict[str, LinearMaps] | None = None,
    selection: torch.Tensor | None = None,
) -> dict:
    """Every method's per-layer metrics on the dev split (its first `dev_examples`), and the headline. The linear
    lenses are scored when their maps are given (`linear_maps`: kind -> maps). With `selection` (indices of the dev
    examples of the selection part) the metrics under `layers` are those of the other examples (the report part),
    the selection part's go under `selection_layers`, and each best layer is chosen on the selection part."""
    dev = dataset.dev.subset(slice(0, dev_examples))
    logp = original_log_probs_table(model, dev)
    positions = dev.lengths
    timings: dict[str, float] = {}
    methods: dict[str, dict] = {}
    everything = torch.arange(len(dev))
    chosen = None if selection is None else selection[selection < len(dev)]
    reported = everything if chosen is None else everything[~torch.isin(everything, chosen)]

    def metrics(topk: dict[int, torch.Tensor], offsets: list[int], free: dict[int, torch.Tensor], rows) -> dict:
        teacher, log_p, at = dev.teacher[rows], logp[rows], positions[rows]
        return {
            str(layer): {
                **score(values[rows], teacher, log_p, offsets, at),
                "free": free_running_score(free[layer][rows], teacher, at),
            }
            for layer, values in topk.items()
        }

    def record(name: str, topk: dict[int, torch.Tensor], offsets: list[int], free: dict[int, torch.Tensor]) -> None:
        """Teacher-forced top-k [D, len(offsets), K] and free-running phrases [D, n] per layer."""
        methods[name] = {"layers": metrics(topk, offsets, free, reported)}
        if chosen is not None:
            methods[name]["selection_layers"] = metrics(topk, offsets, free, chosen)

    def patched(name: str, contexts: dict[int, torch.Tensor]) -> None:
        started = time.monotonic()
        decoded = free_running_patched(model, contexts, dev)
        record(name, patched_topk(model, contexts, dev), OFFSETS, {k: v.token_ids for k, v in decoded.items()})
        shown = {layer: cells.take(reported) for layer, cells in decoded.items()}
        methods[name]["calibration"] = calibration_of(shown, dev.teacher[reported])
        timings[name] = round(time.monotonic() - started, 1)

    wanted = set(only or METHODS)
    if prompts is not None and "learned_prompt" in wanted:
        patched("learned_prompt", {layer: prompts.for_layer(layer) for layer in layers})
    if "fixed_prompt" in wanted:
        fixed = prompt_embeddings(model, PAPER_FIXED_PROMPT).float().cpu()
        patched("fixed_prompt", dict.fromkeys(layers, fixed))

    def readout(name: str, maps: LinearMaps | None) -> None:
        """A next-token readout of each state (the logit lens; through per-layer maps for the linear lenses)."""
        started = time.monotonic()
        states = {layer: dev.states[:, layer] for layer in layers}
        if maps is not None:
            states = {layer: maps.apply(h, torch.full((len(h),), layer)) for layer, h in states.items()}
        topk = {layer: lens_topk(model, h, TOP_K)[1].cpu()[:, None] for layer, h in states.items()}
        record(name, topk, [0], {layer: values[:, :, 0] for layer, values in topk.items()})
        for layer, h in states.items():
            methods[name]["layers"][str(layer)]["kl"] = readout_kl(model, h[reported], logp[reported, 0])
        first = {layer: lens_topk(model, h, 1) for layer, h in states.items()}
        decoded = {
            layer: CellPredictions(ids.cpu(), probs.cpu(), ids.cpu(), probs.cpu()).take(reported)
            for layer, (probs, ids) in first.items()
        }
        methods[name]["calibration"] = calibration_of(decoded, dev.teacher[reported])
        timings[name] = round(time.monotonic() - started, 1)

    if "identity_patchscope" in wanted:
        identity = prompt_embeddings(model, IDENTITY_PATCHSCOPE_PROMPT).float().cpu()
        patched("identity_patchscope", dict.fromkeys(layers, identity))
    if "logit_lens" in wanted:
        readout("logit_lens", None)
    for name, kind in LINEAR_METHODS.items():
        if name in wanted and linear_maps and kind in linear_maps:
            readout(name, linear_maps[kind])
    if "bigram" in wanted:
        started = time.monotonic()
        table, _ = bigram_table(train_token_stream(model, dataset), model.adapter.vocab_size)
        chained = bigram_chain(table, dev.last_tokens(), MAX_N + 1)
        record("bigram", dict.fromkeys(layers, bigram_topk(table, dev)), OFFSETS, dict.fromkeys(layers, chained))
        timings["bigram"] = round(time.monotonic() - started, 1)
    if wanted & {"linear_model", "linear_vocab"}:
        started = time.monotonic()
        linear_model, linear_vocab = linear_baselines(model, dataset.train, dev, layers, probe_epochs, progress)
        for name, topk in (("linear_model", linear_model), ("linear_vocab", linear_vocab)):
            # each offset is read from h alone, never from earlier predictions: free-running = teacher-forced
            record(name, topk, OFFSETS, {layer: values[:, :, 0] for layer, values in topk.items()})
        timings["linear"] = round(time.monotonic() - started, 1)
    n_layers = model.adapter.n_layers
    return {
        "model_id": model.id,
        "model_fingerprint": model.fingerprint,
        "model_quantization": model.quantization,
        "n_layers": n_layers,
        "layers": layers,
        "dev_examples": len(reported),
        "selection_examples": 0 if chosen is None else len(chosen),
        "train_examples_available": len(dataset.train),
        "protocol": "teacher_forced: the model's own greedy tokens fed before offset N, precision@1/@5, surprisal = "
        "-ln p_original of the top-1 prediction (nats); free: the method decodes its own phrase (the grid's "
        "view), precision@1 of token N and whole-phrase match; p1_by_position: by grid position (1-based)",
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
    keys = ("trained_on_n", "examples", "steps", "batch", "lr", "init", "seed", "objective")
    summary: dict[str, object] = {"directory": str(prompts.directory)}
    for key in keys:
        by_value: dict[object, list[int]] = {}
        for layer in sorted(prompts.metadata):
            by_value.setdefault(prompts.metadata[layer].get(key), []).append(layer)
        # one value for every layer, else which layers have which (e.g. a budget extended for some layers)
        summary[key] = next(iter(by_value)) if len(by_value) == 1 else {str(v): ls for v, ls in by_value.items()}
    return summary


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


LABELS = {
    "learned_prompt": "learned prompt",
    "fixed_prompt": "fixed prompt",
    "identity_patchscope": "identity patchscope",
    "logit_lens": "logit lens",
    "tuned_lens": "tuned lens",
    "jacobian_lens": "Jacobian lens",
    "bigram": "bigram",
    "linear_model": "linear model approx.",
    "linear_vocab": "linear vocab probe",
}


def _table(name: str, columns: list[str], rows: list[list[str]], caption: str) -> dict:
    return {"name": name, "caption": caption, "columns": columns, "rows": rows}


def _best_cell(cell: dict | None, method: str) -> str:
    """`0.339 (L4)`: precision@1 at the method's best layer (no layer for the layer-free bigram)."""
    if not cell:
        return "–"
    return f"{cell['p1']:.3f}" if method == "bigram" else f"{cell['p1']:.3f} (L{cell['layer']})"


def _paper_row(paper: dict) -> list[str]:
    curves = paper["precision_at_1_prompt_trained_on_N1"]["learned_prompt"]
    cells = []
    for n in OFFSETS:
        best, layer = max((v, i) for i, v in enumerate(curves[f"N{n}"]) if v is not None)
        cells.append(f"{best:.3f} (L{layer})")
    return ["paper: GPT-J-6B learned prompt", *cells]


def _present(report: dict) -> list[str]:
    return [m for m in METHODS if m in report["methods"]]


def report_tables(report: dict, paper: dict | None = None) -> list[dict]:
    """The report as plain tables (name, caption, columns, rows of text) in reading order, written into eval.json
    for /about and eval.md."""
    head, methods = report["headline"], _present(report)
    columns = ["method", *(f"N={n}" for n in OFFSETS)]
    teacher = [[LABELS[m], *(_best_cell(head["table"].get(m, {}).get(f"N{n}"), m) for n in OFFSETS)] for m in methods]
    if paper:
        teacher.append(_paper_row(paper))
    free = [
        [LABELS[m], *(_best_cell(head.get("table_free", {}).get(m, {}).get(f"N{n}"), m) for n in OFFSETS)]
        for m in methods
    ]
    tables = [
        _table(
            "headline_teacher_forced",
            columns,
            teacher,
            "precision@1 at each method's best layer, teacher-forced (the paper's protocol)",
        ),
        _table(
            "headline_free_running",
            columns,
            free,
            "precision@1 of token N when the method decodes its own phrase, as the grid shows it",
        ),
        _position_table(report, methods),
    ]
    calibrated = [m for m in methods if "calibration" in report["methods"][m]]
    if calibrated:
        tables.append(_calibration_table(report, calibrated))
    with_kl = [m for m in methods if any("kl" in v for v in report["methods"][m]["layers"].values())]
    if with_kl:
        tables.append(_kl_table(report, with_kl))
    if report.get("tuned_lens_curve"):
        tables.append(_tuned_curve_table(report["tuned_lens_curve"]))
    return [*tables, _per_layer_table(report, methods)]


def _kl_table(report: dict, methods: list[str]) -> dict:
    """KL(p_model ‖ p_lens) per layer of the next-token readouts."""
    rows = []
    for layer in report["layers"]:
        values = [report["methods"][m]["layers"].get(str(layer), {}).get("kl") for m in methods]
        rows.append([str(layer), *("–" if v is None else f"{v:.3f}" for v in values)])
    return _table(
        "kl_per_layer",
        ["layer", *(LABELS[m] for m in methods)],
        rows,
        "KL(p_model ‖ p_lens) in nats per layer at N=0, on the same dev states (lower is closer to the model)",
    )


def _tuned_curve_table(curve: dict) -> dict:
    """The tuned lens's dev KL (selection part) during its fit: the mean over translated layers and a few layers."""
    points = curve["curve"]
    n_layers = len(points[0]["kl"])
    shown = sorted({0, n_layers // 4, n_layers // 2, 3 * n_layers // 4, n_layers - 2})
    rows = [
        [str(p["step"]), f"{sum(p['kl'][:-1]) / (n_layers - 1):.3f}", *(f"{p['kl'][layer]:.3f}" for layer in shown)]
        for p in points
    ]
    return _table(
        "tuned_lens_curve",
        ["step", "mean over layers", *(f"L{layer}" for layer in shown)],
        rows,
        "tuned lens fit: KL(p_model ‖ p_lens) in nats on the dev selection part at every position of "
        f"{curve['dev_windows']} windows, by SGD step (step 0 = the identity = the logit lens)",
    )


def who_wins(report: dict) -> list[str]:
    """Sentences that state, from the numbers, which method leads where (so the report's prose stays true)."""
    head = report["headline"]["table"]
    lines = []
    for n in OFFSETS:
        key = f"N{n}"
        scored = sorted(((cell[key]["p1"], m) for m, cell in head.items() if key in cell), reverse=True)
        if len(scored) >= 2:
            (top, winner), (second, runner) = scored[0], scored[1]
            lines.append(
                f"N={n}: {LABELS[winner]} leads at {top:.3f}, then {LABELS[runner]} at {second:.3f} "
                f"({top - second:+.3f})."
            )
    kl = {
        m: {int(layer): v["kl"] for layer, v in report["methods"][m]["layers"].items() if "kl" in v}
        for m in report["methods"]
    }
    kl = {m: values for m, values in kl.items() if values}
    if len(kl) >= 2:
        layers = sorted(next(iter(kl.values())))
        wins: dict[str, list[int]] = {}
        for layer in layers:
            best = min(kl, key=lambda m: kl[m].get(layer, float("inf")))
            wins.setdefault(best, []).append(layer)
        lines.append(
            "Lowest KL to the model at N=0: "
            + "; ".join(f"{LABELS[m]} at {len(ls)} of {len(layers)} layers" for m, ls in wins.items())
            + "."
        )
    return lines


def _position_table(report: dict, methods: list[str]) -> dict:
    """N=1 precision@1 by grid position bucket at the method's best N=1 layer, teacher-forced and free-running."""
    buckets = [f"{low}-{high}" for low, high in POSITION_BUCKETS]
    rows = []
    for method in methods:
        best = report["headline"]["table"].get(method, {}).get("N1")
        if not best:
            continue
        values = report["methods"][method]["layers"][str(best["layer"])]
        cells = []
        for bucket in buckets:
            forced = values["N1"].get("p1_by_position", {}).get(bucket)
            free = values.get("free", {}).get("N1", {}).get("p1_by_position", {}).get(bucket)
            cells.append(" / ".join("–" if v is None else f"{v:.3f}" for v in (forced, free)))
        rows.append([f"{LABELS[method]} (L{best['layer']})", *cells])
    return _table(
        "positions",
        ["method (best N=1 layer)", *(f"positions {b}" for b in buckets)],
        rows,
        "N=1 precision@1 by the cell's position in the text (teacher-forced / free-running)",
    )


def _per_layer_table(report: dict, methods: list[str]) -> dict:
    """Precision@1 per layer, N=0/1/2/3 in each cell; lenses with a free-running view get a second column."""
    columns, getters = ["layer"], []
    for method in methods:
        columns.append(f"{LABELS[method]} (teacher-forced)" if method in PATCHED else LABELS[method])
        getters.append((method, "teacher_forced"))
        if method in PATCHED:
            columns.append(f"{LABELS[method]} (free-running)")
            getters.append((method, "free_running"))
    rows = []
    for layer in report["layers"]:
        row = [str(layer)]
        for method, protocol in getters:
            values = protocol_metrics(report["methods"][method]["layers"].get(str(layer), {}), protocol)
            row.append("/".join(f"{values[f'N{n}']['p1']:.2f}" if f"N{n}" in values else "–" for n in OFFSETS))
        rows.append(row)
    return _table("per_layer", columns, rows, "precision@1 per layer, N=0/1/2/3")


def _calibration_table(report: dict, methods: list[str]) -> dict:
    rows = []
    for method in methods:
        calibration = report["methods"][method]["calibration"]
        first, mean = calibration["first_token"], calibration.get("mean_prob")
        at_90 = first["accuracy_at_0.9"]
        rows.append(
            [
                LABELS[method],
                f"{first['ece']:.3f}",
                "–" if at_90 is None else f"{at_90:.3f} ({first['count_at_0.9']} of {first['n']})",
                "–" if mean is None else f"{mean['ece']:.3f}",
            ]
        )
    return _table(
        "calibration",
        ["method", "ECE, first token", "right when first token p ≥ 0.9 (cells)", "ECE, cell mean prob (N=4)"],
        rows,
        "calibration over all dev cells and layers (is a probability of x right a fraction x of the time)",
    )


def markdown_table(table: dict) -> str:
    lines = [f"{table['caption']}:", "", "| " + " | ".join(table["columns"]) + " |"]
    lines.append("|" + "---|" * len(table["columns"]))
    lines += ["| " + " | ".join(row) + " |" for row in table["rows"]]
    return "\n".join(lines) + "\n"


def report_markdown(report: dict) -> str:
    """eval.md: who wins where, every table of `report_tables`, then the margins."""
    parts = []
    if report.get("dev_part"):
        parts.append(f"Dev split part: **{report['dev_part']}** ({report['dev_examples']} examples).\n")
    parts.append("Who wins where (computed from the numbers below):\n")
    parts += [f"- {line}" for line in who_wins(report)]
    parts.append("")
    parts += [markdown_table(table) for table in report["tables"]]
    for protocol, key in (("teacher-forced", "margins"), ("free-running", "margins_free")):
        for n, margin in report["headline"].get(key, {}).items():
            parts.append(
                f"- {protocol} {n}: learned prompt {margin['learned_prompt']:.3f} vs best other "
                f"{LABELS.get(margin['best_baseline'], margin['best_baseline'])} {margin['best_baseline_p1']:.3f} "
                f"(margin {margin['margin']:+.3f})"
            )
    return "\n".join(parts) + "\n"


def merge_reports(old: dict, new: dict) -> dict:
    """`new` plus the methods of `old` it did not recompute (same weights, layers and dev set), headline redone."""
    same = all(old.get(k) == new.get(k) for k in ("model_fingerprint", "layers", "dev_examples", "data"))
    same = same and (old.get("dev_part") or "all") == (new.get("dev_part") or "all")  # older reports: all of dev
    if not same:
        return new
    merged = {**new, "methods": {**old["methods"], **new["methods"]}, "seconds": {**old["seconds"], **new["seconds"]}}
    merged["prompts"] = new["prompts"] or old.get("prompts", {})
    merged["headline"] = headline(merged["methods"], new["n_layers"])
    return merged
