"""A whole ``multipart/form-data`` body read into its parts (``POST /v1/files``).

:mod:`foreman.http.forms` reads one small field of a body relayed as it came;
an uploaded batch file is kept, and may be tens of megabytes, so this reads
the parts by splitting on the boundary, with no copy beyond each part's
bytes.
"""

from __future__ import annotations

import attrs

from foreman.http.routing import BadRequest


@attrs.frozen
class Part:
    name: str
    filename: str | None
    content: bytes


def _parameters(header: str) -> tuple[str, dict[str, str]]:
    kind, *rest = header.split(";")
    found: dict[str, str] = {}
    for item in rest:
        key, _, value = item.strip().partition("=")
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1].replace('\\"', '"')
        found[key.strip().lower()] = value
    return kind.strip().lower(), found


def form_parts(content_type: bytes | None, body: bytes) -> dict[str, Part]:
    """The parts of a form by name; :class:`BadRequest` if ``body`` is not one."""
    kind, parameters = _parameters((content_type or b"").decode("latin-1"))
    boundary = parameters.get("boundary")
    if kind != "multipart/form-data" or not boundary:
        raise BadRequest("the body must be multipart/form-data (with a boundary)")
    delimiter = b"--" + boundary.encode("latin-1")
    pieces = body.split(delimiter)
    if len(pieces) < 3:
        raise BadRequest("the multipart body has no parts")
    parts: dict[str, Part] = {}
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            break  # the closing delimiter
        head, separator, content = piece.partition(b"\r\n\r\n")
        if not separator:
            raise BadRequest("a part of the multipart body has no headers")
        if content.endswith(b"\r\n"):
            content = content[:-2]
        disposition = None
        for line in head.split(b"\r\n"):
            name, _, value = line.decode("utf-8", "replace").partition(":")
            if name.strip().lower() == "content-disposition":
                disposition = value
        if disposition is None:
            continue
        _, fields = _parameters(disposition)
        if "name" in fields:
            parts[fields["name"]] = Part(fields["name"], fields.get("filename"), content)
    return parts
