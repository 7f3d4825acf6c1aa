"""The public lens API: load a model, pick a lens, read a grid. Stable; everything else in `app` is internal.

    from future_lens.lens import FutureLens, load_model
    model = load_model("smollm2-135m-instruct")
    grid = FutureLens(model).grid("Marty McFly from", layers="::3", n_future=4)

`grid.cells[i][j].tokens` are the N tokens block `grid.layers[i]`'s state at token `grid.tokens[j]` anticipates.
`FutureLens(model).track(text, [token_id])` follows tokens' first-token probability and rank through every cell.
"""

from future_lens.lens.grid import SCHEMA, Cell, Grid, TokenProb, TokenText
from future_lens.lens.layers import LayerSpecError, parse_layers
from future_lens.lens.lenses import LENS_SEMANTICS, PAPER_FIXED_PROMPT, FixedPromptLens, FutureLens, Lens, LogitLens
from future_lens.lens.models import DEFAULT_MODEL, LoadedModel, ModelNotAvailableError, load_model, wrap_model
from future_lens.lens.prompts import PromptArtifactError, SoftPromptSet, load_soft_prompts
from future_lens.lens.track import Track, TrackedToken, TrackingUnsupportedError

__all__ = [
    "DEFAULT_MODEL",
    "LENS_SEMANTICS",
    "PAPER_FIXED_PROMPT",
    "SCHEMA",
    "Cell",
    "FixedPromptLens",
    "FutureLens",
    "Grid",
    "LayerSpecError",
    "Lens",
    "LoadedModel",
    "LogitLens",
    "ModelNotAvailableError",
    "PromptArtifactError",
    "SoftPromptSet",
    "TokenProb",
    "TokenText",
    "Track",
    "TrackedToken",
    "TrackingUnsupportedError",
    "load_model",
    "load_soft_prompts",
    "parse_layers",
    "wrap_model",
]
