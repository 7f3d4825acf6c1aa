"""A small evaluation report in the current `future-lens eval` layout (eval.json + PNG plots), written by the tests
themselves so that they never depend on a report produced elsewhere."""

from __future__ import annotations

import io
import json
from pathlib import Path

#: Per shade (mean probability 0–10%, …, 90–100%): held-out cells counted and the share that was right.
MEAN_PROB_BINS = [
    (400, 0.04),
    (150, 0.11),
    (80, 0.19),
    (40, 0.27),
    (25, 0.38),
    (19, 0.45),
    (10, 0.5),
    (5, 0.6),
    (2, 0.7),
    (1, 1.0),
]
FIRST_TOKEN_BINS = [
    (300, 0.06),
    (120, 0.22),
    (90, 0.31),
    (60, 0.42),
    (50, 0.5),
    (40, 0.61),
    (30, 0.7),
    (20, 0.83),
    (15, 0.87),
    (7, 1.0),
]
LEARNED_P1 = {0: "0.21/0.05/0.03/0.02", 15: "0.48/0.13/0.07/0.05", 29: "0.93/0.17/0.09/0.06"}
PROTOCOL = "teacher_forced: the model's own greedy tokens fed before offset N, precision@1/@5"


def reliability(bins: list[tuple[int, float]]) -> dict:
    """The `reliability()` layout of future_lens/training/metrics.py for given (count, accuracy) per bin."""
    rows = [
        {"low": i / 10, "high": (i + 1) / 10, "count": count, "confidence": i / 10 + 0.05, "accuracy": accuracy}
        for i, (count, accuracy) in enumerate(bins)
    ]
    n = sum(count for count, _ in bins)
    return {"bins": rows, "ece": 0.08, "n": n, "accuracy_at_0.9": bins[-1][1], "count_at_0.9": bins[-1][0]}


def report_tables(layers: list[int]) -> list[dict]:
    """The five tables `future-lens eval` writes, in reading order, with made-up numbers."""
    methods = ["learned prompt", "fixed prompt", "logit lens"]
    best = [["learned prompt", "0.930 (L29)", "0.170 (L29)", "0.090 (L29)", "0.060 (L29)"]]
    best += [["fixed prompt", "0.930 (L29)", "0.080 (L15)", "0.040 (L15)", "0.030 (L15)"]]
    best += [["logit lens", "0.930 (L29)", "–", "–", "–"]]
    per_layer = [
        [str(layer), LEARNED_P1.get(layer, "0.30/0.10/0.05/0.04"), "0.30/0.08/0.04/0.03", "0.25/0.06/0.03/0.02"]
        for layer in layers
    ]
    return [
        {"name": "headline_teacher_forced", "caption": "precision@1 at each method's best layer, teacher-forced",
         "columns": ["method", "N=0", "N=1", "N=2", "N=3"], "rows": best},
        {"name": "headline_free_running", "caption": "precision@1 of token N when the method decodes its own phrase",
         "columns": ["method", "N=0", "N=1", "N=2", "N=3"], "rows": best},
        {"name": "positions", "caption": "N=1 precision@1 by the cell's position in the text",
         "columns": ["method (best N=1 layer)", "positions 1-4", "positions 5-16"],
         "rows": [[f"{m} (L29)", "0.100 / 0.100", "0.200 / 0.150"] for m in methods[:2]]},
        {"name": "calibration", "caption": "calibration over all dev cells and layers",
         "columns": ["method", "ECE, first token", "ECE, cell mean prob (N=4)"],
         "rows": [["learned prompt", "0.081", "0.064"], ["fixed prompt", "0.120", "0.090"],
                  ["logit lens", "0.300", "–"]]},
        {"name": "per_layer", "caption": "precision@1 per layer, N=0/1/2/3",
         "columns": ["layer", "learned prompt (teacher-forced)", "fixed prompt (teacher-forced)", "logit lens"],
         "rows": per_layer},
    ]  # fmt: skip


def eval_report(model_id: str, fingerprint: str, layers: list[int]) -> dict:
    """An eval.json document in the current layout."""
    calibrated = {"first_token": reliability(FIRST_TOKEN_BINS), "mean_prob": reliability(MEAN_PROB_BINS)}
    return {
        "model_id": model_id,
        "model_fingerprint": fingerprint,
        "model_quantization": "4-bit GGUF (Q4_1), dequantised to float32 on load: not the original bf16 weights",
        "n_layers": 30,
        "layers": layers,
        "dev_examples": 192,
        "train_examples_available": 1600,
        "protocol": PROTOCOL,
        "prompts": {"examples": "1440", "lr": "0.002", "objective": "kl(p_original||p_patched), teacher-forced"},
        "methods": {
            "learned_prompt": {"layers": {}, "calibration": calibrated},
            "fixed_prompt": {"layers": {}, "calibration": calibrated},
            "logit_lens": {"layers": {}, "calibration": {"first_token": reliability(FIRST_TOKEN_BINS)}},
        },
        "tables": report_tables(layers),
    }


def plot_png(title: str) -> bytes:
    """A small real PNG (a line plot), as the evaluation's plots are."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(4, 2.5), dpi=60)
    axes.plot([0, 0.5, 1], [0.2, 0.48, 0.93], marker="o")
    axes.set_title(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def write_report(reports_dir: Path, model_id: str, fingerprint: str, layers: list[int]) -> dict:
    """`reports_dir/<model_id>/` with eval.json and the three plots; returns the JSON written."""
    folder = reports_dir / model_id
    folder.mkdir(parents=True, exist_ok=True)
    report = eval_report(model_id, fingerprint, layers)
    (folder / "eval.json").write_text(json.dumps(report, indent=1))
    for stem in ("eval", "calibration", "learning_curve", "kl"):
        (folder / f"{stem}.png").write_bytes(plot_png(stem))
    return report
