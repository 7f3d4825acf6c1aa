"""What the shipped tuned and Jacobian lenses of the embedded model must satisfy, on a fixed slice of dev text (the
regression slice's contexts, held-out documents the fits never trained on).

The tuned lens (Belrose et al. 2023) is the model's own readout at the last layer and is fitted to be closer to the
model than the logit lens everywhere else; the Jacobian lens's last layer is the identity.
"""

from __future__ import annotations

import json

import pytest

from future_lens.lens import LogitLens
from future_lens.lens.linear import JacobianLens, TunedLens, load_linear_maps
from future_lens.lens.prompts import default_prompt_dir
from future_lens.training.linear_fit import JacobianLensRecipe, lens_readout_stats
from future_lens.training.regression import SLICE_FILE
from tests.test_engine import assert_same, grid_predictions

pytestmark = pytest.mark.embedded

#: How many of the regression slice's contexts (every position of each is scored).
CONTEXTS = 16


@pytest.fixture(scope="module")
def slice_windows(smollm2) -> list[list[int]]:
    recorded = json.loads((default_prompt_dir(smollm2.id) / SLICE_FILE).read_text())
    return sorted(recorded["contexts"], key=len, reverse=True)[:CONTEXTS]


@pytest.fixture(scope="module")
def stats(smollm2, slice_windows) -> dict[str, dict[str, list[float]]]:
    folder = default_prompt_dir(smollm2.id)
    return {
        "logit": lens_readout_stats(smollm2, slice_windows, None, batch=1),
        "tuned": lens_readout_stats(smollm2, slice_windows, load_linear_maps(folder, smollm2, "tuned"), batch=1),
        "jacobian": lens_readout_stats(smollm2, slice_windows, load_linear_maps(folder, smollm2, "jacobian"), batch=1),
    }


def test_tuned_and_jacobian_lenses_equal_the_logit_lens_at_the_last_layer_cell_for_cell(smollm2, slice_windows):
    last = [smollm2.adapter.n_layers - 1]
    text = smollm2.tokenizer.decode(slice_windows[0])
    logit = grid_predictions(LogitLens(smollm2).grid(text, layers=last, top_k=5))
    for lens in (TunedLens(smollm2), JacobianLens(smollm2)):
        assert_same(grid_predictions(lens.grid(text, layers=last, top_k=5)), logit)


def test_the_tuned_lens_is_closer_to_the_model_than_the_logit_lens_at_every_layer(stats):
    tuned, logit = stats["tuned"]["kl"], stats["logit"]["kl"]
    assert tuned[-1] == logit[-1] == 0.0
    worse = [(layer, t, g) for layer, (t, g) in enumerate(zip(tuned[:-1], logit[:-1], strict=True)) if t > g]
    assert not worse, f"tuned-lens KL above the logit lens's (layer, tuned, logit): {worse}"


def test_the_tuned_lens_agrees_with_the_model_at_least_as_often_as_the_logit_lens(stats):
    tuned, logit = stats["tuned"]["top1"], stats["logit"]["top1"]
    assert tuned[-1] == logit[-1] == 1.0
    worse = [(layer, t, g) for layer, (t, g) in enumerate(zip(tuned, logit, strict=True)) if t < g]
    assert not worse, f"tuned-lens precision@1 below the logit lens's (layer, tuned, logit): {worse}"


def test_the_shipped_jacobian_lens_was_fitted_by_its_authors_recipe(smollm2, stats):
    maps = load_linear_maps(default_prompt_dir(smollm2.id), smollm2, "jacobian")
    recipe = json.loads(maps.metadata["recipe"])
    authors = JacobianLensRecipe()
    assert recipe["tokens"] == authors.tokens == 128 and recipe["skip_first"] == authors.skip_first == 16
    assert stats["jacobian"]["kl"][-1] == 0.0 and stats["jacobian"]["top1"][-1] == 1.0
