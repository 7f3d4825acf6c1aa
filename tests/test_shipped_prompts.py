"""What ships: the committed prompts of the embedded model still load and still score what they scored."""

from __future__ import annotations

import json

import pytest

from future_lens.lens import FutureLens
from future_lens.lens.prompts import default_prompt_dir
from future_lens.training.regression import SLICE_FILE, replay_regression_slice


@pytest.mark.embedded
def test_shipped_prompts_reproduce_their_recorded_dev_slice(smollm2) -> None:
    """Fails on a drift in conversion, fingerprint or loading (which would switch the page to the logit lens)."""
    lens = FutureLens(smollm2)  # refuses prompts whose fingerprint is not the loaded weights'
    recorded = json.loads((default_prompt_dir(smollm2.id) / SLICE_FILE).read_text())
    assert recorded["model_fingerprint"] == smollm2.fingerprint
    assert sorted(int(layer) for layer in recorded["precision"]) == sorted(lens.prompts.prompts)
    replay = replay_regression_slice(smollm2, lens.prompts, recorded)
    same = sum(
        a == b
        for new, old in zip(replay.teacher, recorded["teacher"], strict=True)
        for a, b in zip(new, old, strict=True)
    )
    assert same >= 0.97 * sum(len(row) for row in recorded["teacher"])  # the model's own continuations
    for layer, value in recorded["precision"].items():
        assert abs(replay.precision[layer] - value) <= recorded["tolerance"] + 1e-9, layer
