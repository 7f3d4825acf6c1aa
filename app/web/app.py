"""FastAPI application factory (the web issue builds the page, /lens and permalinks on top of this)."""

from __future__ import annotations

from fastapi import FastAPI

from app import __version__
from app.config import Settings
from app.service import LensService


def create_app(settings: Settings | None = None, service: LensService | None = None) -> FastAPI:
    """An app serving one model; pass `service` to reuse an already loaded model (tests)."""
    settings = settings or Settings()
    service = service or LensService.load(settings.model, settings.device, settings.dtype, settings.prompt_dir)
    app = FastAPI(title="Future Lens", version=__version__)
    app.state.settings = settings
    app.state.service = service

    @app.get("/healthz")
    def healthz() -> dict[str, object]:
        model = service.model
        prompts = service.soft_prompts
        return {
            "status": "ok",
            "model": model.id,
            "fingerprint": model.fingerprint,
            "device": str(model.device),
            "dtype": model.dtype_name,
            "prompt_layers": sorted(prompts.prompts) if prompts else [],
        }

    return app
