"""Atomic file writes: a reader sees the old file or the whole new one, never a torn one, even after a crash.

Every artifact the project writes (prompts, manifests, datasets, run checkpoints, reports, plots) goes through
`atomic_path`: write a staging file in the same folder, fsync it, rename it over the target, fsync the folder.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a staging path to write `path`'s new content to (by any library); it replaces `path` on success.

    The staging file keeps `path`'s suffix, so writers that infer the format from it (matplotlib) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(handle)
    staging = Path(name)
    try:
        yield staging
        with staging.open("rb+") as written:
            os.fsync(written.fileno())
        os.replace(staging, path)
        _fsync_directory(path.parent)
    finally:
        staging.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Replace `path` with `text` (UTF-8) atomically."""
    with atomic_path(path) as staging:
        staging.write_text(text, encoding="utf-8")


def atomic_write_json(path: Path, payload: object, **dump_options: object) -> None:
    """Replace `path` with `payload` as JSON (a trailing newline added) atomically."""
    atomic_write_text(path, json.dumps(payload, **dump_options) + "\n")
