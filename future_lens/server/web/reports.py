"""The served model's evaluation report (`reports/<model>/eval.json` and its plots), for /about and the legend.

`future-lens eval` writes the report; this module reads the parts the pages show, explicitly: the `tables` list,
a few facts, the plots by fixed names, and per method the measured calibration of its probabilities. Anything
missing or malformed is reported as a note, never raised.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from future_lens.lens.lenses import IDENTITY_PATCHSCOPE_PROMPT, PAPER_FIXED_PROMPT

#: The plots /about shows, by the fixed file stem served at `/about/<stem>.png`, with their captions.
PLOTS: dict[str, str] = {
    "eval": "precision@1 against relative depth for every method (the paper's Figure 4, this model)",
    "calibration": "reliability diagrams: how often a prediction of probability p was right on held-out text",
    "learning_curve": "learned prompt precision@1 on held-out text against training examples seen",
    "kl": "KL of each next-token readout to the model's own distribution, per layer (log scale)",
}
#: Where a plot goes on the page: after the table it illustrates (else after all tables).
PLOT_AFTER = {"eval": "headline_free_running", "calibration": "calibration", "kl": "kl_per_layer"}
#: Tokens per cell over which `mean_prob` calibration is measured (future_lens/training/evaluate.py: MAX_N + 1).
CALIBRATION_N = 4
N_BINS = 10


@dataclass(frozen=True)
class ReportTable:
    """One of the report's tables: `name` (stable id), caption, header and rows of text."""

    name: str
    caption: str
    columns: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class EvalReport:
    """What the page shows of the report; `exists` is False when there is no eval.json."""

    exists: bool
    plots: list[str] = field(default_factory=list)
    tables: list[ReportTable] = field(default_factory=list)
    facts: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    captions: dict[str, str] = field(default_factory=dict)  # plot stem -> caption read from the report's data

    def caption(self, stem: str) -> str:
        """The caption of plot `stem`: the one written from the report's data, else the fixed one of PLOTS."""
        return self.captions.get(stem) or PLOTS.get(stem, stem)

    def sections(self) -> list[tuple[ReportTable | None, list[str]]]:
        """Reading order: each table followed by the plots that illustrate it, then the remaining plots."""
        names = {table.name for table in self.tables}
        placed = {stem: PLOT_AFTER[stem] for stem in self.plots if PLOT_AFTER.get(stem) in names}
        sections: list[tuple[ReportTable | None, list[str]]] = [
            (table, [stem for stem in self.plots if placed.get(stem) == table.name]) for table in self.tables
        ]
        rest = [stem for stem in self.plots if stem not in placed]
        return [*sections, (None, rest)] if rest else sections


@dataclass(frozen=True)
class CalibrationBin:
    low: float
    high: float
    count: int
    accuracy: float | None


@dataclass(frozen=True)
class Calibration:
    """Measured reliability of one method's cell colour: per probability bin, how often such cells were right."""

    method: str  # the report's method key: learned_prompt, fixed_prompt, identity_patchscope, logit_lens, ...
    measure: str  # "mean_prob" (share of a cell's CALIBRATION_N tokens right) or "first_token"
    bins: list[CalibrationBin]
    n: int


def report_folder(reports_dir: Path, model_id: str) -> Path:
    return reports_dir / model_id


@lru_cache(maxsize=16)
def _parsed(path: str, mtime_ns: int, size: int) -> object:
    """The JSON of `path` as of (mtime, size): re-read only when the file changes."""
    return json.loads(Path(path).read_text())


def read_report_json(reports_dir: Path, model_id: str) -> object | None:
    """The parsed eval.json of `model_id` (cached by mtime), None if absent; ValueError/OSError if unreadable."""
    path = report_folder(reports_dir, model_id) / "eval.json"
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return _parsed(str(path), stat.st_mtime_ns, stat.st_size)


def plot_path(reports_dir: Path, model_id: str, stem: str) -> Path | None:
    """The path of plot `stem` (a key of PLOTS, never request text) if the file exists."""
    if stem not in PLOTS:
        return None
    path = report_folder(reports_dir, model_id) / f"{stem}.png"
    return path if path.is_file() else None


