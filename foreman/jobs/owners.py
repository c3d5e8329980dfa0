"""Whose work is whose: what a key with the ``jobs`` scope may see (docs/keys.md).

Jobs, batches and files record the name of the key that made them
(``caller``; ``None`` for the token's). A key sees and touches only its
own; the token and admin keys see all. Where no guard stands in front (an
app mounted alone, in a test) every request sees all.
"""

from __future__ import annotations

from twisted.web.iweb import IRequest

from foreman.http.auth import caller_of


def sees(request: IRequest, owner: str | None) -> bool:
    """Whether the request's caller may see work that is ``owner``'s."""
    caller = caller_of(request)
    return caller is None or caller.sees(owner)


def owner_of(request: IRequest) -> str | None:
    """Whose the work the request makes is: its key's name (``None``: the token's)."""
    caller = caller_of(request)
    return None if caller is None else caller.name


def only(request: IRequest) -> str | None:
    """The owner whose work alone the request's caller sees; ``None``: everyone's."""
    caller = caller_of(request)
    return None if caller is None else caller.only
