"""How many files foreman may hold open, and how many client connections that allows.

A launchd agent on macOS starts with a soft limit of 256 open files. Every
client connection, every connection to Ollama, the SQLite files and each
webhook delivery need one, so at start foreman raises its soft limit towards
the hard one, and caps client connections below what it got, keeping the
rest for its own work (:mod:`foreman.http.connections`).
"""

from __future__ import annotations

import resource

import attrs
from twisted.logger import Logger

log = Logger()

#: Enough for thousands of connections; on macOS no process may exceed
#: ``kern.maxfilesperproc`` (10240 by default) whatever the hard limit says.
WANTED = 10_240
#: ``select()`` cannot watch descriptors past FD_SETSIZE: twistd's default
#: reactor on macOS is the select reactor.
FD_SETSIZE = 1024
#: ``twisted.internet.tcp.Port.numberAccepts``' ceiling.
_ACCEPT_BURST = 100


@attrs.frozen
class OpenFiles:
    soft: int
    hard: int
    #: The soft limit before foreman raised it (equal to ``soft`` if it did not).
    before: int
    #: Descriptors foreman can really use (``soft``, or less under ``select()``).
    usable: int

    def connection_cap(self) -> int:
        """Client connections to allow: the usable descriptors less a reserve.

        The reserve is a quarter of them, and at least room for one burst of
        accepts (Twisted accepts up to 100 connections in one go, before the
        idle ones closed to make room for them are gone) plus 64 for
        foreman's own files and connections (Ollama, SQLite, logs, webhooks).
        """
        return max(8, self.usable - max(_ACCEPT_BURST + 64, self.usable // 4))


def _finite(limit: int) -> int:
    return WANTED if limit == resource.RLIM_INFINITY else limit


def raise_open_files_limit(*, select_reactor: bool = False) -> OpenFiles:
    """Raise the soft limit on open files towards the hard one; log the outcome."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = soft
    target = min(_finite(hard), WANTED)
    if _finite(soft) < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as e:
            log.warn(
                "Could not raise the open-files limit from {soft} to {target}: {error}",
                soft=soft,
                target=target,
                error=e,
            )
    usable = _finite(soft)
    if select_reactor:
        usable = min(usable, FD_SETSIZE)
    files = OpenFiles(soft=_finite(soft), hard=_finite(hard), before=_finite(before), usable=usable)
    log.info(
        "Open files: limit {soft} (was {before}, hard limit {hard}); "
        "{usable} usable by this reactor",
        soft=files.soft,
        before=files.before,
        hard="unlimited" if hard == resource.RLIM_INFINITY else hard,
        usable=files.usable,
    )
    return files
