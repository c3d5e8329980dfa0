"""A throwaway PostgreSQL server for ``bench/fleet.py``, with ``pg_stat_statements`` on.

The server binaries of the machine (Debian's ``postgresql`` package puts them
in ``/usr/lib/postgresql/<version>/bin``; elsewhere, ``initdb`` on PATH) run
in a temporary directory, with trust authentication on 127.0.0.1, fsync off,
and ``pg_stat_statements`` preloaded so that the benchmark can count what
the boxes ask. Under root the server runs as the ``postgres`` user (or else
``nobody``), as PostgreSQL refuses root.

A small copy of what ``tests/postgres_server.py`` does (which the benchmarks
do not import): no restarts, no kills, one start and one stop.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

HOST = "127.0.0.1"
#: The superuser initdb makes; the benchmark reads statistics as this role.
SUPERUSER = "bench"
TIMEOUT = 60.0

SETTINGS = {
    "listen_addresses": HOST,
    "fsync": "off",
    "full_page_writes": "off",
    "synchronous_commit": "on",
    "shared_buffers": "32MB",
    "max_connections": "100",
    "huge_pages": "off",
    "timezone": "UTC",
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track": "top",
    "pg_stat_statements.track_utility": "on",
    "pg_stat_statements.max": "5000",
}


def find_bindir() -> Path | None:
    """The newest PostgreSQL's server binaries on this machine, or None."""
    found = []
    for initdb in Path("/usr/lib/postgresql").glob("*/bin/initdb"):
        version = initdb.parent.parent.name
        if version.isdigit() and (initdb.parent / "postgres").exists():
            found.append((int(version), initdb.parent))
    if found:
        return max(found)[1]
    on_path = shutil.which("initdb")
    if on_path is not None and (Path(on_path).parent / "postgres").exists():
        return Path(on_path).parent
    return None


class Postgres:
    """``start()`` (initdb, then the server, a child of this process), ``close()``."""

    def __init__(self) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise RuntimeError(
                "bench/fleet.py needs PostgreSQL's server binaries (initdb, postgres): "
                "Debian's postgresql package, or Homebrew's postgresql"
            )
        self.bindir = bindir
        with socket.socket() as probe:
            probe.bind((HOST, 0))
            self.port: int = probe.getsockname()[1]
        self._account = _unprivileged() if os.geteuid() == 0 else None
        self.directory = Path(
            tempfile.mkdtemp(prefix="foreman-bench-pg-", dir="/tmp" if self._account else None)
        )
        self.data = self.directory / "data"
        self.log = self.directory / "postgres.log"
        self._process: subprocess.Popen[bytes] | None = None
        if self._account is not None:
            os.chown(self.directory, self._account.pw_uid, self._account.pw_gid)

    def url(self, database: str, role: str = SUPERUSER) -> str:
        return f"postgresql://{role}@{HOST}:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> psycopg.Connection[Any]:
        """A connection as the superuser, in autocommit."""
        return psycopg.connect(self.url(database), autocommit=True)

    def start(self) -> None:
        self._run(
            "initdb",
            *("--pgdata", str(self.data), "--username", SUPERUSER, "--auth", "trust"),
            *("--encoding", "UTF8", "--no-locale", "--no-sync"),
        )
        settings = {**SETTINGS, "port": str(self.port), "unix_socket_directories": ""}
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# bench/_postgres.py\n")
            for key, value in settings.items():
                conf.write(f"{key} = '{value}'\n")
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.data)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                start_new_session=True,
                **self._as_account(),
            )
        deadline = time.monotonic() + TIMEOUT
        pidfile = self.data / "postmaster.pid"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"PostgreSQL exited while starting:\n{self.log_tail()}")
            try:
                lines = pidfile.read_text().splitlines()
            except OSError:
                lines = []
            # Line 1 the postmaster's pid, line 8 its status (as pg_ctl -w reads it).
            if len(lines) >= 8 and lines[7].strip() == "ready":
                return
            time.sleep(0.02)
        raise RuntimeError(f"PostgreSQL did not start in {TIMEOUT:.0f} s:\n{self.log_tail()}")

    def close(self) -> None:
        """A fast shutdown, then the directory is removed."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _run(self, program: str, *arguments: str) -> None:
        done = subprocess.run(
            [str(self.bindir / program), *arguments],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            cwd=self.directory,
            timeout=TIMEOUT,
            check=False,
            **self._as_account(),
        )
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")
            raise RuntimeError(f"{program} failed ({done.returncode}):\n{output}")

    def _as_account(self) -> dict[str, Any]:
        environment = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        environment["LC_ALL"] = "C"
        if self._account is None:
            return {"env": environment}
        environment["HOME"] = str(self.directory)
        environment["USER"] = environment["LOGNAME"] = self._account.pw_name
        return {
            "env": environment,
            "user": self._account.pw_uid,
            "group": self._account.pw_gid,
            "extra_groups": [],
        }


def _unprivileged() -> pwd.struct_passwd:
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root, and neither a postgres nor a nobody user to run as")
