"""Ollama's duration grammar: Go duration strings and ``keep_alive`` values.

Ollama accepts ``keep_alive`` as a JSON number (seconds) or a Go duration
string (``"10m"``, ``"1h30m"``, ``"0"``); any negative value means "forever".
foreman's own settings (poll interval, job TTL, ...) use the same grammar so
operators learn one syntax.
"""

from __future__ import annotations

import math
import re

#: Seconds per Go duration unit.
_UNITS: dict[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,  # micro sign
    "\u03bcs": 1e-6,  # greek mu
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}

_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")

#: What Ollama means by "forever": Go's maximum ``time.Duration``.
FOREVER = math.inf


class DurationError(ValueError):
    """A value that is not a valid duration."""


def parse_go_duration(text: str) -> float:
    """Parse a Go ``time.ParseDuration`` string into seconds.

    Like Go, a bare ``"0"`` is accepted, a sign may lead, and a unit is
    otherwise required on every component (``"1h30m"``).
    """
    original = text
    sign = 1.0
    if text[:1] in ("+", "-"):
        sign = -1.0 if text[0] == "-" else 1.0
        text = text[1:]
    if text == "0":
        return 0.0
    if not text:
        raise DurationError(f'time: invalid duration "{original}"')
    total = 0.0
    position = 0
    for match in _PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if position != len(text):
        if re.fullmatch(r"[\d.]+", text[position:]):
            raise DurationError(f'time: missing unit in duration "{original}"')
        raise DurationError(f'time: invalid duration "{original}"')
    return sign * total


def parse_keep_alive(value: object) -> float:
    """Interpret a ``keep_alive`` JSON value the way Ollama does.

    Returns seconds, ``0.0`` for "unload now", or :data:`FOREVER` for any
    negative value. Raises :class:`DurationError` for anything Ollama would
    refuse with a 400 (booleans, lists, objects, malformed strings).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise DurationError(f"unsupported type: '{type(value).__name__}'")
    seconds = parse_go_duration(value) if isinstance(value, str) else float(value)
    return FOREVER if seconds < 0 else seconds


def parse_setting_duration(text: str) -> float:
    """Parse a duration given on foreman's command line or environment.

    Accepts a Go duration (``"30s"``, ``"24h"``) or a plain number of
    seconds (``"30"``); negative values mean forever, as in Ollama.
    """
    stripped = text.strip()
    try:
        seconds = float(stripped)
    except ValueError:
        seconds = parse_go_duration(stripped)
    return FOREVER if seconds < 0 else seconds


def format_go_duration(seconds: float) -> str:
    """Render seconds as a Go duration string Ollama accepts (``-1`` = forever)."""
    if math.isinf(seconds):
        return "-1"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds}s"
