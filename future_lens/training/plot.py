"""Figure-4-style plot: precision@1 vs layer depth, one panel per N, every method; the paper's GPT-J curve dashed.

`figure_data` turns a report into plain series (testable without matplotlib); `render_figure` draws them.
"""

from __future__ import annotations

import json
from pathlib import Path

from future_lens.atomic import atomic_path
from future_lens.training.evaluate import LABELS

COLORS = {label: f"C{index}" for index, label in enumerate(LABELS.values())}


def load_paper_reference(path: Path | None) -> dict | None:
    """The paper's Figure-4 values (JSON) when `path` names an existing file, else None (plots omit the curve)."""
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def figure_data(report: dict, paper: dict | None = None) -> dict:
    """Panels N0..N3, each a list of series {label, x (depth = (layer+1)/n_layers), y, dashed}."""
    n_layers = report["n_layers"]
    panels: dict[str, list[dict]] = {}
    for n in range(4):
        key = f"N{n}"
        series = []
        for method, result in report["methods"].items():
            points = sorted(
                (int(layer), values[key]["p1"]) for layer, values in result["layers"].items() if key in values
            )
            if points:
                x = [round((layer + 1) / n_layers, 4) for layer, _ in points]
                series.append(
                    {"label": LABELS.get(method, method), "x": x, "y": [p for _, p in points], "dashed": False}
                )
        curve = (paper or {}).get("precision_at_1_prompt_trained_on_N1", {}).get("learned_prompt", {}).get(key)
        if curve:
            depth = len(curve)
            pairs = [((i + 1) / depth, value) for i, value in enumerate(curve) if value is not None]
            series.append(
                {
                    "label": "paper GPT-J learned prompt",
                    "x": [round(x, 4) for x, _ in pairs],
                    "y": [y for _, y in pairs],
                    "dashed": True,
                }
            )
        panels[key] = series
    return {"title": f"{report['model_id']}: precision@1 vs depth (dev, teacher-forced)", "panels": panels}


def learning_curve_data(curve: list[dict]) -> dict:
    """Series per N: mean over layers and best layer of dev precision@1 vs training examples."""
    points = sorted(curve, key=lambda p: p["examples"])
    series = []
    for n in range(4):
        key = f"N{n}"
        values = [[layer[key]["p1"] for layer in p["layers"].values()] for p in points]
        x = [p["examples"] for p in points]
        series.append(
            {"label": f"N={n} mean over layers", "x": x, "y": [sum(v) / len(v) for v in values], "dashed": True}
        )
        series.append({"label": f"N={n} best layer", "x": x, "y": [max(v) for v in values], "dashed": False})
    return {"title": "learned prompt: dev precision@1 vs training examples per layer", "series": series}


def learning_curve_scope(curve: dict) -> dict:
    """What a learning curve (`learning_curve.json`: config and points) was measured on, for its caption: the dev
    examples scored at every point (`config.curve_dev`) and the layers `learning_curve_data` averages over (those
    of its points). Missing parts are None / empty."""
    config = curve.get("config") if isinstance(curve.get("config"), dict) else {}
    dev = config.get("curve_dev")
    points = curve.get("points") if isinstance(curve.get("points"), list) else []
    layers = sorted(
        {int(layer) for point in points if isinstance(point, dict) for layer in point.get("layers", {}) or {}}
    )
    return {"dev_examples": dev if isinstance(dev, int) else None, "layers": layers}


def _save(figure, stem: Path) -> list[Path]:
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for path in paths:
        with atomic_path(path) as staging:
            figure.savefig(staging, dpi=110, bbox_inches="tight")
    return paths


