"""The defaults and bounds of one grid request: the one place their values are written.

The library's lenses, the request schema (`future_lens.service`), the CLI, the page's form and the notebook client
all read these names. The server may tighten or loosen the bounds (`FUTURE_LENS_MAX_*`, see
`future_lens.server.config`) and passes its `Limits` explicitly to the service it builds.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

#: The lens a request uses when it names none: the learned soft prompts of the Future Lens paper.
METHOD = "future"
#: Future tokens decoded per cell (the paper reads N = 0..3 ahead; the page shows 4 tokens).
N_FUTURE = 4
#: Alternatives listed for a cell's first token.
TOP_K = 5
#: Layers a request reads when it names none.
LAYERS = "all"


def _bound(default: int, description: str) -> int:
    return field(default=default, metadata={"description": description})


@dataclass(frozen=True)
class Limits:
    """Bounds on one request, sized so a 2-core CPU answers a full-size request in seconds (standard library only,
    so the notebook client imports it without pydantic)."""

    max_text_chars: int = _bound(2000, "longest input text, in characters")
    max_text_tokens: int = _bound(64, "longest input text, in tokens")
    max_n_future: int = _bound(8, "most future tokens per cell")
    max_top_k: int = _bound(20, "most alternatives listed for a cell's first token")
    max_prompt_chars: int = _bound(500, "longest fixed prompt, in characters")
    max_prompt_tokens: int = _bound(64, "longest fixed prompt, in tokens")
    max_track_tokens: int = _bound(8, "most token ids one request may track (`track`)")
    max_body_bytes: int = _bound(64_000, "largest request body")

    def __post_init__(self) -> None:
        for bound in fields(self):
            value = getattr(self, bound.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{bound.name} must be a whole number of at least 1, got {value!r}")


#: The bounds when nobody configured others (the library's and the CLI's; the server reads its own from settings).
DEFAULT_LIMITS = Limits()
