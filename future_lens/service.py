"""The lens service: validates a grid request against the limits and the loaded model, then computes the grid.

The CLI and the web app both go through here, so a request means the same thing, and fails the same way, in both.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from future_lens import defaults
from future_lens.canonical import canonical_json
from future_lens.defaults import DEFAULT_LIMITS, Limits
from future_lens.lens import (
    LENS_SEMANTICS,
    PAPER_FIXED_PROMPT,
    SCHEMA,
    Grid,
    LayerSpecError,
    Lens,
    LoadedModel,
    PromptArtifactError,
    SoftPromptSet,
    load_model,
    parse_layers,
)
from future_lens.lens.grid import GridStream
from future_lens.lens.lenses import FutureLens
from future_lens.lens.prompts import default_prompt_dir
from future_lens.lens.registry import LensContext, LensSpec, lens_names, lens_spec, lens_specs, methods_description
from future_lens.lens.source import normalize_text, tokenize
from future_lens.lens.track import Track, TrackingUnsupportedError, check_token_ids

#: Fixed-prompt lenses kept built at once (each holds its prompt's embeddings and prefix keys/values).
MAX_PROMPTED_LENSES = 8


def method_labels() -> dict[str, str]:
    """Every registered method's label for people, in the menus' order."""
    return {spec.name: spec.label for spec in lens_specs()}


def method_schema(schema: dict[str, object]) -> None:
    """The `method` field's JSON schema: the registered names as an enum, described (read when the schema is made,
    so a lens registered later is listed)."""
    schema["enum"] = lens_names()
    schema["description"] = methods_description()


def check_method(method: str) -> str:
    """`method` when it names a registered lens; a bounded message listing them otherwise."""
    if method not in lens_names():
        shown = method if len(method) <= 40 else method[:40] + "…"
        raise ValueError(f"unknown method {shown!r}: choose from {', '.join(lens_names())}")
    return method


class InvalidRequestError(ValueError):
    """A request that breaks a rule; `field` names the offending field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class GridRequest(BaseModel):
    """What to compute: text, lens method, N, layers, top-k, and the fixed prompt if any."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, examples=["Marty McFly from"])
    method: str = Field(defaults.METHOD, json_schema_extra=method_schema)
    n_future: int = Field(defaults.N_FUTURE, json_schema_extra={"minimum": 1})
    layers: str | list[int] | None = Field(None, description="all, 0-29, 0,5,10, ::3 or a list of block indices")
    top_k: int = Field(defaults.TOP_K, json_schema_extra={"minimum": 1})
    prompt: str | None = Field(None, description="fixed lens only: the prompt text (default: the paper's)")
    model: str | None = Field(None, description="must name the served model if given")
    track: list[int] | None = Field(
        None,
        description="token ids whose probability and rank the lens's first-token distribution gives at every layer "
        "and position: the response gets a `track` object (docs/grid-format.md); not part of the permalink",
    )

    @field_validator("text", "prompt")
    @classmethod
    def _normalised(cls, text: str | None) -> str | None:
        """Line ends normalised once, here: every later step (limits, tokens, the permalink) sees the same text."""
        return None if text is None else normalize_text(text)

    @field_validator("method")
    @classmethod
    def _registered_method(cls, method: str) -> str:
        return check_method(method)

    @field_validator("n_future", "top_k", mode="before")
    @classmethod
    def _no_booleans(cls, value: object) -> object:
        if isinstance(value, bool):
            raise ValueError("must be a whole number, not true/false")
        return value


def check_limits(request: GridRequest, limits: Limits) -> None:
    """The bounds that need no model: text and prompt length, N, top-k and how many tokens are tracked."""
    if len(request.text) > limits.max_text_chars:
        raise InvalidRequestError(
            "text", f"text has {len(request.text)} characters; the limit is {limits.max_text_chars}"
        )
    if not 1 <= request.n_future <= limits.max_n_future:
        raise InvalidRequestError("n_future", f"n_future must be between 1 and {limits.max_n_future}")
    if not 1 <= request.top_k <= limits.max_top_k:
        raise InvalidRequestError("top_k", f"top_k must be between 1 and {limits.max_top_k}")
    track = request.track
    if track is not None and not 1 <= len(track) <= limits.max_track_tokens:
        message = f"track lists {len(track)} token ids; between 1 and {limits.max_track_tokens} may be tracked"
        raise InvalidRequestError("track", message)
    prompt = request.prompt
    if prompt is not None and len(prompt) > limits.max_prompt_chars:
        raise InvalidRequestError(
            "prompt", f"prompt has {len(prompt)} characters; the limit is {limits.max_prompt_chars}"
        )


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
    n_tokens: int  # the text's tokens, counted once when planned

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
        return len(self.layers) * self.n_tokens

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
    """One loaded model and its lenses, built from the lens registry.

    Which registered lenses can run is checked once, when the service is made (artifact headers only: no tensor is
    read, nothing runs on the model). A lens is built on first use and kept; a lens whose artifact fails to load is
    remembered as failed, not read again. Building never runs the model (a fixed prompt is embedded on first use,
    on the thread that computes), so planning a request is safe off the inference worker."""

    def __init__(self, model: LoadedModel, prompt_dir: Path | None = None, limits: Limits = DEFAULT_LIMITS):
        self.model = model
        self.limits = limits
        self.prompt_dir = prompt_dir or default_prompt_dir(model.id)
        self._problems = {spec.name: spec.problem(model, self.prompt_dir) for spec in lens_specs()}
        self._built: dict[str, Lens | InvalidRequestError] = {}
        self._prompted: OrderedDict[tuple[str, str], Lens] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        model: str,
        device: str = "auto",
        dtype: str = "auto",
        prompt_dir: Path | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> LensService:
        return cls(load_model(model, device=device, dtype=dtype), prompt_dir, limits)

    @property
    def soft_prompts(self) -> SoftPromptSet | None:
        """The trained prompts, or None when this model has none yet."""
        try:
            lens = self._lens(lens_spec(FutureLens.method), None)
        except InvalidRequestError:
            return None
        return lens.prompts if isinstance(lens, FutureLens) else None

    def problem(self, method: str) -> str | None:
        """Why `method` cannot run here (None: it can); a lens registered after the service was made is checked now."""
        if method not in self._problems:
            self._problems[method] = lens_spec(method).problem(self.model, self.prompt_dir)
        return self._problems[method]

    def available_methods(self) -> list[str]:
        """The registered methods this model can serve (those needing an artifact only when it exists and fits)."""
        return [name for name in lens_names() if self.problem(name) is None]

    def _build(self, spec: LensSpec, prompt: str | None) -> Lens:
        try:
            return spec.build(LensContext(self.model, self.prompt_dir, prompt))
        except PromptArtifactError as error:  # a missing, stale or foreign artifact
            raise InvalidRequestError("method", str(error)) from None

    def _lens(self, spec: LensSpec, prompt: str | None) -> Lens:
        """The lens of `spec` (for `prompt` where it takes one), built once; a failed build is remembered."""
        problem = self.problem(spec.name)
        if problem is not None:
            raise InvalidRequestError("method", problem)
        with self._lock:
            if spec.takes_prompt:
                key = (spec.name, prompt)
                if key not in self._prompted:
                    self._prompted[key] = self._build(spec, prompt)
                    if len(self._prompted) > MAX_PROMPTED_LENSES:
                        self._prompted.popitem(last=False)
                self._prompted.move_to_end(key)
                return self._prompted[key]
            if spec.name not in self._built:
                try:
                    self._built[spec.name] = self._build(spec, None)
                except InvalidRequestError as error:
                    self._built[spec.name] = error
            built = self._built[spec.name]
        if isinstance(built, InvalidRequestError):
            raise built
        return built

    def _checked_prompt(self, request: GridRequest) -> str:
        """The request's prompt (default: the paper's), within the token limit."""
        prompt = request.prompt if request.prompt is not None else PAPER_FIXED_PROMPT
        n_tokens, limit = len(tokenize(self.model, prompt)), self.limits.max_prompt_tokens
        if n_tokens == 0:
            raise InvalidRequestError("prompt", "prompt is empty: it has no tokens")
        if n_tokens > limit:
            raise InvalidRequestError("prompt", f"prompt has {n_tokens} tokens; the limit is {limit}")
        return prompt

    def lens_for(self, request: GridRequest) -> Lens:
        spec = lens_spec(request.method)
        return self._lens(spec, self._checked_prompt(request) if spec.takes_prompt else None)

    def plan(self, request: GridRequest) -> PlannedGrid:
        """Check what depends on the model (model name, token count, layers); bind the lens and layers to use."""
        check_limits(request, self.limits)
        if request.model is not None and request.model != self.model.id:
            raise InvalidRequestError("model", f"this server serves {self.model.id!r} only")
        n_tokens = len(tokenize(self.model, request.text))
        if n_tokens == 0:
            raise InvalidRequestError("text", "text is empty: it has no tokens")
        limit = self.limits.max_text_tokens
        if n_tokens > limit:
            raise InvalidRequestError("text", f"text has {n_tokens} tokens; the limit is {limit}")
        try:
            layers = parse_layers(request.layers, self.model.adapter.n_layers)
        except LayerSpecError as error:
            raise InvalidRequestError("layers", str(error)) from None
        if request.track is not None:
            problem = check_token_ids(self.model, request.track) or self.track_problem(request.method)
            if problem:
                raise InvalidRequestError("track", problem)
        return PlannedGrid(request, self.lens_for(request), layers, n_tokens)

    @staticmethod
    def track_problem(method: str) -> str | None:
        """Why tokens cannot be tracked through `method`'s cells (None: they can)."""
        spec = lens_spec(method)
        return None if spec.tracks else f"the {spec.label} reads no first-token distribution to track"

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
