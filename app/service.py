"""The lens service: validates a grid request against the limits and the loaded model, then computes the grid.

The CLI and the web app both go through here, so a request means the same thing, and fails the same way, in both.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from app.config import get_limits
from app.lens import (
    LENS_SEMANTICS,
    PAPER_FIXED_PROMPT,
    SCHEMA,
    FixedPromptLens,
    FutureLens,
    Grid,
    LayerSpecError,
    Lens,
    LoadedModel,
    LogitLens,
    PromptArtifactError,
    SoftPromptSet,
    load_model,
    parse_layers,
)
from app.lens.grid import GridStream
from app.lens.lenses import IdentityPatchscope
from app.lens.linear import JacobianLens, TunedLens
from app.lens.prompts import default_prompt_dir
from app.lens.source import normalize_text, tokenize
from app.lens.track import Track, TrackingUnsupportedError, check_token_ids
from app.store import canonical_json

LINEAR_LENSES: dict[str, type[TunedLens | JacobianLens]] = {"tuned": TunedLens, "jacobian": JacobianLens}
Method = Literal["future", "logit", "fixed", "identity", "tuned", "jacobian"]
#: Every method's name for people (the page's menu, result headings); the keys are `Method`'s values.
METHOD_LABELS: dict[str, str] = {
    "future": "Future lens (learned prompt)",
    "logit": "Logit lens (next token)",
    "fixed": "Fixed prompt",
    "identity": "Identity patchscope",
    "tuned": "Tuned lens (next token)",
    "jacobian": "Jacobian lens (next token)",
}


class InvalidRequestError(ValueError):
    """A request that breaks a rule; `field` names the offending field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class GridRequest(BaseModel):
    """What to compute: text, lens method, N, layers, top-k, and the fixed prompt if any."""

    text: str = Field(min_length=1, examples=["Marty McFly from"])
    method: Method = "future"
    n_future: int = Field(4, json_schema_extra={"minimum": 1})
    layers: str | list[int] | None = Field(None, description="all, 0-29, 0,5,10, ::3 or a list of block indices")
    top_k: int = Field(5, json_schema_extra={"minimum": 1})
    prompt: str | None = Field(None, description="fixed lens only: the prompt text (default: the paper's)")
    model: str | None = Field(None, description="must name the served model if given")
    track: list[int] | None = Field(
        None,
        description="token ids whose probability and rank the lens's first-token distribution gives at every layer "
        "and position: the response gets a `track` object (docs/grid-format.md); not part of the permalink",
    )

    @field_validator("text")
    @classmethod
    def _text_within_limit(cls, text: str) -> str:
        """Normalise line ends, then check the length; whitespace-only text is fine (text without tokens is not)."""
        text = normalize_text(text)
        limit = get_limits().max_text_chars
        if len(text) > limit:
            raise ValueError(f"text has {len(text)} characters; the limit is {limit}")
        return text

    @field_validator("n_future", "top_k", mode="before")
    @classmethod
    def _no_booleans(cls, value: object) -> object:
        if isinstance(value, bool):
            raise ValueError("must be a whole number, not true/false")
        return value

    @field_validator("n_future")
    @classmethod
    def _n_within_limit(cls, n_future: int) -> int:
        limit = get_limits().max_n_future
        if not 1 <= n_future <= limit:
            raise ValueError(f"n_future must be between 1 and {limit}")
        return n_future

    @field_validator("top_k")
    @classmethod
    def _top_k_within_limit(cls, top_k: int) -> int:
        limit = get_limits().max_top_k
        if not 1 <= top_k <= limit:
            raise ValueError(f"top_k must be between 1 and {limit}")
        return top_k

    @field_validator("track")
    @classmethod
    def _track_within_limit(cls, track: list[int] | None) -> list[int] | None:
        limit = get_limits().max_track_tokens
        if track is not None and not 1 <= len(track) <= limit:
            raise ValueError(f"track lists {len(track)} token ids; between 1 and {limit} may be tracked")
        return track

    @field_validator("prompt")
    @classmethod
    def _prompt_within_limit(cls, prompt: str | None) -> str | None:
        prompt = None if prompt is None else normalize_text(prompt)
        limit = get_limits().max_prompt_chars
        if prompt is not None and len(prompt) > limit:
            raise ValueError(f"prompt has {len(prompt)} characters; the limit is {limit}")
        return prompt


