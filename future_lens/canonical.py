"""Canonical JSON: one text per value, so that equal requests give equal texts (and equal permalink ids).

Library code (`future_lens.service`) and the server's permalink store (`future_lens.server.store`, which re-exports
it) both use it; it lives here so that the library never imports the server.
"""

from __future__ import annotations

import json


def canonical_json(payload: object) -> str:
    """Deterministic JSON (sorted keys, no spaces, ASCII only so any Unicode, even lone surrogates, encodes)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
