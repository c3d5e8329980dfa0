"""Bodies sent ``Content-Encoding: zstd``, as Ollama's ``/v1`` routes accept them.

Ollama decompresses a zstd body before it reads the model. foreman must read
the model too (it keys the queue), so it decompresses the body once and
sends the plain bytes on, without the header: the same call, one encoding
fewer. The decompressed size is held to the site's body limit, so a small
compressed body cannot grow into a large one.
"""

from __future__ import annotations

import io
from typing import Any

import zstandard
from twisted.web.iweb import IRequest

ZSTD = b"zstd"
#: When the site sets none (tests that build a request by hand).
DEFAULT_LIMIT = 64 * 1024 * 1024


class UndecodableBody(ValueError):
    """The body is not the zstd it says it is."""


class BodyTooLarge(Exception):
    """The decompressed body is over the limit."""


def decompress_zstd(data: bytes, limit: int) -> bytes:
    """The bytes a zstd body holds; :class:`BodyTooLarge` past ``limit``."""
    try:
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as reader:
            plain = reader.read(limit + 1)
    except zstandard.ZstdError as e:
        raise UndecodableBody(f"invalid zstd body: {e}") from None
    if len(plain) > limit:
        raise BodyTooLarge(f"request body too large: the limit is {limit} bytes")
    return plain


def decode_body(request: IRequest) -> None:
    """Replace a zstd body with its plain bytes (and drop the header) in place."""
    encoding = request.getHeader(b"content-encoding")
    if encoding is None or encoding.strip().lower() != ZSTD:
        return
    site: Any = getattr(getattr(request, "channel", None), "site", None)
    limit = getattr(site, "max_body_size", DEFAULT_LIMIT)
    compressed = request.content
    compressed.seek(0)
    plain = decompress_zstd(compressed.read(), limit)
    # A chunked or large body is in a temporary file: Twisted closes the
    # request's content when it is done, which is the plain one from now on.
    compressed.close()
    request.content = io.BytesIO(plain)
    request.requestHeaders.removeHeader(b"content-encoding")
