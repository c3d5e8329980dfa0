"""Ollama's generation endpoints in each of its dialects, and what foreman needs of them.

Every generation call foreman queues names one of these; a job stores the
endpoint's name. Native calls keep their historical names (``chat``,
``generate``); the OpenAI and Anthropic ones are named by their paths.
Ollama translates the dialects itself: foreman only needs to know where a
call goes, whether it streams when the body does not say, and which native
call loads its model.
"""

from __future__ import annotations

import enum
from urllib.parse import unquote_to_bytes

import attrs


class Dialect(enum.Enum):
    OLLAMA = "ollama"
    OPENAI = "openai"
    ANTHROPIC = "anthropic"


def dialect_of(path: bytes) -> Dialect:
    """The dialect of a call to ``path`` (without its query), as Ollama routes it.

    Ollama's router (gin) matches the decoded path: ``/v1/%6Dessages`` is
    ``/v1/messages``, and is answered in its dialect.
    """
    path = unquote_to_bytes(path)
    if path == b"/v1/messages" or path.startswith(b"/v1/messages/"):
        return Dialect.ANTHROPIC
    if path == b"/v1" or path.startswith(b"/v1/"):
        return Dialect.OPENAI
    return Dialect.OLLAMA


@attrs.frozen
class Endpoint:
    #: What a job stores: ``chat``, ``generate``, or a dialect's path.
    name: str
    path: bytes
    dialect: Dialect
    #: Whether a body without ``stream`` streams (Ollama's: yes; the others: no).
    streams_by_default: bool
    #: The native call that loads the model (with foreman's ``keep_alive``):
    #: chat-shaped calls load through ``/api/chat``, the rest ``/api/generate``.
    loads_as_chat: bool
    #: The body is JSON (transcriptions are multipart forms).
    json_body: bool = True
    #: An embedding call: it never makes its model the worker model (the
    #: embedder has its own slot, ADR-0013); only batches queue it (ADR-0029).
    embeds: bool = False

    @property
    def load_path(self) -> bytes:
        return b"/api/chat" if self.loads_as_chat else b"/api/generate"


_ALL = (
    Endpoint("chat", b"/api/chat", Dialect.OLLAMA, True, True),
    Endpoint("generate", b"/api/generate", Dialect.OLLAMA, True, False),
    Endpoint("/v1/chat/completions", b"/v1/chat/completions", Dialect.OPENAI, False, True),
    Endpoint("/v1/completions", b"/v1/completions", Dialect.OPENAI, False, False),
    Endpoint("/v1/responses", b"/v1/responses", Dialect.OPENAI, False, True),
    Endpoint(
        "/v1/audio/transcriptions",
        b"/v1/audio/transcriptions",
        Dialect.OPENAI,
        False,
        False,
        json_body=False,
    ),
    Endpoint("/v1/messages", b"/v1/messages", Dialect.ANTHROPIC, False, True),
    Endpoint("/v1/embeddings", b"/v1/embeddings", Dialect.OPENAI, False, False, embeds=True),
)

ENDPOINTS: dict[str, Endpoint] = {endpoint.name: endpoint for endpoint in _ALL}
#: Also by path, so ``/jobs`` may name ``/api/chat`` as well as ``chat``.
BY_PATH: dict[str, Endpoint] = {endpoint.path.decode(): endpoint for endpoint in _ALL}


def endpoint_named(name: str) -> Endpoint:
    """The endpoint a job stored (a name) or a caller named (a name or a path)."""
    found = ENDPOINTS.get(name) or BY_PATH.get(name)
    if found is None:
        raise KeyError(name)
    return found


def is_cloud_model(model: str) -> bool:
    """A model Ollama forwards to ollama.com instead of running it here."""
    tag = model.rpartition(":")[2] if ":" in model.rpartition("/")[2] else ""
    return tag.lower() == "cloud" or tag.lower().endswith("-cloud")
