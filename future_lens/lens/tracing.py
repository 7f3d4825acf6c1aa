"""nnsight, contained: the one module that imports it, and it leaves nnsight as the user configured it.

Importing this changes nothing in `os.environ` and no nnsight setting: nnsight reads the user's own config (their
`NNSIGHT_CONFIG` file, or `~/.config/nnsight/config.yaml`, and `NDIF_*` variables) exactly as it would without us. With
its default `CONFIG.APP.PYMOUNT` nnsight then mounts `.save()` on every object at import (its C extension writes
`save` into `object`'s own attribute dict), so a user's `model.layers[0].output.save()` keeps working beside us. Our
code never relies on the mount: it saves values with `nnsight.save(x)`, which works either way.

The mount gives every class a `save` attribute, which anyio's `TypedAttributeSet` refuses in any subclass defined
afterwards ("Attribute 'save' is missing its type annotation"). anyio 4 imports its modules lazily, so nnsight's own
`import anyio` defines none of those subclasses, and the first `anyio.run`, thread pool or socket (which imports the
asyncio backend, hence `SocketAttribute`) would fail. So when this module is the one that brings nnsight in, it first
imports anyio's attribute sets (only imports: no setting, no patch); a process where nnsight came first is handled by
the web server itself (future_lens/server/nnsight_safety.py). The source pass and the naive reference trace through
here; the engine patches with plain hooks (interventions.py).
"""

from __future__ import annotations

import importlib
import sys

#: anyio's `TypedAttributeSet` subclasses (anyio 4.x): defined before nnsight's mount, or never definable after it.
ANYIO_ATTRIBUTE_SETS = (
    ("anyio.abc", "SocketAttribute"),
    ("anyio.streams.file", "FileStreamAttribute"),
    ("anyio.streams.tls", "TLSAttribute"),
)


def define_anyio_attribute_sets() -> None:
    """Import anyio's attribute sets now, while `.save` is not mounted; a no-op without anyio."""
    for module, name in ANYIO_ATTRIBUTE_SETS:
        try:
            getattr(importlib.import_module(module), name)  # anyio.abc imports the class lazily, on first access
        except (ImportError, AttributeError):  # no anyio, or another layout: nothing of it to protect
            continue


if "nnsight" not in sys.modules:
    define_anyio_attribute_sets()

from nnsight import save  # noqa: E402 (after the anyio classes above)
from nnsight.modeling.transformers import TransformersModel  # noqa: E402

__all__ = ["TransformersModel", "save"]
