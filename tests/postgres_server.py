"""A real PostgreSQL server for the tests, in a temporary directory of its own.

It runs the server binaries of the machine (Debian's postgresql package puts
them in /usr/lib/postgresql/<version>/bin; elsewhere, ``initdb`` on PATH), with
trust authentication on 127.0.0.1 and on a Unix socket in its directory, and
settings that trade durability for speed: a crash of the *machine* may lose
data (fsync is off), a crash of the server (``kill``) may not, which is what
fault tests need: synchronous_commit stays on, so a commit's WAL is written
(to the OS, not to disk) before the commit returns.

PostgreSQL refuses to run as root: under root the server runs as the
``postgres`` user (which Debian's package creates) or else ``nobody``, and its
directory belongs to that user. The database role in the URLs is always
``foreman``, whoever the server runs as.

The server is a child of this process (not daemonized by ``pg_ctl``), in a
process group of its own with its backends, so that ``kill`` can take them all
down at once, like a crash, and ``stop`` can wait for it to be gone.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql

#: Set to 1 (``.ci/run`` does) to make missing PostgreSQL binaries a failure, not a skip.
REQUIRE_ENV = "FOREMAN_REQUIRE_POSTGRES"

#: The database role the tests connect as; a superuser.
ROLE = "foreman"
#: The database ``url`` names; ``new_database`` makes others.
DATABASE = "foreman"
HOST = "127.0.0.1"

#: How long starting or stopping the server may take before it is an error.
TIMEOUT = 60.0

#: Fast, durable across a crash of the server but not of the machine. (Not
#: synchronous_commit = off: a kill could then lose the last commits.)
SETTINGS = {
    "listen_addresses": HOST,
    "fsync": "off",
    "full_page_writes": "off",
    "shared_buffers": "16MB",
    "max_connections": "200",
    "huge_pages": "off",
    "max_wal_size": "256MB",
    "timezone": "UTC",
}

_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def find_bindir() -> Path | None:
    """The newest PostgreSQL's binaries on this machine, or None."""
    versions = []
    for initdb in Path("/usr/lib/postgresql").glob("*/bin/initdb"):
        version = initdb.parent.parent.name
        if version.isdigit() and (initdb.parent / "postgres").exists():
            versions.append((int(version), initdb.parent))
    if versions:
        return max(versions)[1]
    on_path = shutil.which("initdb")
    if on_path is not None and (Path(on_path).parent / "postgres").exists():
        return Path(on_path).parent
    return None


def missing_reason() -> str:
    return (
        "no PostgreSQL server binaries: neither /usr/lib/postgresql/<version>/bin/initdb "
        "nor initdb on PATH (install Debian's postgresql package, or Homebrew's postgresql; "
        f".ci/run installs it and sets {REQUIRE_ENV}=1, which makes this a failure)"
    )


def required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class PostgresError(RuntimeError):
    """The server would not start or stop; the message ends with its log."""


