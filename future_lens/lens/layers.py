"""Layer specifications: "all", "0-29", "0,5,10", "::3", "10:" and combinations like "0-5,20:30:2".

Every bound is checked before anything is built from a spec (its length, its number of parts or entries, each
range's and slice's endpoints), so no spec costs more than a few times `n_layers` in time or memory, and error
messages quote at most `QUOTE_CHARS` characters of the input: a hostile spec gets a short answer, fast.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence, Sized

#: The most characters of a bad spec (or part) an error message quotes.
QUOTE_CHARS = 40
#: The most characters of a number an error message shows.
NUMBER_CHARS = 20
HINT = "use e.g. 'all', '0-29', '0,5,10' or '::3'"
NUMBER = r"-?[0-9]+"
RANGE = re.compile(rf"({NUMBER})-({NUMBER})")
SLICE = re.compile(rf"({NUMBER})?:({NUMBER})?(?::({NUMBER})?)?")
SINGLE = re.compile(NUMBER)
WHITESPACE = re.compile(r"\s+")


class LayerSpecError(ValueError):
    """A layer specification that cannot be parsed or names layers the model does not have."""


def max_spec_chars(n_layers: int) -> int:
    """The longest spec accepted for `n_layers` blocks: room to list every block with separators, and then some."""
    return 8 * n_layers + 64


def max_list_entries(n_layers: int) -> int:
    """The most entries a list of block indices may have (repeats are allowed, but not without end)."""
    return 4 * n_layers


def quoted(text: str, limit: int = QUOTE_CHARS) -> str:
    """`text` quoted for a message, cut to `limit` characters (with `…`) so messages never grow with the input."""
    return repr(text if len(text) <= limit else text[:limit] + "…")


def shown(number: int | str) -> str:
    """A number for a message, cut to `NUMBER_CHARS` characters (a huge int is never turned into its digits)."""
    if isinstance(number, int) and number.bit_length() > 14_000:  # str() refuses ints over 4300 digits
        return f"{'-' if number < 0 else ''}≈2^{abs(number).bit_length() - 1}"
    if isinstance(number, int) and abs(number) >= 10**NUMBER_CHARS:
        return str(number)[:NUMBER_CHARS] + "…"
    text = str(number)
    return text if len(text) <= NUMBER_CHARS else text[:NUMBER_CHARS] + "…"


def _blocks(n_layers: int) -> str:
    return f"the model has blocks 0..{n_layers - 1}"


def missing(layer: int | str, n_layers: int, last: int | None = None) -> LayerSpecError:
    """The error for a layer (or the layers `layer`..`last`) the model does not have."""
    if last is None or last == layer:
        return LayerSpecError(f"layer {shown(layer)} does not exist: {_blocks(n_layers)}")
    return LayerSpecError(f"layers {shown(layer)}..{shown(last)} do not exist: {_blocks(n_layers)}")


def _number(part: str, text: str, n_layers: int) -> int:
    """`text` as a number; one with more digits than any block index could need is refused before `int()`."""
    if len(text.lstrip("-")) > len(str(n_layers)) + NUMBER_CHARS:
        raise LayerSpecError(f"bad layer spec {quoted(part)}: {shown(text)} is far outside blocks 0..{n_layers - 1}")
    return int(text)


def _range_part(part: str, low: int, high: int, n_layers: int) -> range:
    """`low`-`high`, both ends included; each end is checked before the range is made."""
    if low > high:
        raise LayerSpecError(f"bad range {quoted(part)}: {shown(low)} > {shown(high)}")
    if low < 0:
        raise missing(low, n_layers)
    if high >= n_layers:
        raise missing(max(low, n_layers), n_layers, high)
    return range(low, high + 1)


def _slice_part(part: str, pieces: Sequence[str | None], n_layers: int) -> range:
    """`start:stop:step` as Python slices it, with `start` and `stop` (when given) within -n_layers..n_layers."""
    start, stop, step = (None if piece is None else _number(part, piece, n_layers) for piece in pieces)
    if step == 0:
        raise LayerSpecError(f"bad slice {quoted(part)}: step must not be 0")
    for name, end in (("start", start), ("stop", stop)):
        if end is not None and not -n_layers <= end <= n_layers:
            raise LayerSpecError(
                f"bad slice {quoted(part)}: {name} {shown(end)} is outside -{n_layers}..{n_layers}; {_blocks(n_layers)}"
            )
    return range(n_layers)[slice(start, stop, step)]


def _parse_part(part: str, n_layers: int) -> range:
    """The blocks one comma-separated part names: at most `n_layers` of them, checked before they are built."""
    if part == "all":
        return range(n_layers)
    if (found := SINGLE.fullmatch(part)) is not None:
        layer = _number(part, found.group(), n_layers)
        if not 0 <= layer < n_layers:
            raise missing(layer, n_layers)
        return range(layer, layer + 1)
    if (found := RANGE.fullmatch(part)) is not None:
        low, high = (_number(part, found.group(i), n_layers) for i in (1, 2))
        return _range_part(part, low, high, n_layers)
    if (found := SLICE.fullmatch(part)) is not None:
        return _slice_part(part, found.groups(), n_layers)
    if part.count(":") > 2 and re.fullmatch(r"[0-9:-]*", part):
        raise LayerSpecError(f"bad slice {quoted(part)}: use start:stop:step")
    raise LayerSpecError(f"bad layer spec {quoted(part)}: {HINT}")


def _parse_string(spec: str, n_layers: int) -> set[int]:
    limit = max_spec_chars(n_layers)
    if len(spec) > limit:
        raise LayerSpecError(f"layer spec has {len(spec)} characters; the limit is {limit} for {n_layers} blocks")
    parts = [part for part in WHITESPACE.sub("", spec).split(",") if part]
    if not parts:
        raise LayerSpecError("layer spec is empty")
    layers: set[int] = set()
    for part in parts:
        layers.update(_parse_part(part, n_layers))
    return layers


def _parse_list(spec: Iterable[int], n_layers: int) -> set[int]:
    limit = max_list_entries(n_layers)
    entries = spec if isinstance(spec, Sized) else list(itertools.islice(spec, limit + 1))
    if len(entries) > limit:
        raise LayerSpecError(f"the layer list is too long: at most {limit} entries for {n_layers} blocks")
    layers: set[int] = set()
    for entry in entries:
        try:
            layer = int(entry)
        except (TypeError, ValueError):
            raise LayerSpecError(
                f"bad layer {quoted(str(entry)[: QUOTE_CHARS + 1])}: layers are whole numbers"
            ) from None
        if not 0 <= layer < n_layers:
            raise missing(layer, n_layers)
        layers.add(layer)
    return layers


def parse_layers(spec: str | Iterable[int] | None, n_layers: int) -> list[int]:
    """Sorted distinct 0-based block indices for `spec` (None means all); every index must exist.

    Ranges (`a-b`) include both ends, which must be blocks; slices (`start:stop:step`) are Python slices of the
    blocks with `start`/`stop` within -n_layers..n_layers. Raises `LayerSpecError` with a short message."""
    if spec is None:
        return list(range(n_layers))
    layers = _parse_string(spec, n_layers) if isinstance(spec, str) else _parse_list(spec, n_layers)
    if not layers:
        raise LayerSpecError("layer spec selects no layers")
    return sorted(layers)


def strided_layers(n_layers: int, stride: int) -> list[int]:
    """Every `stride`-th block from 0, always keeping the last one."""
    if stride < 1:
        raise LayerSpecError("layer stride must be at least 1")
    return sorted(set(range(0, n_layers, stride)) | {n_layers - 1})
