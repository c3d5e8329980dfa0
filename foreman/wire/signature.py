"""The webhook signature (ADR-0005): what foreman signs with and receivers check.

``X-Foreman-Signature`` carries the hex HMAC-SHA256 of the raw body under the
shared webhook secret. The sender (:mod:`foreman.jobs.outbox`) and the
client's receiver (:mod:`foreman.client.receiver`) both use this module.
"""

from __future__ import annotations

import hashlib
import hmac


def sign(secret: str, body: bytes) -> str:
    """The ``X-Foreman-Signature`` value: hex HMAC-SHA256 of the raw body."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature: str) -> bool:
    """Whether ``signature`` is ``body``'s signature under ``secret``, in constant time."""
    expected = sign(secret, body)
    # compare_digest only takes ASCII str: anything else cannot be ours anyway.
    if not signature.isascii():
        return False
    return hmac.compare_digest(expected, signature.strip().lower())
