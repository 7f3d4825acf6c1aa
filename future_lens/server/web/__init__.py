"""The web app (FastAPI + htmx): routes and templates glue over the lens service; no model code lives here."""
