"""The lens registry: every readout method registered once, here, with what everything else needs to know about it.

The page's menu and compare form, the API's `method` enum and descriptions, the CLI's choices, the served model's
available methods, the evaluation's method list, the docs table and the exports' titles all read this registry, and
the tests cross every registered lens with every door. Adding a lens is its class plus one `register(LensSpec(...))`.

A spec says what the lens needs (`check_artifacts`: why it cannot run on a model, read from artifact headers only, so
it is cheap to ask once at start-up) and how to build it (`build`, given a `LensContext`); what the lens can do
(N it supports, whether it decodes phrases, tracks tokens) is read from its class, so it is stated once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from future_lens.lens.lenses import (
    PAPER_FIXED_PROMPT,
    FixedPromptLens,
    FutureLens,
    IdentityPatchscope,
    Lens,
    LogitLens,
)
from future_lens.lens.linear import JacobianLens, TunedLens, check_linear_maps
from future_lens.lens.models import LoadedModel
from future_lens.lens.prompts import check_soft_prompts


class UnknownLensError(KeyError):
    """No lens is registered under this name."""


@dataclass(frozen=True)
class LensContext:
    """What building a lens may use: the model, the folder of its fitted artifacts, and a request's prompt."""

    model: LoadedModel
    artifact_dir: Path
    prompt: str | None = None


@dataclass(frozen=True)
class LensSpec:
    """One registered readout method."""

    lens_class: type[Lens]
    label: str  # for people: menus, headings, figure titles
    description: str  # one line: the API schema, the CLI help, the docs table
    build: Callable[[LensContext], Lens]
    #: Why the lens cannot run on a model with artifacts in a folder (None: it can); None when it needs no artifact.
    check_artifacts: Callable[[LoadedModel, Path], str | None] | None = None
    artifacts: str = "none"  # what it needs, for people (the docs table)
    takes_prompt: bool = False  # the request's `prompt` is its target context
    compares: bool = True  # its grids can be compared with another method's
    report_key: str | None = None  # its name in the evaluation report (`eval.json`), None when not evaluated

    @property
    def name(self) -> str:
        return self.lens_class.method

    @property
    def max_future(self) -> int | None:
        """The most tokens a cell decodes (None: as many as asked)."""
        return self.lens_class.max_future

    @property
    def decodes(self) -> bool:
        """Whether cells are phrases of several tokens (else the next token only)."""
        return self.max_future is None or self.max_future > 1

    @property
    def streams(self) -> bool:
        """Whether rows can stream as they are computed (every lens can: others run one wave after another)."""
        return self.lens_class.streams

    @property
    def reads_next_token(self) -> bool:
        """Whether cells' first token is the next-token reading (N = 0), so its grids have a prediction depth."""
        return self.lens_class.reads_next_token

    @property
    def tracks(self) -> bool:
        """Whether tokens' probabilities can be tracked through its cells (`track`)."""
        return self.lens_class.can_track()

    def problem(self, model: LoadedModel, artifact_dir: Path) -> str | None:
        """Why this lens cannot run on `model` now (None: it can)."""
        return None if self.check_artifacts is None else self.check_artifacts(model, artifact_dir)


_REGISTRY: dict[str, LensSpec] = {}


def register(spec: LensSpec) -> LensSpec:
    """Add a lens; its name must be new."""
    if spec.name in _REGISTRY:
        raise ValueError(f"a lens named {spec.name!r} is registered already")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


@contextmanager
def registered(spec: LensSpec) -> Iterator[LensSpec]:
    """`spec` registered while the block runs (tests, plugins tried out)."""
    register(spec)
    try:
        yield spec
    finally:
        unregister(spec.name)


def lens_specs() -> list[LensSpec]:
    """Every registered lens, in registration order (the menus' order)."""
    return list(_REGISTRY.values())


def lens_names() -> list[str]:
    return list(_REGISTRY)


def lens_spec(name: str) -> LensSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownLensError(name) from None


def lens_label(name: str) -> str:
    """A method's label for people; the name itself for a method not registered here (an old stored grid)."""
    spec = _REGISTRY.get(name)
    return spec.label if spec is not None else name


def methods_description() -> str:
    """The `method` field's description: every registered lens in a few words."""
    return "; ".join(f"`{spec.name}`: {spec.description}" for spec in lens_specs())


def docs_table() -> str:
    """The registered lenses as a Markdown table (docs/lenses.md, from `python -m future_lens.lens.registry`)."""
    rows = [
        "| method | label | what it reads | N | tracks | needs |",
        "|---|---|---|---|---|---|",
    ]
    for spec in lens_specs():
        n = "1 (next token)" if spec.max_future == 1 else ("any" if spec.max_future is None else f"≤ {spec.max_future}")
        tracks = "yes" if spec.tracks else "no"
        rows.append(f"| `{spec.name}` | {spec.label} | {spec.description} | {n} | {tracks} | {spec.artifacts} |")
    return "\n".join(rows)


def _soft_prompts_problem(model: LoadedModel, directory: Path) -> str | None:
    return check_soft_prompts(directory, model)


def _maps_problem(kind: str) -> Callable[[LoadedModel, Path], str | None]:
    return lambda model, directory: check_linear_maps(directory, model, kind)


register(
    LensSpec(
        FutureLens,
        label="Future lens (learned prompt)",
        description="the paper's learned soft prompt per layer, the state patched into it, N tokens decoded",
        build=lambda ctx: FutureLens(ctx.model, ctx.artifact_dir),
        check_artifacts=_soft_prompts_problem,
        artifacts="trained soft prompts (`layer_*.safetensors` + `manifest.json`)",
        report_key="learned_prompt",
    )
)
register(
    LensSpec(
        LogitLens,
        label="Logit lens (next token)",
        description="final norm + unembedding of the state: the next token only",
        build=lambda ctx: LogitLens(ctx.model),
        report_key="logit_lens",
    )
)
register(
    LensSpec(
        FixedPromptLens,
        label="Fixed prompt",
        description="a hand-written prompt (`prompt`, default the paper's) as the target context, N tokens decoded",
        build=lambda ctx: FixedPromptLens(ctx.model, PAPER_FIXED_PROMPT if ctx.prompt is None else ctx.prompt),
        takes_prompt=True,
        report_key="fixed_prompt",
    )
)
register(
    LensSpec(
        IdentityPatchscope,
        label="Identity patchscope",
        description="Patchscopes' few-shot token-identity prompt as the target context, N tokens decoded",
        build=lambda ctx: IdentityPatchscope(ctx.model),
        report_key="identity_patchscope",
    )
)
register(
    LensSpec(
        TunedLens,
        label="Tuned lens (next token)",
        description="a fitted affine translator per layer, then final norm + unembedding: the next token only",
        build=lambda ctx: TunedLens(ctx.model, ctx.artifact_dir),
        check_artifacts=_maps_problem("tuned"),
        artifacts="`tuned-lens.safetensors`",
        report_key="tuned_lens",
    )
)
register(
    LensSpec(
        JacobianLens,
        label="Jacobian lens (next token)",
        description="the state through the average Jacobian of the last block's output, then the logit lens",
        build=lambda ctx: JacobianLens(ctx.model, ctx.artifact_dir),
        check_artifacts=_maps_problem("jacobian"),
        artifacts="`jacobian-lens.safetensors`",
        report_key="jacobian_lens",
    )
)


if __name__ == "__main__":  # python -m future_lens.lens.registry > docs/lenses.md
    print("# Lenses\n\nEvery registered readout method (generated from `future_lens/lens/registry.py`).\n")
    print(docs_table())
