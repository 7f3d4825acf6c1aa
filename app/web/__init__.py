"""The web app (FastAPI + htmx). Importing this package first loads anyio's lazily imported modules, see below."""

from __future__ import annotations

import importlib
import sys

# Modules that define anyio `TypedAttributeSet` subclasses; anyio imports some of them lazily (on the first request).
ANYIO_TYPED_ATTRIBUTE_MODULES = ("anyio._backends._asyncio", "anyio.abc._sockets", "anyio.streams.tls")


def preload_anyio() -> None:
    """Import anyio's typed-attribute modules while `object` has no `.save`.

    nnsight mounts `.save()` on every object; anyio refuses to create a `TypedAttributeSet` subclass with any
    unannotated public attribute, so a class created after nnsight's import fails and the first request dies.
    If nnsight is already imported, its mount is lifted for the duration of these imports, then restored.
    """
    if all(name in sys.modules for name in ANYIO_TYPED_ATTRIBUTE_MODULES):
        return
    mounted = "nnsight" in sys.modules and hasattr(object, "save")
    if mounted:
        from nnsight import save
        from nnsight._c import mount, unmount

        unmount("save")
    try:
        for name in ANYIO_TYPED_ATTRIBUTE_MODULES:
            importlib.import_module(name)
    finally:
        if mounted:
            mount(save, "save")


preload_anyio()
