"""Log observers: JSON lines for machines, twistd's text format for people.

``--log-format json`` installs :func:`json_lines_observer` on stdout. It can
also be named directly with ``twistd --logger=foreman.ops.logging.observer``.
Events carry their fields (status, model, duration, ...) as JSON keys; no
prompt text and no token is ever put in an event in the first place.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import IO, Any, cast

from twisted.logger import ILogObserver, LogEvent, formatEvent
from twisted.python.logfile import LogFile
from zope.interface import implementer

_SKIPPED = {"message", "format", "isError", "time", "system"}


def _jsonable(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return repr(value)


def event_as_json_line(event: LogEvent) -> str:
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0), UTC).isoformat(),
        "level": getattr(event.get("log_level"), "name", "info"),
        "namespace": event.get("log_namespace", "-"),
        "message": formatEvent(event),
    }
    for key, value in event.items():
        if not key.startswith("log_") and key not in _SKIPPED:
            record[key] = _jsonable(value)
    failure = event.get("log_failure")
    if failure is not None:
        record["failure"] = failure.getTraceback()
    return json.dumps(record, ensure_ascii=False) + "\n"


@implementer(ILogObserver)
class JSONLinesObserver:
    """Writes each event as one JSON line to ``stream`` and flushes it."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def __call__(self, event: LogEvent) -> None:
        self.stream.write(event_as_json_line(event))
        self.stream.flush()


def json_lines_observer(stream: IO[str]) -> JSONLinesObserver:
    return JSONLinesObserver(stream)


def json_observer(log_file: str | None) -> JSONLinesObserver:
    """JSON lines into twistd's ``--logfile`` (rotating like its text log), else stdout.

    twistd hands its log file to its own text observer only; when foreman
    supplies the observer, foreman must honour ``--logfile`` itself.
    """
    if not log_file or log_file == "-":
        return json_lines_observer(sys.stdout)
    return json_lines_observer(cast(IO[str], LogFile.fromFullPath(log_file)))


def observer() -> JSONLinesObserver:
    """Zero-argument factory for ``twistd --logger=foreman.ops.logging.observer``."""
    return json_lines_observer(sys.stdout)