def parse_table(item: object) -> ReportTable | None:
    """A `tables` entry as a ReportTable; None when it lacks a name, columns or rows of the right kinds."""
    if not isinstance(item, dict):
        return None
    columns, rows = item.get("columns"), item.get("rows")
    if not isinstance(item.get("name"), str) or not isinstance(columns, list) or not isinstance(rows, list):
        return None
    if not all(isinstance(row, list) for row in rows):
        return None
    return ReportTable(
        name=item["name"],
        caption=str(item.get("caption", "")),
        columns=[str(column) for column in columns],
        rows=[[str(value) for value in row] for row in rows],
    )


def layer_ranges(layers: list[int]) -> str:
    """`[0, 1, 2, 5, 7, 8]` → `0–2, 5, 7–8`."""
    parts: list[str] = []
    start = previous = None
    for layer in [*sorted(layers), None]:
        if previous is not None and layer == previous + 1:
            previous = layer
            continue
        if start is not None:
            parts.append(str(start) if start == previous else f"{start}–{previous}")
        start = previous = layer
    return ", ".join(parts)


def prompt_training(prompts: dict) -> str:
    """The report's `prompts` summary in one line: examples per layer, steps × batch, learning rate, objective."""
    parts = []
    if "examples" in prompts:
        parts.append(f"{by_layers(prompts['examples'])} examples per layer")
    if "steps" in prompts:
        batch = f" of batch {by_layers(prompts['batch'])}" if "batch" in prompts else ""
        parts.append(f"{by_layers(prompts['steps'])} steps{batch}")
    for key, label in (("lr", "learning rate"), ("objective", "objective"), ("init", "initialised from")):
        if key in prompts:
            parts.append(f"{label} {by_layers(prompts[key])}")
    return " · ".join(parts)


def by_layers(value: object) -> str:
    """A training fact shared by every layer, or `{value: layers}` where layers differ: "10000 (layers 10-21), ..."."""
    if not isinstance(value, dict):
        return str(value)
    return ", ".join(f"{v} (layers {layer_ranges(layers)})" for v, layers in value.items())


def report_facts(data: dict, fingerprint: str) -> list[tuple[str, str]]:
    """The report's context: what was evaluated, on how much text, with which prompts, under which protocol."""
    facts: list[tuple[str, str]] = []
    layers = data.get("layers")
    if isinstance(layers, list) and all(isinstance(layer, int) for layer in layers) and layers:
        facts.append(("layers evaluated", f"{layer_ranges(layers)} ({len(layers)})"))
    for key, label in (("dev_examples", "dev examples (held out)"), ("train_examples_available", "train examples")):
        if key in data:
            facts.append((label, str(data[key])))
    prompts = data.get("prompts")
    if isinstance(prompts, dict) and prompts:
        facts.append(("prompt training", prompt_training(prompts)))
    if "protocol" in data:
        facts.append(("protocol", str(data["protocol"])))
    if "model_quantization" in data:
        facts.append(("weights evaluated", str(data["model_quantization"] or "as published (not quantised)")))
    if "model_fingerprint" in data:
        whose = "the served weights" if data["model_fingerprint"] == fingerprint else "not the served weights"
        facts.append(("weights fingerprint", f"{data['model_fingerprint']} ({whose})"))
    return facts


def learning_curve_caption(curve: object, data: object) -> str | None:
    """The learning curve's caption with what it was measured on (its dev examples and layers, read from the curve
    that drew it) and, from eval.json (`data`), what the tables were measured on; None when the curve says neither."""
    from future_lens.training.plot import (
        learning_curve_scope,  # the plot's own reading of the curve (no web import there)
    )

    if not isinstance(curve, dict):
        return None
    scope = learning_curve_scope(curve)
    dev, layers = scope["dev_examples"], scope["layers"]
    if dev is None and not layers:
        return None
    parts = [f"{dev} dev examples" if dev is not None else "", f"layers {layer_ranges(layers)}" if layers else ""]
    caption = f"{PLOTS['learning_curve']}, scored during training on its own {' at '.join(p for p in parts if p)}"
    if len(layers) > 1:
        caption += f" (the mean and the best of those {len(layers)} layers)"
    if isinstance(data, dict):
        tables = []
        if isinstance(data.get("dev_examples"), int):
            tables.append(f"{data['dev_examples']} dev examples")
        evaluated = data.get("layers")
        if isinstance(evaluated, list) and evaluated and all(isinstance(layer, int) for layer in evaluated):
            tables.append(f"layers {layer_ranges(evaluated)}")
        if tables:
            caption += f"; the tables above use {' and '.join(tables)}, so their numbers differ"
    return caption


