"""foreman's own timestamps: RFC 3339 in UTC with milliseconds, as ``/jobs`` shows them."""

from __future__ import annotations

from datetime import UTC, datetime


def timestamp(seconds: float | None) -> str | None:
    """RFC 3339 in UTC with milliseconds: ``2026-11-22T03:00:00.123Z``."""
    if seconds is None:
        return None
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
