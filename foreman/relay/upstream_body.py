"""Turn a caller's request body into a body for the upstream call."""

from __future__ import annotations

from twisted.web.client import FileBodyProducer
from twisted.web.iweb import IBodyProducer, IRequest

from foreman.relay.upstream import BytesBodyProducer

#: Bodies up to this size are sent from memory in one write.
_IN_MEMORY_LIMIT = 1024 * 1024


def request_body_producer(request: IRequest) -> IBodyProducer | None:
    """The caller's body as sent, or ``None`` for a bodiless call.

    twisted.web has spooled big bodies (blob uploads) to a temporary file;
    those are streamed from it rather than read into memory.
    """
    content = request.content
    content.seek(0, 2)
    size = content.tell()
    content.seek(0)
    if size == 0:
        return None if request.method in (b"GET", b"HEAD", b"DELETE") else BytesBodyProducer(b"")
    if size <= _IN_MEMORY_LIMIT:
        return BytesBodyProducer(content.read())
    return FileBodyProducer(content)