def parse_request(**fields: object) -> GridRequest:
    """Build a request, turning pydantic's errors into one `InvalidRequestError` naming the first bad field."""
    try:
        return GridRequest(**fields)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "request"
        raise InvalidRequestError(field, first["msg"].removeprefix("Value error, ")) from None


@dataclass(frozen=True)
class PlannedGrid:
    """A validated request bound to the lens and the resolved layers that will compute it."""

    request: GridRequest
    lens: Lens
    layers: list[int]

    @property
    def n_future(self) -> int:
        return self.lens.effective_future(self.request.n_future)

    def canonical(self) -> dict[str, object]:
        """Everything that determines the grid, normalised (resolved layers, effective N, the lens's identity)."""
        model = self.lens.model
        return {
            "schema": SCHEMA,
            "semantics": LENS_SEMANTICS,
            "model": {"id": model.id, "fingerprint": model.fingerprint, "dtype": model.dtype_name},
            "method": self.lens.method,
            "text": self.request.text,
            "layers": self.layers,
            "n_future": self.n_future,
            "top_k": self.request.top_k,
            **self.lens.identity(self.layers),
        }

    def merge_group(self) -> str:
        """Requests whose canonical forms differ only in their text (same model, lens and prompt, layers, N, top-k)
        can be computed in one engine pass: this names their group."""
        return canonical_json({name: value for name, value in self.canonical().items() if name != "text"})

    @property
    def cells(self) -> int:
        """How many (layer, token) cells the grid has: its share of a merged pass."""
        return len(self.layers) * len(tokenize(self.lens.model, self.request.text))

    def compute(self) -> Grid:
        return self.lens.grid(self.request.text, layers=self.layers, n_future=self.n_future, top_k=self.request.top_k)

    def stream(self) -> GridStream:
        """The same grid, computed a few rows at a time (the middle row first): see `Lens.stream`."""
        request = self.request
        return self.lens.stream(request.text, layers=self.layers, n_future=self.n_future, top_k=request.top_k)


def compute_merged(planned: Sequence[PlannedGrid]) -> list[Grid]:
    """The grids of requests of one `merge_group`, in order: one source pass per text, then the cells of all of them
    through the lens together (`Lens.grids`); the same cells as computing each alone."""
    first = planned[0]
    if any(p.merge_group() != first.merge_group() for p in planned):
        raise ValueError("only requests of one merge group can be computed together")
    texts = [p.request.text for p in planned]
    return first.lens.grids(texts, layers=first.layers, n_future=first.n_future, top_k=first.request.top_k)


