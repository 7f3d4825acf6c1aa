"""A reduced, bounded form of `benchmarks/load.py`: concurrent clients against a real server on loopback."""

from __future__ import annotations

import pytest

from benchmarks.load import run_load

pytestmark = pytest.mark.embedded


def test_server_stays_healthy_under_concurrent_clients() -> None:
    result = run_load(clients=6, requests=3, cached_share=0.3, timeout_s=120)
    assert result["requests"] == 18
    assert result["unexpected_5xx"] == 0
    assert set(result["statuses"]) <= {"200", "503", "504"}
    assert result["statuses"].get("200", 0) > 0
    assert result["healthz"] and set(result["healthz"]) == {"200"}  # /healthz answered throughout