class PostgresServer:
    """One PostgreSQL server: ``start()`` (the first one runs initdb), ``stop()``,
    ``kill()``, ``restart()``, ``close()`` (stop, then remove the directory).

    The port and the data survive ``stop``/``kill`` and ``start`` again.
    """

    def __init__(self, bindir: Path | None = None) -> None:
        found = bindir or find_bindir()
        if found is None:
            raise PostgresError(missing_reason())
        self.bindir = found
        self.port = free_port()
        self._account = _unprivileged_account() if os.geteuid() == 0 else None
        # Under root, in /tmp: the server's user must be able to reach it,
        # which a private TMPDIR may not allow.
        self.directory = Path(
            tempfile.mkdtemp(prefix="foreman-pg-", dir="/tmp" if self._account else None)
        )
        self.data = self.directory / "data"
        self.socket_dir = self.directory / "socket"
        self.log_path = self.directory / "postgres.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._names = itertools.count(1)
        self._created = False
        self.socket_dir.mkdir()
        if self._account is not None:
            for path in (self.directory, self.socket_dir):
                os.chown(path, self._account.pw_uid, self._account.pw_gid)

    # -- URLs

    @property
    def url(self) -> str:
        """The URL of the ``foreman`` database, made at the first start."""
        return self.url_for(DATABASE)

    def url_for(self, database: str) -> str:
        return f"postgresql://{ROLE}@{HOST}:{self.port}/{database}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while it runs."""
        return self._process.pid if self.running and self._process else None

    # -- Databases

    def new_database(self, name: str | None = None) -> str:
        """CREATE DATABASE ``name`` (by default the next free ``test_N``); its URL."""
        if name is None:
            name = f"test_{next(self._names)}"
        if not _NAME.fullmatch(name):
            raise ValueError(f"not a plain lowercase database name: {name!r}")
        self.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE, ending any session still connected to it."""
        self.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )

    def execute(self, statement: sql.Composed) -> None:
        """Run one statement outside a transaction, in the ``postgres`` database."""
        with psycopg.connect(self.url_for("postgres"), autocommit=True) as connection:
            connection.execute(statement)

    # -- The server's life

    def start(self) -> None:
        """Start the server and wait until it accepts connections; initdb first if need be."""
        if self.running:
            return
        if not self.data.exists():
            self._initdb()
        # The log is opened here and handed over; the server writes to it directly.
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.data)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                env=self._environment(),
                start_new_session=True,
                user=self._uid,
                group=self._gid,
                extra_groups=self._extra_groups,
            )
        self._wait_ready()
        if not self._created:
            self._created = True
            self.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))

    def stop(self) -> None:
        """A fast shutdown (``pg_ctl stop -m fast``): sessions are ended, data is kept."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()
                raise PostgresError(
                    f"PostgreSQL did not stop within {TIMEOUT:.0f} s; killed\n{self.log_tail()}"
                ) from None
        self._process = None

    def kill(self) -> None:
        """SIGKILL the server and its backends at once: a crash. ``start()`` recovers."""
        process = self._process
        if process is None:
            return
        self._process = None
        if process.poll() is not None:
            return
        # Each backend is a session leader of its own, out of reach of killpg:
        # freeze the postmaster so that it forks no more, then kill it and them.
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGSTOP)
        backends = _children(process.pid)
        process.kill()
        for pid in backends:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait(timeout=TIMEOUT)
        # A backend still attached to the old shared memory stops the next start.
        deadline = time.monotonic() + 10.0
        while backends and time.monotonic() < deadline:
            backends = [pid for pid in backends if _alive(pid)]
            time.sleep(0.01)

    def restart(self) -> None:
        """``stop()`` then ``start()``: the same port, the same data."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server (killing it if it will not stop) and remove its directory."""
        try:
            self.stop()
        finally:
            self.kill()
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- Inside

    def _initdb(self) -> None:
        result = subprocess.run(
            [
                str(self.bindir / "initdb"),
                "--pgdata",
                str(self.data),
                "--username",
                ROLE,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            cwd=self.directory,
            env=self._environment(),
            timeout=TIMEOUT,
            check=False,
            user=self._uid,
            group=self._gid,
            extra_groups=self._extra_groups,
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            raise PostgresError(f"initdb failed ({result.returncode}):\n{output}")
        settings = {
            **SETTINGS,
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# tests/postgres_server.py\n")
            for key, value in settings.items():
                conf.write(f"{key} = {_quote(value)}\n")

    def _wait_ready(self) -> None:
        """Wait for postmaster.pid to say ready, as ``pg_ctl start -w`` does."""
        process = self._process
        assert process is not None
        deadline = time.monotonic() + TIMEOUT
        pidfile = self.data / "postmaster.pid"
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self._process = None
                raise PostgresError(
                    f"PostgreSQL exited with {process.returncode} while starting\n{self.log_tail()}"
                )
            try:
                lines = pidfile.read_text().splitlines()
            except OSError:
                lines = []
            # Line 1 the postmaster's pid, line 8 its status.
            if len(lines) >= 8 and lines[0] == str(process.pid) and lines[7].strip() == "ready":
                return
            time.sleep(0.02)
        self.kill()
        raise PostgresError(
            f"PostgreSQL did not become ready within {TIMEOUT:.0f} s\n{self.log_tail()}"
        )

    def _environment(self) -> dict[str, str]:
        # PGDATA, PGPORT and the like would steer the binaries elsewhere.
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env["LC_ALL"] = "C"
        if self._account is not None:
            env["HOME"] = str(self.directory)
            env["USER"] = env["LOGNAME"] = self._account.pw_name
        return env

    @property
    def _uid(self) -> int | None:
        return None if self._account is None else self._account.pw_uid

    @property
    def _gid(self) -> int | None:
        return None if self._account is None else self._account.pw_gid

    @property
    def _extra_groups(self) -> list[int] | None:
        # Root's supplementary groups are dropped too.
        return None if self._account is None else []


def _unprivileged_account() -> pwd.struct_passwd:
    """The user a root test run starts PostgreSQL as."""
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PostgresError("running as root, and neither a postgres nor a nobody user to run as")


def _children(parent: int) -> list[int]:
    """The processes whose parent is ``parent``: from /proc, or else from ps."""
    proc = Path("/proc")
    found = []
    if proc.is_dir():
        for entry in proc.iterdir():
            if entry.name.isdigit():
                try:
                    # After "pid (command)": state, then the parent's pid.
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except (OSError, IndexError):
                    continue
                if len(fields) > 1 and fields[1] == str(parent):
                    found.append(int(entry.name))
        return found
    listing = subprocess.run(
        ["ps", "-A", "-o", "pid=,ppid="], capture_output=True, text=True, check=True
    ).stdout
    for line in listing.splitlines():
        pid, ppid = line.split()
        if ppid == str(parent):
            found.append(int(pid))
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie, waiting for its new parent to reap it, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"