class LensService:
    """One loaded model and its lenses; thread-safe lens construction, computation is the caller's to serialise."""

    def __init__(self, model: LoadedModel, prompt_dir: Path | None = None):
        self.model = model
        self.prompt_dir = prompt_dir or default_prompt_dir(model.id)
        self._future: FutureLens | None = None
        self._fixed: OrderedDict[str, FixedPromptLens] = OrderedDict()
        self._fitted: dict[str, Lens] = {}
        self._lock = threading.Lock()

    @classmethod
    def load(cls, model: str, device: str = "auto", dtype: str = "auto", prompt_dir: Path | None = None) -> LensService:
        return cls(load_model(model, device=device, dtype=dtype), prompt_dir)

    @property
    def soft_prompts(self) -> SoftPromptSet | None:
        """The trained prompts, or None when this model has none yet."""
        try:
            return self._future_lens().prompts
        except InvalidRequestError:
            return None

    def _future_lens(self) -> FutureLens:
        with self._lock:
            if self._future is None:
                try:
                    self._future = FutureLens(self.model, self.prompt_dir)
                except PromptArtifactError as error:
                    raise InvalidRequestError("method", str(error)) from None
            return self._future

    def _fixed_lens(self, prompt: str) -> FixedPromptLens:
        with self._lock:
            if prompt not in self._fixed:
                self._fixed[prompt] = FixedPromptLens(self.model, prompt)
                if len(self._fixed) > 8:
                    self._fixed.popitem(last=False)
            self._fixed.move_to_end(prompt)
            return self._fixed[prompt]

    def _fitted_lens(self, method: str) -> Lens:
        """The identity patchscope, or a linear lens loaded from its artifact next to the prompts (once each)."""
        with self._lock:
            if method not in self._fitted:
                try:
                    self._fitted[method] = (
                        IdentityPatchscope(self.model)
                        if method == "identity"
                        else LINEAR_LENSES[method](self.model, self.prompt_dir)
                    )
                except PromptArtifactError as error:  # a missing or foreign linear-lens artifact
                    raise InvalidRequestError("method", str(error)) from None
            return self._fitted[method]

    def available_methods(self) -> list[str]:
        """The methods this model can serve now (those needing an artifact only when it exists and fits)."""
        available = []
        for method in METHOD_LABELS:
            try:
                if method == "future":
                    self._future_lens()
                elif method in LINEAR_LENSES:
                    self._fitted_lens(method)
            except InvalidRequestError:
                continue
            available.append(method)
        return available

    def lens_for(self, request: GridRequest) -> Lens:
        if request.method == "logit":
            return LogitLens(self.model)
        if request.method in ("identity", *LINEAR_LENSES):
            return self._fitted_lens(request.method)
        if request.method == "fixed":
            prompt = request.prompt if request.prompt is not None else PAPER_FIXED_PROMPT
            n_tokens, limit = len(tokenize(self.model, prompt)), get_limits().max_prompt_tokens
            if n_tokens == 0:
                raise InvalidRequestError("prompt", "prompt is empty: it has no tokens")
            if n_tokens > limit:
                raise InvalidRequestError("prompt", f"prompt has {n_tokens} tokens; the limit is {limit}")
            return self._fixed_lens(prompt)
        return self._future_lens()

    def plan(self, request: GridRequest) -> PlannedGrid:
        """Check what depends on the model (model name, token count, layers); bind the lens and layers to use."""
        if request.model is not None and request.model != self.model.id:
            raise InvalidRequestError("model", f"this server serves {self.model.id!r} only")
        n_tokens = len(tokenize(self.model, request.text))
        if n_tokens == 0:
            raise InvalidRequestError("text", "text is empty: it has no tokens")
        limit = get_limits().max_text_tokens
        if n_tokens > limit:
            raise InvalidRequestError("text", f"text has {n_tokens} tokens; the limit is {limit}")
        try:
            layers = parse_layers(request.layers, self.model.adapter.n_layers)
        except LayerSpecError as error:
            raise InvalidRequestError("layers", str(error)) from None
        problem = None if request.track is None else check_token_ids(self.model, request.track)
        if problem:
            raise InvalidRequestError("track", problem)
        return PlannedGrid(request, self.lens_for(request), layers)

    def track(self, planned: PlannedGrid, token_ids: Sequence[int]) -> Track:
        """Trajectories of `token_ids` (already checked by `plan`) through a planned grid's cells."""
        try:
            return planned.lens.track(planned.request.text, token_ids, layers=planned.layers)
        except TrackingUnsupportedError as error:
            raise InvalidRequestError("track", str(error)) from None

    def compute(self, request: GridRequest | PlannedGrid) -> Grid:
        """The grid of a request (planned first unless it already is)."""
        planned = request if isinstance(request, PlannedGrid) else self.plan(request)
        return planned.compute()

    def compute_many(self, planned: Sequence[PlannedGrid]) -> list[Grid]:
        """The grids of planned requests of one merge group, in order: one alone through `compute`, several merged."""
        return [self.compute(planned[0])] if len(planned) == 1 else compute_merged(planned)
