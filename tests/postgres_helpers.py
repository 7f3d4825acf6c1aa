"""A throwaway PostgreSQL server for the tests: Debian's server binaries, a cluster in a temp dir, loopback only.

initdb refuses to run as root, so as root the cluster belongs to (and runs as) the `postgres` system user, through
`runuser` (found on PATH, else in /usr/sbin or /sbin). The server listens on a free 127.0.0.1 port and on a Unix
socket in its own temp dir; clients connect as `postgres` with trust authentication (nothing outside this machine
can reach it). No mock: the store tests talk to it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import NoReturn

import psycopg
import pytest

from benchmarks.serving import free_port

PG_ROOT = Path("/usr/lib/postgresql")
INSTALL_HINT = (
    "PostgreSQL's server binaries (initdb, pg_ctl under /usr/lib/postgresql/<version>/bin) are missing: install "
    "them with `apt-get install -y postgresql` (`make test` does, as root), or set FUTURE_LENS_PG_BIN to their folder"
)


#: Where `runuser` lives when the PATH leaves out the sbin folders (as a non-login root shell's PATH may).
RUNUSER_DIRS: tuple[str | Path, ...] = ("/usr/sbin", "/sbin")
RUNUSER_HINT = (
    "`runuser` (util-linux; it runs PostgreSQL's tools as the `postgres` user, since initdb refuses to run as root) "
    f"is neither on PATH nor in {', '.join(str(d) for d in RUNUSER_DIRS)}: install util-linux, or run the tests as a "
    "user other than root"
)


def runuser_path() -> str | None:
    """The `runuser` executable: from PATH, else from `RUNUSER_DIRS`; None when there is none."""
    found = shutil.which("runuser")
    if found:
        return found
    for folder in RUNUSER_DIRS:
        candidate = Path(folder) / "runuser"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def postgres_bin_dir() -> Path | None:
    """The folder holding initdb and pg_ctl: `$FUTURE_LENS_PG_BIN`, else Debian's newest installed version."""
    configured = os.environ.get("FUTURE_LENS_PG_BIN")
    if configured:
        return Path(configured) if (Path(configured) / "initdb").is_file() else None
    found = [path.parent for path in PG_ROOT.glob("*/bin/initdb") if path.parent.parent.name.isdigit()]
    return max(found, key=lambda bin_dir: int(bin_dir.parent.name), default=None)


def missing_postgres(hint: str = INSTALL_HINT) -> NoReturn:
    """In CI (CI=true) the PostgreSQL tests must run, so missing binaries (or a missing `runuser`) fail them;
    elsewhere they skip, saying why."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(hint, pytrace=False)
    pytest.skip(hint)


class PostgresServer:
    """One PostgreSQL cluster in a temp dir; `start()` runs initdb and pg_ctl, `stop()` removes everything."""

    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        self.as_root = os.geteuid() == 0
        self.runuser = runuser_path() if self.as_root else None
        if self.as_root and self.runuser is None:
            missing_postgres(RUNUSER_HINT)
        self.root = Path(tempfile.mkdtemp(prefix="future-lens-pg-"))  # not under pytest's root-only temp dirs
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()

    def _run(self, tool: str, *args: str) -> None:
        """Run a server tool (as `postgres` when we are root); a failure shows its output and the server log."""
        command = [str(self.bin_dir / tool), *args]
        if self.runuser is not None:
            command = [self.runuser, "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stdout}{done.stderr}\n{log}")

    def start(self) -> PostgresServer:
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C")
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root}"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")
        return self

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def admin(self) -> psycopg.Connection:
        """An autocommit superuser connection to the maintenance database."""
        return psycopg.connect(self.url(), autocommit=True)

    def create_database(self) -> str:
        """A new empty database; its URL."""
        name = f"test_{uuid.uuid4().hex[:12]}"
        with self.admin() as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop the database of `url`, ending its sessions."""
        name = url.rsplit("/", 1)[1]
        with self.admin() as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
