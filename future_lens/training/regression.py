"""A pinned slice of the dev split, replayed in CI against the shipped prompts.

`future-lens eval` writes `<prompt dir>/regression.json`: the slice's token contexts, the model's own greedy
continuation of each, and the learned prompts' teacher-forced precision@1 at N=1 per layer on it. Replaying it
recomputes all of that from the committed artifacts, so a drift in model conversion, fingerprinting or prompt
loading fails a test instead of silently changing (or emptying) what the page shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from future_lens.atomic import atomic_write_json
from future_lens.lens.models import LoadedModel
from future_lens.lens.prompts import SoftPromptSet
from future_lens.training.data import Examples, build_examples
from future_lens.training.metrics import patched_topk

SLICE_FILE = "regression.json"
SLICE_SIZE = 48
SLICE_SCHEMA = "future-lens.regression/1"
#: Allowed difference per layer: one example in `SLICE_SIZE` (float rounding on other CPUs may flip a near-tie).
TOLERANCE = 1 / SLICE_SIZE


def slice_precision(model: LoadedModel, prompts: SoftPromptSet, examples: Examples) -> dict[str, float]:
    """Teacher-forced precision@1 at N=1 per trained layer."""
    layers = sorted(prompts.prompts)
    topk = patched_topk(model, {layer: prompts.for_layer(layer) for layer in layers}, examples, max_n=1)
    return {str(layer): (topk[layer][:, 1, 0] == examples.teacher[:, 1]).float().mean().item() for layer in layers}


def write_regression_slice(model: LoadedModel, prompts: SoftPromptSet, dev: Examples) -> Path:
    """Record the first `SLICE_SIZE` dev examples and the prompts' precision on them beside the prompts."""
    part = dev.subset(slice(0, SLICE_SIZE))
    contexts = [part.contexts[i, : part.lengths[i]].tolist() for i in range(len(part))]
    payload = {
        "schema": SLICE_SCHEMA,
        "model_id": model.id,
        "model_fingerprint": model.fingerprint,
        "metric": "teacher-forced precision@1 at N=1 per layer",
        "tolerance": TOLERANCE,
        "contexts": contexts,
        "teacher": part.teacher.tolist(),
        "precision": slice_precision(model, prompts, part),
    }
    path = Path(prompts.directory) / SLICE_FILE
    atomic_write_json(path, payload, indent=1)
    return path


@dataclass
class Replay:
    """The recorded slice and what the loaded model and prompts give on it now."""

    recorded: dict
    teacher: list[list[int]]
    precision: dict[str, float]


def replay_regression_slice(model: LoadedModel, prompts: SoftPromptSet, recorded: dict) -> Replay:
    """Rebuild the slice's teacher data with `model` and score `prompts` on it."""
    contexts = recorded["contexts"]
    examples = build_examples(model, contexts, max(len(c) for c in contexts), batch=64, desc="regression slice")
    return Replay(recorded, examples.teacher.tolist(), slice_precision(model, prompts, examples))
