"""The defaults and bounds of one grid request: the one place their values are written.

The library's lenses, the request schema (`future_lens.service`), the CLI, the page's form and the notebook client
all read these names. The server may tighten or loosen the bounds (`FUTURE_LENS_MAX_*`, see
`future_lens.server.config`) and passes its `Limits` explicitly to the service it builds.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

#: The lens a request uses when it names none: the learned soft prompts of the Future Lens paper.
METHOD = "future"
#: Future tokens decoded per cell (the paper reads N = 0..3 ahead; the page shows 4 tokens).
N_FUTURE = 4
#: Alternatives listed for a cell's first token.
TOP_K = 5
#: Layers a request reads when it names none.
LAYERS = "all"


class Limits(BaseModel):
    """Bounds on one request, sized so a 2-core CPU answers a full-size request in seconds."""

    model_config = ConfigDict(frozen=True)

    max_text_chars: int = Field(2000, ge=1, description="longest input text, in characters")
    max_text_tokens: int = Field(64, ge=1, description="longest input text, in tokens")
    max_n_future: int = Field(8, ge=1, description="most future tokens per cell")
    max_top_k: int = Field(20, ge=1, description="most alternatives listed for a cell's first token")
    max_prompt_chars: int = Field(500, ge=1, description="longest fixed prompt, in characters")
    max_prompt_tokens: int = Field(64, ge=1, description="longest fixed prompt, in tokens")
    max_track_tokens: int = Field(8, ge=1, description="most token ids one request may track (`track`)")
    max_body_bytes: int = Field(64_000, ge=1, description="largest request body")


#: The bounds when nobody configured others (the library's and the CLI's; the server reads its own from settings).
DEFAULT_LIMITS = Limits()
