"""The web server works whether or not nnsight mounted `.save` on every object, without changing nnsight.

nnsight (its `CONFIG.APP.PYMOUNT`, on by default) writes a `save` method into `object`'s own attribute dict when it is
imported, so `dir()` of every class lists `save`. anyio's `TypedAttributeSet.__init_subclass__` refuses a subclass
with any public attribute that no class of its MRO annotates, so every subclass defined after the mount raises
`TypeError: Attribute 'save' is missing its type annotation`. anyio 4 imports its modules lazily: `SocketAttribute`
(`anyio.abc`) is defined when the asyncio backend is first imported (the first `anyio.run`, `to_thread`, TestClient
portal or Starlette thread-pool call), `FileStreamAttribute` on first use of `anyio.streams.file`. When nnsight came
first, the server's first request fails there.

`tolerate_object_mounts()` lists the names mounted on `object` (and `save`, for a mount still to come) among the
annotations of `TypedAttributeSet` itself; anyio's check reads annotations across the MRO, so subclasses then pass
whenever they are defined. It only widens anyio's check: nnsight stays as configured, `.save` stays mounted (the user's
own `x.save()` in the same process keeps working) and anyio's typed attributes behave as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

NNSIGHT_MOUNT = "save"  # what nnsight mounts on `object` (nnsight/__init__.py: `mount(save, "save")`)


def object_mounts() -> set[str]:
    """Public names written into `object` itself (nnsight's mount), plus the one nnsight may still mount."""
    return {name for name in vars(object) if not name.startswith("_")} | {NNSIGHT_MOUNT}


def tolerate_object_mounts() -> None:
    """Let anyio define its typed-attribute sets with `.save` mounted on `object` (idempotent; no-op without anyio)."""
    try:
        from anyio import TypedAttributeSet
    except ImportError:
        return
    own = dict(vars(TypedAttributeSet).get("__annotations__", {}))
    missing = object_mounts() - own.keys()
    if missing:
        TypedAttributeSet.__annotations__ = {**own, **dict.fromkeys(sorted(missing), Callable[..., Any])}
