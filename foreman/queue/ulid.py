"""ULIDs: sortable, unique job ids (48-bit millisecond time, 80 random bits).

Ids made within the same millisecond increase by one, so sorting by id is
sorting by creation, which the job listing and its paging rely on.
"""

from __future__ import annotations

import os
import threading
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANDOM_BITS = 80


class _Generator:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._last_random = 0

    def new(self, now: float | None = None) -> str:
        ms = int((time.time() if now is None else now) * 1000)
        with self._lock:
            if ms <= self._last_ms:
                ms = self._last_ms
                randomness = self._last_random + 1
            else:
                randomness = int.from_bytes(os.urandom(10), "big")
            self._last_ms, self._last_random = ms, randomness
        value = (ms << _RANDOM_BITS) | (randomness & ((1 << _RANDOM_BITS) - 1))
        return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -5, -5))


new_ulid = _Generator().new


def is_ulid(text: str) -> bool:
    """Whether ``text`` is a ULID as :func:`new_ulid` writes them (26 characters, upper case)."""
    # 26 characters hold 130 bits: a ULID's first one is at most 7.
    return len(text) == 26 and text[0] in "01234567" and all(c in _CROCKFORD for c in text)
