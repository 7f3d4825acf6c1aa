"""Where Future Lens reads its packaged assets and keeps the user's files: the one module that decides these paths.

Packaged assets (templates, static files, the shipped prompts and lens maps, the embedded model's report) are found
with `importlib.resources`, so they work from a checkout and from an installed wheel alike. What Future Lens
writes (converted models, datasets, imported or trained prompts, reports, the default permalink database) goes to
the user's cache and data directories, never next to the source or into the working directory.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

APP_DIR_NAME = "future-lens"


class MissingAssetError(FileNotFoundError):
    """A file that ships inside the package is not there (a broken or partial install)."""


def packaged(*parts: str) -> Path:
    """The path of a file or folder shipped inside the `future_lens` package (an installed wheel or a checkout)."""
    location = resources.files("future_lens").joinpath(*parts)
    if not isinstance(location, Path):  # e.g. imported from a zip: our assets must be real files
        raise MissingAssetError(f"future_lens is not installed as files on disk ({location}); reinstall it with pip")
    return location


def packaged_required(*parts: str) -> Path:
    """`packaged(...)`, failing with a message naming the asset when it is missing."""
    location = packaged(*parts)
    if not location.exists():
        raise MissingAssetError(
            f"the package's asset {'/'.join(parts)} is missing at {location}: reinstall future-lens"
        )
    return location


def _xdg(variable: str, fallback: str) -> Path:
    configured = os.environ.get(variable)
    return Path(configured) if configured else Path.home() / fallback


def user_cache_dir() -> Path:
    """Converted models, datasets, imported prompts and lenses (FUTURE_LENS_CACHE, else $XDG_CACHE_HOME/future-lens,
    else ~/.cache/future-lens)."""
    configured = os.environ.get("FUTURE_LENS_CACHE")
    return Path(configured) if configured else _xdg("XDG_CACHE_HOME", ".cache") / APP_DIR_NAME


def user_data_dir() -> Path:
    """The default permalink database and the user's own evaluation reports (FUTURE_LENS_DATA, else
    $XDG_DATA_HOME/future-lens, else ~/.local/share/future-lens)."""
    configured = os.environ.get("FUTURE_LENS_DATA")
    return Path(configured) if configured else _xdg("XDG_DATA_HOME", ".local/share") / APP_DIR_NAME


def user_checkpoints() -> Path:
    """Prompts and lens maps the user trained or imported, one folder per model (FUTURE_LENS_CHECKPOINTS overrides)."""
    configured = os.environ.get("FUTURE_LENS_CHECKPOINTS")
    return Path(configured) if configured else user_cache_dir() / "checkpoints"


def shipped_reports() -> Path:
    """The evaluation reports that ship with the package (the embedded model's), one folder per model."""
    return packaged("reports")


def user_reports() -> Path:
    """Reports `future-lens eval` writes by default, one folder per model (FUTURE_LENS_REPORTS overrides)."""
    configured = os.environ.get("FUTURE_LENS_REPORTS")
    return Path(configured) if configured else user_data_dir() / "reports"


def default_db_path() -> Path:
    """The SQLite permalink database used when the server is given none."""
    return user_data_dir() / "future-lens.sqlite3"
