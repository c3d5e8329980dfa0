"""Byte sizes as people write them in options: ``64MiB``, ``10MB``, ``1048576``."""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_SIZE_FACTORS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
}


def parse_size(text: str) -> int:
    """Parse ``"64MiB"``, ``"10MB"`` or a plain byte count."""
    match = _SIZE.match(text)
    unit = (match.group(2) or "").lower() if match else None
    if match is None or unit not in _SIZE_FACTORS:
        raise ValueError(f"not a size: {text!r} (use e.g. 1048576, 512KiB, 64MiB)")
    return int(float(match.group(1)) * _SIZE_FACTORS[unit])
