"""Settings and limits: the one place their values are defined (environment variables `FUTURE_LENS_*` or `.env`)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.lens.models import DEFAULT_MODEL


class Limits(BaseSettings):
    """Bounds on one request, sized so a 2-core CPU answers a full-size request in seconds."""

    model_config = SettingsConfigDict(env_prefix="FUTURE_LENS_", env_file=".env", extra="ignore")

    max_text_chars: int = Field(2000, description="longest input text, in characters")
    max_text_tokens: int = Field(64, description="longest input text, in tokens")
    max_n_future: int = Field(8, description="most future tokens per cell")
    max_top_k: int = Field(20, description="most alternatives listed for a cell's first token")
    max_prompt_chars: int = Field(500, description="longest fixed prompt, in characters")
    max_prompt_tokens: int = Field(64, description="longest fixed prompt, in tokens")
    max_body_bytes: int = Field(64_000, description="largest request body")


class Settings(BaseSettings):
    """How the server runs: which model on which device, where grids are stored."""

    model_config = SettingsConfigDict(env_prefix="FUTURE_LENS_", env_file=".env", extra="ignore")

    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "auto"
    host: str = "127.0.0.1"
    port: int = 8000
    db_path: Path = Path("future-lens.sqlite3")
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
    assets_dir: Path | None = Field(
        None, description="folder holding templates/, static/ and reports/ (default: the source checkout, else cwd)"
    )

    @field_validator("db_url")
    @classmethod
    def _postgresql_url(cls, url: str | None) -> str | None:
        """Empty means unset; anything else must be a PostgreSQL URL."""
        if not url:
            return None
        if not url.startswith(("postgresql://", "postgres://")):
            raise ValueError("db_url must be a postgresql:// URL")
        return url


@lru_cache
def get_limits() -> Limits:
    return Limits()
