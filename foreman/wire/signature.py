"""The webhook signature (ADR-0005): what foreman signs with and receivers check.

``X-Foreman-Signature`` carries the hex HMAC-SHA256 of the raw body under the
shared webhook secret. The sender (:mod:`foreman.jobs.outbox`) and the
client's receiver (:mod:`foreman.client.receiver`) both use this module. A
batch's end can also go out in the Standard Webhooks form OpenAI's webhooks
use (ADR-0029), signed by :func:`standard_signature`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

#: The prefix of a Standard Webhooks secret, as OpenAI's dashboard gives it.
STANDARD_PREFIX = "whsec_"


def standard_key(secret: str) -> bytes:
    """The key bytes of a Standard Webhooks secret (``whsec_`` and base64);
    :class:`ValueError` if it is not one."""
    try:
        key = base64.b64decode(secret.removeprefix(STANDARD_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a Standard Webhooks secret is whsec_ followed by base64") from None
    if not key:
        raise ValueError("a Standard Webhooks secret is whsec_ followed by base64")
    return key


def standard_signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value of the Standard Webhooks form (OpenAI's
    webhooks): ``v1,`` and the base64 HMAC-SHA256 of ``id.timestamp.body``."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(standard_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


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
