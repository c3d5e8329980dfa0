"""``foreman launchd install|uninstall|print``: keep foreman up as a macOS LaunchAgent.

The agent is ``~/Library/LaunchAgents/<label>.plist``. The default label is
``local.foreman``: ``local.`` is the customary reverse-DNS prefix for jobs defined
on the machine itself, and claims no domain foreman does not own. It runs
``<venv>/bin/twistd --nodaemon --pidfile= --logfile=… foreman …`` with absolute
paths only: launchd execs the program directly, with a minimal ``PATH`` and ``/``
as the working directory.

- ``--logfile`` hands the log to Twisted's ``LogFile``, which rotates it at 1 MB.
  ``StandardErrorPath`` catches what comes before logging starts (a refused
  configuration, an import error). ``--log-format json`` lines go to the
  same file, rotated the same way (foreman honours ``--logfile`` itself).
- ``KeepAlive`` is ``{SuccessfulExit: false}``: launchd restarts foreman after a
  crash or a kill, and takes an exit with status 0 as meant. ``ThrottleInterval``
  spaces the restarts.
- Only options given explicitly go into the plist, so foreman's defaults still
  apply after an upgrade. This shell's environment is not copied, and secrets go
  as files (``--token-file``), never as values. No ``EnvironmentVariables``:
  foreman starts no other programs, and launchd sets ``HOME`` itself.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import plistlib
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
from twisted.python import usage

from foreman.config import Config
from foreman.ops.launchd_plist import (
    DEFAULT_LABEL,
    LaunchdError,
    Layout,
    build_plist,
    exit_timeout,
    layout,
    render,
)
from foreman.options import ForemanOptions

__all__ = [
    "DEFAULT_LABEL",
    "Host",
    "LaunchdError",
    "Layout",
    "add_commands",
    "build_plist",
    "layout",
    "main",
    "register",
    "render",
]

LAUNCHCTL = "/bin/launchctl"

#: foreman options whose values are paths; they are made absolute.
_PATH_OPTIONS = frozenset({"token-file", "ollama-token-file", "webhook-secret-file", "data-dir"})
#: Accepted only to be refused: a plist is readable by any local process.
_SECRET_FLAGS = {
    "token": "token-file",
    "ollama-token": "ollama-token-file",
    "webhook-secret": "webhook-secret-file",
}

Runner = Callable[[Sequence[str]], int]


def _run_launchctl(command: Sequence[str]) -> int:
    # Shown as ``launchctl …``; run by absolute path all the same.
    return subprocess.run([LAUNCHCTL, *command[1:]], check=False).returncode


@attrs.frozen
class Host:
    """What the commands take from the machine; tests pass a temporary one."""

    home: Path = attrs.field(factory=Path.home)
    uid: int = attrs.field(factory=os.getuid)
    platform: str = attrs.field(factory=lambda: sys.platform)
    executable: str = attrs.field(factory=lambda: sys.executable)
    cwd: Path = attrs.field(factory=Path.cwd)
    environ: Mapping[str, str] = attrs.field(factory=lambda: dict(os.environ))
    run: Runner = _run_launchctl
    sleep: Callable[[float], None] = time.sleep


def find_twistd(executable: str) -> Path:
    """The ``twistd`` beside this Python. The interpreter's path is made absolute
    but not resolved: a virtualenv's ``python`` is a symlink to the base
    interpreter, whose folder has no foreman (and maybe another twistd)."""
    twistd = Path(os.path.abspath(executable or "python")).parent / "twistd"
    if not (executable and twistd.is_file() and os.access(twistd, os.X_OK)):
        raise LaunchdError(
            f"no twistd next to {executable or 'this Python'} (looked for {twistd}): run this "
            "command with the Python foreman is installed in (make install makes .venv/bin/twistd)"
        )
    return twistd


def absolute(path: str, host: Host) -> Path:
    """``~`` and relative paths made absolute. Symlinks are kept, not resolved,
    so a token file that is a link is followed afresh at each start."""
    if not path.strip():
        raise LaunchdError("an empty path was given", 2)
    expanded = host.home / path[2:] if path == "~" or path.startswith("~/") else Path(path)
    return Path(os.path.normpath(host.cwd / os.path.expanduser(expanded)))


def _foreman_options() -> list[tuple[str, str, bool]]:
    """(name, help, is a flag) for every ``twistd foreman`` option."""
    rows = [(str(r[0]), str(r[-1] or ""), False) for r in ForemanOptions.optParameters]
    return rows + [(str(r[0]), str(r[-1] or ""), True) for r in ForemanOptions.optFlags]


def _dest(name: str) -> str:
    # Prefixed so as not to collide with the ``foreman`` command's own options.
    return "twistd_" + name.replace("-", "_")


def _check_listen(listen: str) -> None:
    # A relative UNIX socket path would depend on launchd's working directory.
    kind, _, rest = listen.partition(":")
    fields = [f for f in rest.split(":") if "=" not in f or f.startswith("address=")]
    if kind == "unix" and not (fields and fields[0].removeprefix("address=").startswith("/")):
        raise LaunchdError(f"--listen {listen!r}: give the socket an absolute path", 2)


def foreman_arguments(args: argparse.Namespace, host: Host) -> list[str]:
    """The ``twistd foreman`` options on this command line as ``--name=value``,
    paths absolute; ``--data-dir`` is left to :func:`layout`."""
    for secret, instead in _SECRET_FLAGS.items():
        if getattr(args, _dest(secret), None) is not None:
            raise LaunchdError(
                f"--{secret} would put the secret in the plist and in ps; write it to a file "
                f"only you can read and pass --{instead} FILE",
                2,
            )
    result: list[str] = []
    for name, _help, flag in _foreman_options():
        value = getattr(args, _dest(name), None)
        if flag and value:
            result.append(f"--{name}")
        if flag or value is None or name == "data-dir":
            continue
        if name in _PATH_OPTIONS:
            value = str(absolute(value, host))
        if name == "listen":
            _check_listen(value)
        result.append(f"--{name}={value}")
    return result


def check_options(foreman_args: Sequence[str]) -> Config:
    """Refuse now what ``twistd foreman`` would refuse at every start under launchd
    (without this shell's environment, which launchd does not pass on)."""
    from foreman.config import StartupRefused, check_exposure

    options = ForemanOptions(environ={})
    try:
        options.parseOptions(list(foreman_args))
    except usage.UsageError as e:
        raise LaunchdError(f"twistd foreman would refuse these options: {e}", 2) from None
    assert options.config is not None
    try:
        check_exposure(options.config)
    except StartupRefused:
        raise LaunchdError(
            f"foreman would refuse to listen on {options.config.listen!r} without a token: "
            "pass --token-file FILE, listen on loopback, or pass --allow-unauthenticated "
            "(keys made with foreman keys add are still required when there are any)",
            2,
        ) from None
    return options.config


def plan(args: argparse.Namespace, host: Host) -> tuple[Layout, dict[str, Any]]:
    """Where the agent goes and its plist, checked as twistd foreman would check it."""
    unseen = sorted(k for k in host.environ if k.startswith("FOREMAN_") and host.environ[k])
    if unseen:
        _err(
            f"note: {', '.join(unseen)} set here will not reach the launchd job; "
            "pass options instead (secrets as --…-file)"
        )
    if getattr(args, _dest("upstream")) == "auto":
        # At login foreman may start before Ollama.app, and auto decides only once.
        _err("note: with --upstream auto, an Ollama not up yet means the simulator until a restart")
    data_dir = getattr(args, _dest("data-dir"))
    where = layout(args.launchd_label, host.home, absolute(data_dir, host) if data_dir else None)
    plist = build_plist(where, find_twistd(host.executable), foreman_arguments(args, host))
    arguments = plist["ProgramArguments"]
    config = check_options(arguments[arguments.index("foreman") + 1 :])
    # launchd waits this long after SIGTERM: room for the drain asked for.
    plist["ExitTimeOut"] = exit_timeout(config.drain_timeout)
    return where, plist


def _err(line: str) -> None:
    print(f"foreman launchd: {line}", file=sys.stderr)


def _write_atomically(path: Path, data: bytes) -> None:
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # launchd refuses agents that others can write; 0644 is the convention.
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _refuse_load_off_macos(args: argparse.Namespace, host: Host) -> None:
    if args.launchd_load and host.platform != "darwin":
        raise LaunchdError(
            f"--load runs launchctl, which exists only on macOS (this is {host.platform}); "
            "leave it out to write the plist and see the commands",
            2,
        )


def _bootstrap(host: Host, command: Sequence[str], retry: bool) -> None:
    # Right after a bootout launchd may still be tearing the old job down.
    for attempt in range(3 if retry else 1):
        if attempt:
            host.sleep(1.0)
        status = host.run(command)
        if status == 0:
            return
    raise LaunchdError(f"{shlex.join(command)} failed (status {status})")


def install(args: argparse.Namespace, host: Host) -> int:
    if args.launchd_print and args.launchd_load:
        raise LaunchdError("--print writes nothing, so it cannot --load", 2)
    _refuse_load_off_macos(args, host)
    where, plist = plan(args, host)
    data = render(plist)
    if args.launchd_print:
        sys.stdout.write(data.decode("utf-8"))
        return 0
    try:
        where.plist.parent.mkdir(parents=True, exist_ok=True)
        where.log_dir.mkdir(parents=True, exist_ok=True)
        # 0700: the job store holds prompts and results.
        where.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        previous = where.plist.read_bytes() if where.plist.exists() else None
        if previous != data:
            _write_atomically(where.plist, data)
    except OSError as e:
        raise LaunchdError(f"cannot install {where.plist}: {e}") from None
    if previous is None:
        print(f"Wrote {where.plist}")
    else:
        changed = previous != data
        print(f"Replaced {where.plist}" if changed else f"{where.plist} is already up to date")
    target = f"gui/{host.uid}/{where.label}"
    bootout = ["launchctl", "bootout", target]
    bootstrap = ["launchctl", "bootstrap", f"gui/{host.uid}", str(where.plist)]
    if args.launchd_load:
        if previous is not None:
            print(f"$ {shlex.join(bootout)}")
            if host.run(bootout) != 0:
                print("  (it was not loaded; that is fine)")
        print(f"$ {shlex.join(bootstrap)}")
        _bootstrap(host, bootstrap, retry=previous is not None)
        print(f"Loaded {where.label}: launchd starts it now and at every login.")
    else:
        print("Load it (launchd then starts it now and at every login):")
        if previous is not None:
            print(f"  {shlex.join(bootout)}    # unloads the old one, if loaded")
        print(f"  {shlex.join(bootstrap)}")
    print(f"Restart it (after an upgrade): launchctl kickstart -k {target}")
    kind = "JSON lines" if "--log-format=json" in plist["ProgramArguments"] else "text"
    print(f"Log: {where.log_file} ({kind}, rotated at 1 MB; older ones kept as .1, .2, …)")
    print(f"Errors before logging starts: {where.stderr}")
    print(f"Data: {where.data_dir}")
    return 0


def uninstall(args: argparse.Namespace, host: Host) -> int:
    _refuse_load_off_macos(args, host)
    where = layout(args.launchd_label, host.home)
    log_dir, data_dir = where.log_dir, where.data_dir
    bootout = ["launchctl", "bootout", f"gui/{host.uid}/{where.label}"]
    if args.launchd_load:
        print(f"$ {shlex.join(bootout)}")
        if host.run(bootout) != 0:
            print("  (it was not loaded)")
    # Name the folders this agent really used, if it was installed with --data-dir.
    with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
        installed = plistlib.loads(where.plist.read_bytes())
        data_dir = Path(installed.get("WorkingDirectory", data_dir))
        log_dir = Path(installed.get("StandardErrorPath", where.stderr)).parent
    try:
        where.plist.unlink()
        print(f"Removed {where.plist}")
    except FileNotFoundError:
        print(f"No agent at {where.plist}; nothing to remove")
    except OSError as e:
        raise LaunchdError(f"cannot remove {where.plist}: {e}") from None
    if not args.launchd_load:
        print(f"If it is still loaded, stop it with: {shlex.join(bootout)}")
    print(
        f"Kept the logs in {log_dir} and the data in {data_dir}; delete them by hand if unwanted."
    )
    return 0


def _flag(parser: Any, *names: str, dest: str, text: str) -> None:
    parser.add_argument(*names, dest=dest, action="store_true", help=text)


def _label(parser: argparse.ArgumentParser) -> None:
    text = f"the launchd job's name [{DEFAULT_LABEL}]"
    parser.add_argument("--label", dest="launchd_label", default=DEFAULT_LABEL, help=text)


def _install_arguments(parser: argparse.ArgumentParser, *, printing: bool) -> None:
    _label(parser)
    if not printing:
        _flag(parser, "--print", dest="launchd_print", text="show the plist; write nothing")
        _flag(parser, "--load", dest="launchd_load", text="run launchctl as well (macOS)")
    group = parser.add_argument_group("options passed to twistd foreman")
    for name, text, flag in _foreman_options():
        # The environment variable twistd's help names does not reach a launchd job.
        shown = re.sub(r"\s*\(env \w+\)$", "", text).replace("%", "%%")
        if flag:
            _flag(group, f"--{name}", dest=_dest(name), text=shown)
        else:
            group.add_argument(f"--{name}", dest=_dest(name), metavar="VALUE", help=shown)
    for secret in _SECRET_FLAGS:
        parser.add_argument(
            f"--{secret}", dest=_dest(secret), nargs="?", const="", help=argparse.SUPPRESS
        )


def _command(
    action: Callable[[argparse.Namespace, Host], int], host: Host | None
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return action(args, host or Host())
        except LaunchdError as e:
            _err(str(e))
            return e.status

    return run


def add_commands(parser: argparse.ArgumentParser, host: Host | None = None) -> None:
    """Give ``parser`` the subcommands install, print and uninstall."""
    commands = parser.add_subparsers(dest="launchd_command", required=True)
    # allow_abbrev=False, or argparse would take "--token" for "--token-file".
    installing = commands.add_parser("install", allow_abbrev=False, help="write the plist")
    _install_arguments(installing, printing=False)
    installing.set_defaults(func=_command(install, host))
    printing = commands.add_parser(
        "print", allow_abbrev=False, help="show the plist install would write (install --print)"
    )
    _install_arguments(printing, printing=True)
    printing.set_defaults(func=_command(install, host), launchd_print=True, launchd_load=False)
    removing = commands.add_parser(
        "uninstall", allow_abbrev=False, help="remove the plist (logs and data are kept)"
    )
    _label(removing)
    _flag(removing, "--load", "--unload", dest="launchd_load", text="run launchctl bootout too")
    removing.set_defaults(func=_command(uninstall, host))


_DESCRIPTION = "Install or remove a LaunchAgent that keeps foreman running (macOS)."


def register(subparsers: argparse._SubParsersAction, host: Host | None = None) -> None:
    """Add ``launchd`` to the ``foreman`` command; ``args.func(args)`` is the exit status."""
    launchd = subparsers.add_parser("launchd", help=_DESCRIPTION, description=_DESCRIPTION)
    add_commands(launchd, host)


def main(argv: list[str] | None = None, host: Host | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m foreman.ops.launchd", description=_DESCRIPTION)
    add_commands(parser, host)
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
