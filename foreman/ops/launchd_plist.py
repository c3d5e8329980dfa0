"""The LaunchAgent itself: where an agent's files go, and its property list.

Pure functions of a label, a home folder and the arguments, so that tests (on
any platform) can check every key and that the plist round-trips through
``plistlib``. The commands that write it and talk to launchctl are in
:mod:`foreman.ops.launchd`.
"""

from __future__ import annotations

import math
import plistlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from foreman.config import DEFAULT_DRAIN_TIMEOUT

DEFAULT_LABEL = "local.foreman"
THROTTLE_INTERVAL = 10
#: launchd waits ``ExitTimeOut`` seconds after SIGTERM before SIGKILL: foreman's
#: drain (``--drain-timeout``) plus this much for its parts to stop.
EXIT_MARGIN = 10
#: Open files. A launchd agent otherwise starts with a soft limit of 256;
#: foreman raises its soft limit to the hard one at start anyway, and 10240
#: is macOS's per-process ceiling (``kern.maxfilesperproc``'s default).
SOFT_OPEN_FILES = 4096
HARD_OPEN_FILES = 10240

_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class LaunchdError(Exception):
    """A refusal (status 2: the command line) or a failure (status 1)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


@attrs.frozen
class Layout:
    """Where one agent's files go."""

    label: str
    plist: Path
    log_dir: Path
    #: twistd's ``--logfile``, rotated by Twisted's ``LogFile``.
    log_file: Path
    stdout: Path
    stderr: Path
    data_dir: Path


def layout(label: str, home: Path, data_dir: Path | None = None) -> Layout:
    """The default agent uses foreman's usual macOS data directory. Another label
    gets its own data subfolder and log names: two foremen must never share a
    job store (one daemon, one target, one queue)."""
    if not _LABEL.match(label) or label.endswith(".plist"):
        raise LaunchdError(f"not a usable label: {label!r} (use e.g. {DEFAULT_LABEL})", 2)
    if not home.is_absolute():
        raise LaunchdError(f"the home directory must be an absolute path, not {home}")
    default = label == DEFAULT_LABEL
    stem = "foreman" if default else label
    logs = home / "Library" / "Logs" / "foreman"
    app_support = home / "Library" / "Application Support" / "foreman"
    return Layout(
        label=label,
        plist=home / "Library" / "LaunchAgents" / f"{label}.plist",
        log_dir=logs,
        log_file=logs / f"{stem}.log",
        stdout=logs / f"{stem}.stdout.log",
        stderr=logs / f"{stem}.stderr.log",
        data_dir=data_dir or (app_support if default else app_support / label),
    )


def exit_timeout(drain_timeout: float) -> int:
    """The plist's ``ExitTimeOut`` for a foreman draining for ``drain_timeout``."""
    return math.ceil(drain_timeout) + EXIT_MARGIN


def build_plist(
    where: Layout,
    twistd: Path,
    foreman_args: Sequence[str],
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
) -> dict[str, Any]:
    """The agent's property list; every path in it is absolute."""
    return {
        "Label": where.label,
        "ProgramArguments": [
            str(twistd),
            "--nodaemon",
            "--pidfile=",
            f"--logfile={where.log_file}",
            "foreman",
            f"--data-dir={where.data_dir}",
            *foreman_args,
        ],
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": THROTTLE_INTERVAL,
        "ExitTimeOut": exit_timeout(drain_timeout),
        "ProcessType": "Background",
        "SoftResourceLimits": {"NumberOfFiles": SOFT_OPEN_FILES},
        "HardResourceLimits": {"NumberOfFiles": HARD_OPEN_FILES},
        "WorkingDirectory": str(where.data_dir),
        "StandardOutPath": str(where.stdout),
        "StandardErrorPath": str(where.stderr),
    }


def render(plist: Mapping[str, Any]) -> bytes:
    return plistlib.dumps(dict(plist), fmt=plistlib.FMT_XML, sort_keys=True)
