"""The evaluation report of the served model's prompts, for /about: `reports/<model>/eval.png` and `eval.json`.

Both files are optional (they appear once the prompts are trained and evaluated); the JSON's exact layout is the
training code's business, so it is turned into a table generically: the first list of records, or a mapping of
records, with nested mappings flattened into `a.b` columns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

MAX_ROWS = 200
MAX_COLUMNS = 24
ROW_KEYS = ("rows", "layers", "results", "table", "per_layer", "metrics")


@dataclass
class ReportTable:
    columns: list[str]
    rows: list[list[str]]
    facts: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class EvalReport:
    """What exists of the report: the plot's path and the table, each possibly missing."""

    plot: Path | None
    table: ReportTable | None
    error: str | None = None


def format_value(value: object) -> str:
    """Numbers to 3 significant decimals, lists joined, everything else as text."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    if isinstance(value, list) and len(value) <= 8 and all(not isinstance(v, dict | list) for v in value):
        return ", ".join(format_value(v) for v in value)
    if isinstance(value, dict | list):
        return json.dumps(value)[:80]
    return str(value)


def flatten(record: dict[str, object], prefix: str = "", depth: int = 0) -> dict[str, object]:
    """`{"p@1": {"N1": 0.4}}` → `{"p@1.N1": 0.4}` (two levels deep at most)."""
    flat: dict[str, object] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and depth < 2:
            flat.update(flatten(value, f"{name}.", depth + 1))
        else:
            flat[name] = value
    return flat


def _records(data: object) -> tuple[list[dict[str, object]], str | None] | None:
    """The tabular part of `data`: a list of records, or a mapping key → record (key becomes the first column)."""
    if isinstance(data, list) and data and all(isinstance(item, dict) for item in data):
        return data, None
    if not isinstance(data, dict):
        return None
    keys = [k for k in ROW_KEYS if k in data] + [k for k in data if k not in ROW_KEYS]
    for key in keys:
        value = data[key]
        if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            return value, None
        if isinstance(value, dict) and value and all(isinstance(item, dict) for item in value.values()):
            return [{key: name, **record} for name, record in value.items()], key
    if data and all(isinstance(item, dict) for item in data.values()):
        return [{"key": name, **record} for name, record in data.items()], "key"
    return None


def report_table(data: object) -> ReportTable | None:
    """A table (columns, formatted rows) plus the top-level scalar facts, or None when nothing is tabular."""
    found = _records(data)
    facts = []
    if isinstance(data, dict):
        facts = [(k, format_value(v)) for k, v in data.items() if not isinstance(v, dict | list)][:MAX_COLUMNS]
    if found is None:
        return ReportTable([], [], facts) if facts else None
    records, _ = found
    flat = [flatten(record) for record in records[:MAX_ROWS]]
    columns: list[str] = []
    for record in flat:
        columns.extend(key for key in record if key not in columns)
    columns = columns[:MAX_COLUMNS]
    rows = [[format_value(record.get(column, "")) for column in columns] for record in flat]
    return ReportTable(columns, rows, facts)


def load_eval_report(reports_dir: Path, model_id: str) -> EvalReport:
    """Read `reports/<model_id>/eval.{png,json}` if present; a malformed JSON is reported, never raised."""
    folder = reports_dir / model_id
    plot = folder / "eval.png"
    table, error = None, None
    source = folder / "eval.json"
    if source.is_file():
        try:
            table = report_table(json.loads(source.read_text()))
        except (OSError, ValueError) as problem:
            error = f"{source.name} could not be read: {problem}"
    return EvalReport(plot if plot.is_file() else None, table, error)
