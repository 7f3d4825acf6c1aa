"""The PostgreSQL test server's helpers (tests/postgres_helpers.py): `runuser` is found whatever the PATH, and
without it the PostgreSQL tests skip saying why (fail in CI), like missing server binaries."""

from __future__ import annotations

import os

import pytest

from tests import postgres_helpers
from tests.postgres_helpers import PostgresServer, postgres_bin_dir


@pytest.fixture
def as_root(monkeypatch):
    """Pretend to be root (the case where the server tools run through runuser)."""
    monkeypatch.setattr(postgres_helpers.os, "geteuid", lambda: 0)


@pytest.mark.skipif(not os.path.exists("/usr/sbin/runuser"), reason="needs /usr/sbin/runuser")
def test_runuser_is_found_when_sbin_is_not_on_path(monkeypatch, as_root):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert postgres_helpers.runuser_path() == "/usr/sbin/runuser"


@pytest.mark.skipif(os.geteuid() != 0, reason="runuser is only used as root")
def test_the_test_server_starts_as_root_without_sbin_on_path(monkeypatch):
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        postgres_helpers.missing_postgres()
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    server = PostgresServer(bin_dir)
    try:
        server.start()
        with server.admin() as connection:
            assert connection.execute("SELECT 1").fetchone()[0] == 1
    finally:
        server.stop()


def test_without_runuser_the_postgres_tests_skip_saying_why(monkeypatch, tmp_path, as_root):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(postgres_helpers, "RUNUSER_DIRS", (tmp_path,))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="runuser"):
        PostgresServer(tmp_path)


def test_without_runuser_the_postgres_tests_fail_in_ci(monkeypatch, tmp_path, as_root):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(postgres_helpers, "RUNUSER_DIRS", (tmp_path,))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="runuser"):
        PostgresServer(tmp_path)


def test_the_server_tools_run_through_the_resolved_runuser(monkeypatch, tmp_path, as_root):
    fake = tmp_path / "runuser"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(postgres_helpers, "RUNUSER_DIRS", (tmp_path,))
    server = PostgresServer(tmp_path)
    try:
        assert server.runuser == str(fake)
        server._run("initdb", "--version")  # runs the fake runuser, which succeeds
    finally:
        server.stop()
