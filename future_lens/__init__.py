"""Future Lens: see what each hidden state of a language model anticipates, several tokens ahead.

    from future_lens import FutureLens, load_model
    model = load_model("smollm2-135m-instruct")
    grid = FutureLens(model).grid("Marty McFly from", layers="::3", n_future=4)

`grid.cells[i][j].tokens` are the N tokens block `grid.layers[i]`'s state at token `grid.tokens[j]` anticipates.
Every lens (`FutureLens`, `LogitLens`, `FixedPromptLens`, `IdentityPatchscope`, `TunedLens`, `JacobianLens`) has
`.grid(text)`, `.stream(text)` and `.track(text, token_ids)`. The names below are imported on first use, so
`import future_lens` (and the notebook client, `future_lens.client`) stays light until a model is needed. The
server (`future_lens.server`) is a separate layer on top: nothing here imports it.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

#: public name -> the module that defines it
_PUBLIC: dict[str, str] = {
    "load_model": "future_lens.lens.models",
    "wrap_model": "future_lens.lens.models",
    "LoadedModel": "future_lens.lens.models",
    "ModelNotAvailableError": "future_lens.lens.models",
    "DEFAULT_MODEL": "future_lens.lens.models",
    "Lens": "future_lens.lens.lenses",
    "FutureLens": "future_lens.lens.lenses",
    "LogitLens": "future_lens.lens.lenses",
    "FixedPromptLens": "future_lens.lens.lenses",
    "IdentityPatchscope": "future_lens.lens.lenses",
    "TunedLens": "future_lens.lens.linear",
    "JacobianLens": "future_lens.lens.linear",
    "Grid": "future_lens.lens.grid",
    "Cell": "future_lens.lens.grid",
    "TokenProb": "future_lens.lens.grid",
    "TokenText": "future_lens.lens.grid",
    "Track": "future_lens.lens.track",
    "TrackedToken": "future_lens.lens.track",
    "TrackingUnsupportedError": "future_lens.lens.lenses",
    "LayerSpecError": "future_lens.lens.layers",
    "parse_layers": "future_lens.lens.layers",
    "SoftPromptSet": "future_lens.lens.prompts",
    "PromptArtifactError": "future_lens.lens.prompts",
    "load_soft_prompts": "future_lens.lens.prompts",
    "lens_specs": "future_lens.lens.registry",
}

__all__ = ["__version__", *sorted(_PUBLIC)]


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use (PEP 562)."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'future_lens' has no attribute {name!r}")
    value = getattr(import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from future_lens.lens.grid import Cell, Grid, TokenProb, TokenText
    from future_lens.lens.layers import LayerSpecError, parse_layers
    from future_lens.lens.lenses import (
        FixedPromptLens,
        FutureLens,
        IdentityPatchscope,
        Lens,
        LogitLens,
        TrackingUnsupportedError,
    )
    from future_lens.lens.linear import JacobianLens, TunedLens
    from future_lens.lens.models import DEFAULT_MODEL, LoadedModel, ModelNotAvailableError, load_model, wrap_model
    from future_lens.lens.prompts import PromptArtifactError, SoftPromptSet, load_soft_prompts
    from future_lens.lens.registry import lens_specs
    from future_lens.lens.track import Track, TrackedToken