def plot_captions(reports_dir: Path, model_id: str, data: object) -> dict[str, str]:
    """Captions written from the report's data: the learning curve's, from `learning_curve.json` (written with its
    plot), else the copy in eval.json (`data`)."""
    path = report_folder(reports_dir, model_id) / "learning_curve.json"
    try:
        curve = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        curve = None
    if curve is None and isinstance(data, dict):
        curve = data.get("learning_curve")
    caption = learning_curve_caption(curve, data)
    return {"learning_curve": caption} if caption else {}


def load_eval_report(reports_dir: Path, model_id: str, fingerprint: str) -> EvalReport:
    """Read `reports/<model_id>/`: eval.json's tables and facts, which plots exist and their captions; problems
    become notes."""
    report = _eval_report(reports_dir, model_id, fingerprint)
    try:
        data = read_report_json(reports_dir, model_id)
    except (OSError, ValueError):
        data = None
    return replace(report, captions=plot_captions(reports_dir, model_id, data))


def _eval_report(reports_dir: Path, model_id: str, fingerprint: str) -> EvalReport:
    plots = [stem for stem in PLOTS if plot_path(reports_dir, model_id, stem)]
    try:
        data = read_report_json(reports_dir, model_id)
    except (OSError, ValueError) as problem:
        return EvalReport(True, plots, notes=[f"eval.json could not be read: {problem}"])
    if data is None:
        return EvalReport(bool(plots), plots)
    if not isinstance(data, dict):
        return EvalReport(True, plots, notes=["eval.json is not a JSON object: not a report this version reads"])
    notes = []
    if data.get("model_fingerprint", fingerprint) != fingerprint:
        notes.append(
            f"This report was computed on weights with fingerprint {data['model_fingerprint']}, the server runs "
            f"{fingerprint}: its numbers may not describe the served weights."
        )
    raw_tables = data.get("tables")
    if raw_tables is None:
        notes.append("This report predates the current format (it has no tables): run `future-lens eval` again.")
        return EvalReport(True, plots, [], report_facts(data, fingerprint), notes)
    items = raw_tables if isinstance(raw_tables, list) else []
    tables = [table for table in map(parse_table, items) if table is not None]
    if len(tables) < len(items) or not isinstance(raw_tables, list):
        notes.append("Some of the report's tables could not be read and are left out.")
    return EvalReport(True, plots, tables, report_facts(data, fingerprint), notes)


#: Grid methods whose colour is the mean probability of N decoded tokens, by the report's method key.
PHRASE_METHODS = {"future": "learned_prompt", "fixed": "fixed_prompt", "identity": "identity_patchscope"}
#: Next-token readouts (N = 1, the colour is the first token's probability), by the report's method key.
NEXT_TOKEN_METHODS = {"logit": "logit_lens", "tuned": "tuned_lens", "jacobian": "jacobian_lens"}
#: The prompt the report measured each fixed-prompt method with (another prompt: another lens, not measured).
MEASURED_PROMPTS = {"fixed": (PAPER_FIXED_PROMPT,), "identity": (IDENTITY_PATCHSCOPE_PROMPT, None)}


def report_method(method: str, prompt: str | None) -> tuple[str, str] | None:
    """The report's (method, measure) whose calibration describes a grid's colours, or None if none does."""
    if method in MEASURED_PROMPTS and prompt not in MEASURED_PROMPTS[method]:
        return None
    if method in PHRASE_METHODS:
        return PHRASE_METHODS[method], "mean_prob"
    if method in NEXT_TOKEN_METHODS:
        return NEXT_TOKEN_METHODS[method], "first_token"
    return None


