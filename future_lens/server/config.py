"""The server's settings: environment variables `FUTURE_LENS_*` or `.env`, read once by whoever starts the server
(`future-lens serve`, `app/main.py`) and passed explicitly from there; nothing here is a process-wide cache."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pydantic import Field, SecretStr, create_model, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from future_lens.defaults import Limits
from future_lens.lens.models import DEFAULT_MODEL
from future_lens.paths import default_db_path


def _limit_field(bound: dataclasses.Field) -> tuple[type, object]:
    return int, Field(bound.default, ge=1, description=bound.metadata["description"])


#: The request bounds of `future_lens.defaults.Limits`, each overridable as `FUTURE_LENS_<NAME>` or in `.env`
#: (its fields are generated from `Limits`, so each bound is written once).
LimitSettings = create_model(
    "LimitSettings",
    __base__=BaseSettings,
    **{bound.name: _limit_field(bound) for bound in dataclasses.fields(Limits)},
)
LimitSettings.model_config = SettingsConfigDict(env_prefix="FUTURE_LENS_", env_file=".env", extra="ignore")


def limits_from_environment() -> Limits:
    """`Limits` as the environment (or `.env`) sets them."""
    return Limits(**LimitSettings().model_dump())


class Settings(BaseSettings):
    """How the server runs: which model on which device, where grids are stored."""

    model_config = SettingsConfigDict(env_prefix="FUTURE_LENS_", env_file=".env", extra="ignore")

    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "auto"
    host: str = "127.0.0.1"
    port: int = 8000
    db_path: Path | None = Field(
        None, description="the SQLite permalink file (default: future-lens.sqlite3 in the user's data directory)"
    )
    db_url: str | None = Field(
        None,
        description="postgresql://user:password@host:port/dbname: keep permalinks in PostgreSQL (shared by replicas) "
        "instead of the SQLite file db_path",
    )
    prompt_dir: Path | None = None
    max_queue: int = Field(16, description="grids waiting for the model at most; more get 503 + Retry-After")
    rate_limit_per_minute: float | None = Field(
        None, description="grids one client address may start per minute (token bucket; unset: no limit)"
    )
    rate_limit_burst: int = Field(10, description="grids one client may start at once before the rate applies")
    request_timeout_s: float = Field(120.0, description="deadline of one grid request; later answers are 504")
    merge_max_cells: int = Field(
        2048,
        ge=0,
        description="queued requests that differ only in their text run in one engine pass of at most this many "
        "(layer, token) cells (a single larger request still runs alone); 0: one request per pass",
    )
    secret: SecretStr | None = Field(
        None,
        description="key of the permalink ids (HMAC); unset: a random key generated once and kept in the permalink "
        "database (shared by replicas); changing it gives new requests new ids, stored permalinks still open",
    )
    retention_max_age_days: float | None = Field(
        None, gt=0, description="delete grids neither stored nor opened for this many days (unset: no age limit)"
    )
    retention_max_mb: float | None = Field(
        None,
        gt=0,
        description="keep the stored grids under this many MB, deleting the longest unopened first (unset: no limit)",
    )
    retention_keep_recent_hours: float = Field(
        24.0, ge=0, description="grids stored or opened within this many hours are never deleted by the size limit"
    )
    retention_interval_s: float = Field(600.0, gt=0, description="how often the retention policy is applied")
    limits: Limits = Field(
        default_factory=limits_from_environment,
        description="bounds on one request (each `FUTURE_LENS_MAX_*`, see Limits)",
    )
    reports_dir: Path | None = Field(
        None,
        description="folder of evaluation reports, one subfolder per model, for /about (default: the user's reports "
        "when they hold the served model's, else the package's)",
    )

    @field_validator("secret")
    @classmethod
    def _long_enough_secret(cls, secret: SecretStr | None) -> SecretStr | None:
        """Empty means unset (generate one); a configured key must be hard to guess."""
        if secret is None or not secret.get_secret_value():
            return None
        if len(secret.get_secret_value()) < 16:
            raise ValueError("secret must be at least 16 characters (e.g. `openssl rand -hex 32`)")
        return secret

    @field_validator("db_url")
    @classmethod
    def _postgresql_url(cls, url: str | None) -> str | None:
        """Empty means unset; anything else must be a PostgreSQL URL."""
        if not url:
            return None
        if not url.startswith(("postgresql://", "postgres://")):
            raise ValueError("db_url must be a postgresql:// URL")
        return url

    def sqlite_path(self) -> Path:
        """The SQLite file this server uses: `db_path`, else the one in the user's data directory."""
        return self.db_path if self.db_path is not None else default_db_path()
