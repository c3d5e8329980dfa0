"""The two classes of work and how a caller names one (ADR-0021).

People's calls (``interactive``) go before batch work (``batch``). A sync
call names its class with the ``X-Foreman-Priority`` header, a ``/jobs``
submission with its ``priority`` field; the server, the client and the
command line all read and write these same words.
"""

from __future__ import annotations

import enum

PRIORITY_HEADER = b"X-Foreman-Priority"


class Priority(enum.Enum):
    INTERACTIVE = "interactive"
    BATCH = "batch"


#: What a refusal of any other value says.
PRIORITY_CHOICES = 'must be "interactive" or "batch"'


class UnknownPriority(ValueError):
    """A value that names neither class."""


def parse_priority(value: object, default: Priority) -> Priority:
    """The class ``value`` names (``None``: ``default``); :class:`UnknownPriority` if none.

    Case and surrounding blanks are forgiven, as header values usually are.
    """
    if value is None:
        return default
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, str):
        try:
            return Priority(value.strip().lower())
        except ValueError:
            pass
    raise UnknownPriority(f"priority {PRIORITY_CHOICES}")
