"""The ASGI app for `uvicorn app.main:app` (Dockerfile, docker-compose): settings from `FUTURE_LENS_*`.

A deployment shim of the source checkout, not part of the wheel: installed users run `future-lens serve`.
"""

from future_lens.server.web.app import create_app

app = create_app()