def render_figure(data: dict, stem: Path) -> list[Path]:
    """Draw `figure_data` output to `<stem>.png` and `<stem>.svg`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(data["panels"]), figsize=(4.2 * len(data["panels"]), 3.8), sharey=True)
    for axis, (key, series) in zip(axes, data["panels"].items(), strict=True):
        for item in series:
            style = {"linestyle": "--", "color": "grey"} if item["dashed"] else {"marker": ".", "markersize": 4}
            style.setdefault("color", COLORS.get(item["label"]))  # same colour for a method in every panel
            axis.plot(item["x"], item["y"], label=item["label"], **style)
        axis.set_title(f"N = {key[1:]}")
        axis.set_xlabel("layer / depth")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("precision@1")
    axes[0].legend(fontsize=7, loc="upper left")  # the N=0 panel shows every method
    figure.suptitle(data["title"])
    paths = _save(figure, stem)
    plt.close(figure)
    return paths


def render_learning_curve(data: dict, stem: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for index, item in enumerate(data["series"]):
        style = {"linestyle": "--" if item["dashed"] else "-", "color": f"C{index // 2}"}  # one colour per N
        axis.plot(item["x"], item["y"], label=item["label"], marker=".", **style)
    axis.set_xlabel("training examples per layer")
    axis.set_ylabel("dev precision@1")
    axis.set_title(data["title"], fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, ncol=2)
    paths = _save(figure, stem)
    plt.close(figure)
    return paths


def calibration_data(report: dict) -> dict:
    """Reliability diagrams: per panel (first token, cell mean probability) one series per method, x = mean
    confidence of a bin, y = how often it was right; bins with fewer than 20 cells are left out."""
    panels: dict[str, list[dict]] = {"first_token": [], "mean_prob": []}
    for method, result in report["methods"].items():
        for panel, series in panels.items():
            bins = [b for b in result.get("calibration", {}).get(panel, {}).get("bins", []) if b["count"] >= 20]
            if bins:
                series.append(
                    {
                        "label": LABELS.get(method, method),
                        "x": [round(b["confidence"], 4) for b in bins],
                        "y": [round(b["accuracy"], 4) for b in bins],
                        "count": [b["count"] for b in bins],
                    }
                )
    return {"title": f"{report['model_id']}: calibration on held-out text (free-running, all layers)", "panels": panels}


def render_calibration(data: dict, stem: Path) -> list[Path]:
    """Draw `calibration_data` output (diagonal = perfectly calibrated) to `<stem>.png` and `<stem>.svg`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {"first_token": "first token: its probability", "mean_prob": "cell (N=4): mean probability"}
    ylabels = {"first_token": "fraction right", "mean_prob": "fraction of its tokens right"}
    figure, axes = plt.subplots(1, 2, figsize=(9, 4))
    for axis, (panel, series) in zip(axes, data["panels"].items(), strict=True):
        axis.plot([0, 1], [0, 1], linestyle=":", color="grey", label="calibrated")
        for item in series:
            axis.plot(
                item["x"], item["y"], marker="o", markersize=3, color=COLORS.get(item["label"]), label=item["label"]
            )
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.set_title(titles[panel], fontsize=9)
        axis.set_xlabel("lens probability (bin mean)")
        axis.set_ylabel(ylabels[panel])
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="upper left")
    figure.suptitle(data["title"], fontsize=10)
    paths = _save(figure, stem)
    plt.close(figure)
    return paths


def kl_data(report: dict) -> dict:
    """Per-layer KL(p_model ‖ p_lens) of every next-token readout in `report`, as plain series."""
    series = []
    for method, result in report["methods"].items():
        points = sorted((int(layer), v["kl"]) for layer, v in result["layers"].items() if "kl" in v)
        if points:
            series.append({"label": LABELS[method], "x": [p[0] for p in points], "y": [p[1] for p in points]})
    title = f"{report['model_id']}: KL to the model's next-token distribution ({report['dev_examples']} dev states)"
    return {"title": title, "series": series}


def render_kl(data: dict, stem: Path) -> list[Path]:
    """Draw `kl_data` output (log scale: the last layer's 0 is left out of the axis) to `<stem>.png` and `.svg`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for item in data["series"]:
        shown = [(x, y) for x, y in zip(item["x"], item["y"], strict=True) if y > 0]
        xs, ys = zip(*shown, strict=True)
        axis.plot(xs, ys, marker="o", markersize=3, color=COLORS.get(item["label"]), label=item["label"])
    axis.set_yscale("log")
    axis.set_xlabel("layer")
    axis.set_ylabel("KL(p_model ‖ p_lens), nats")
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=8)
    axis.set_title(data["title"], fontsize=9)
    paths = _save(figure, stem)
    plt.close(figure)
    return paths
