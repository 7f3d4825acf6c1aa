"""Layer specifications: "all", "0-29", "0,5,10", "::3", "10:" and combinations like "0-5,20:30:2"."""

from __future__ import annotations


class LayerSpecError(ValueError):
    """A layer specification that cannot be parsed or names layers the model does not have."""


def _parse_part(part: str, n_layers: int) -> list[int]:
    if part == "all":
        return list(range(n_layers))
    if ":" in part:
        pieces = part.split(":")
        if len(pieces) > 3:
            raise LayerSpecError(f"bad slice {part!r}: use start:stop:step")
        start, stop, step = (int(p) if p.strip() else None for p in [*pieces, ""][:3])
        if step == 0:
            raise LayerSpecError(f"bad slice {part!r}: step must not be 0")
        return list(range(n_layers))[slice(start, stop, step)]
    if "-" in part[1:]:
        low, high = part.split("-", 1) if not part.startswith("-") else part[1:].split("-", 1)
        first, last = int(low), int(high)
        if first > last:
            raise LayerSpecError(f"bad range {part!r}: {first} > {last}")
        return list(range(first, last + 1))
    return [int(part)]


def parse_layers(spec: str | list[int] | None, n_layers: int) -> list[int]:
    """Sorted distinct 0-based block indices for `spec` (None means all); every index must exist."""
    if spec is None:
        return list(range(n_layers))
    if isinstance(spec, str):
        parts = [p.strip() for p in spec.replace(" ", "").split(",") if p.strip()]
        if not parts:
            raise LayerSpecError("layer spec is empty")
        layers: list[int] = []
        for part in parts:
            try:
                layers.extend(_parse_part(part, n_layers))
            except ValueError as error:
                if isinstance(error, LayerSpecError):
                    raise
                raise LayerSpecError(f"bad layer spec {part!r}: use e.g. 'all', '0-29', '0,5,10' or '::3'") from None
    else:
        layers = [int(layer) for layer in spec]
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise LayerSpecError(f"layers {bad} do not exist: the model has blocks 0..{n_layers - 1}")
    if not layers:
        raise LayerSpecError("layer spec selects no layers")
    return sorted(set(layers))


def strided_layers(n_layers: int, stride: int) -> list[int]:
    """Every `stride`-th block from 0, always keeping the last one."""
    if stride < 1:
        raise LayerSpecError("layer stride must be at least 1")
    return sorted(set(range(0, n_layers, stride)) | {n_layers - 1})