def parse_bin(item: dict) -> CalibrationBin:
    accuracy = item.get("accuracy")
    return CalibrationBin(
        low=float(item["low"]),
        high=float(item["high"]),
        count=int(item["count"]),
        accuracy=None if accuracy is None else float(accuracy),
    )


def calibration_of(data: object, method: str, prompt: str | None, fingerprint: str) -> Calibration | None:
    """The measured calibration for a grid of `method` (and fixed `prompt`) on the served weights, if reported."""
    target = report_method(method, prompt)
    if target is None or not isinstance(data, dict) or data.get("model_fingerprint", fingerprint) != fingerprint:
        return None
    try:
        reliability = data["methods"][target[0]]["calibration"][target[1]]
        bins = [parse_bin(item) for item in reliability["bins"]]
        n = int(reliability["n"])
    except (AttributeError, KeyError, TypeError, ValueError):  # any other layout: no measured legend
        return None
    if len(bins) != N_BINS:
        return None
    return Calibration(target[0], target[1], bins, n)


def served_calibration(
    reports_dir: Path, model_id: str, fingerprint: str, method: str, prompt: str | None
) -> Calibration | None:
    """`calibration_of` the served model's report; None when it is missing or unreadable."""
    try:
        data = read_report_json(reports_dir, model_id)
    except (OSError, ValueError):
        return None
    return calibration_of(data, method, prompt, fingerprint)


@dataclass(frozen=True)
class Reversal:
    """A higher shade measured right less often than a lower one, by more than the bins' sampling noise."""

    lower: CalibrationBin
    higher: CalibrationBin

    @property
    def drop(self) -> float:
        return (self.lower.accuracy or 0.0) - (self.higher.accuracy or 0.0)


def _noise(a: CalibrationBin, b: CalibrationBin) -> float:
    """Two standard errors of the difference of two bins' shares (binomial; a cell's share of N tokens varies
    less, so this is on the safe side)."""
    pa, pb = a.accuracy or 0.0, b.accuracy or 0.0
    return 2 * (pa * (1 - pa) / a.count + pb * (1 - pb) / b.count) ** 0.5


#: A reversal smaller than this (in share of cells right) is not worth a note, however many cells measured it.
MIN_REVERSAL = 0.05


def calibration_reversal(calibration: Calibration, min_count: int) -> Reversal | None:
    """Where the legend's second row reads backwards: a shade right less often than a lower shade (both measured on
    at least `min_count` cells, the drop beyond noise and at least MIN_REVERSAL). The darkest measured shade's
    reversal is preferred (it is the one a reader trusts most), then the largest drop."""
    shown = [b for b in calibration.bins if b.accuracy is not None and b.count >= min_count]
    reversals = [
        Reversal(lower, higher)
        for i, lower in enumerate(shown)
        for higher in shown[i + 1 :]
        if (lower.accuracy or 0.0) - (higher.accuracy or 0.0) > max(MIN_REVERSAL, _noise(lower, higher))
    ]
    if not reversals:
        return None
    darkest = [r for r in reversals if r.higher is shown[-1]]
    return max(darkest or reversals, key=lambda r: r.drop)


def reversal_note(calibration: Calibration | None, min_count: int) -> str | None:
    """A few words for the legend when its second row reads backwards (None when it does not)."""
    reversal = None if calibration is None else calibration_reversal(calibration, min_count)
    if reversal is None:
        return None

    def shade(b: CalibrationBin) -> str:
        return f"{b.low * 100:.0f}–{b.high * 100:.0f}%"

    higher, lower = reversal.higher, reversal.lower
    return (
        f"higher shades are not more often right here: cells shaded {shade(higher)} were right "
        f"{(higher.accuracy or 0.0) * 100:.0f}% of the time, cells shaded {shade(lower)} "
        f"{(lower.accuracy or 0.0) * 100:.0f}%. This lens is often confidently wrong: read a dark cell as its "
        "confidence, not as a chance of being right."
    )
