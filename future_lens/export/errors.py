"""The one error shape of the export modules: a parameter that cannot be used, named, with what is wrong."""

from __future__ import annotations


class FieldError(ValueError):
    """`field` names the offending parameter (the web API answers 422 with it), `message` says what is wrong."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
