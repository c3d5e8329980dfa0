"""One face for a fleet: the models and resident models of every live box, in
Ollama's shapes (ADR-0027).

Each box publishes, with its heartbeat, its Ollama's ``/api/tags`` and
``/api/ps`` entries as Ollama wrote them. A box answers ``/api/tags``,
``/v1/models`` and ``/api/ps`` with its own Ollama's entries first, then those
of the other live boxes for models it does not list itself: to a client, the
fleet is one Ollama with every model some box has.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from foreman.queue.boxes import BoxRecord
from foreman.wire.model_names import canonical_model_name


def merged(own: Iterable[Mapping[str, Any]], others: Iterable[BoxRecord], kind: str) -> list[Any]:
    """This box's ``kind`` entries (``tags`` or ``ps``), then the other boxes'
    for models not listed yet."""
    entries: list[Any] = []
    seen: set[str] = set()
    for entry in [*own, *(e for box in others for e in (box.report or {}).get(kind) or [])]:
        name = canonical_model_name(str(entry.get("model") or entry.get("name") or ""))
        if name and name not in seen:
            seen.add(name)
            entries.append(dict(entry))
    return entries


def tags_body(entries: list[Any]) -> bytes:
    return json.dumps({"models": entries}, separators=(",", ":")).encode() + b"\n"


def ps_body(entries: list[Any]) -> bytes:
    return json.dumps({"models": entries}, separators=(",", ":")).encode() + b"\n"


def openai_model(entry: Mapping[str, Any]) -> dict[str, Any]:
    name = str(entry.get("model") or entry.get("name") or "")
    return {
        "id": name,
        "object": "model",
        "created": _unix(entry.get("modified_at")),
        "owned_by": _namespace(name),
    }


def openai_model_body(entry: Mapping[str, Any]) -> bytes:
    """``/v1/models/{model}`` as Ollama writes it."""
    return json.dumps(openai_model(entry), separators=(",", ":")).encode() + b"\n"


def openai_models_body(entries: list[Any]) -> bytes:
    """``/v1/models`` as Ollama writes it; ``data`` is null when there is no model."""
    data = [openai_model(entry) for entry in entries]
    return (
        json.dumps({"object": "list", "data": data or None}, separators=(",", ":")).encode() + b"\n"
    )


def _unix(stamp: object) -> int:
    if not isinstance(stamp, str) or not stamp:
        return 0
    # Go writes nanoseconds; Python reads at most microseconds.
    stamp = re.sub(r"(\.\d{6})\d+", r"\1", stamp.replace("Z", "+00:00"))
    try:
        return int(datetime.fromisoformat(stamp).timestamp())
    except ValueError:
        return 0


def _namespace(name: str) -> str:
    """What Ollama calls ``owned_by``: the name's namespace, ``library`` by default."""
    base = name.rsplit(":", 1)[0] if name.rfind(":") > name.rfind("/") else name
    parts = base.split("/")
    if len(parts) >= 3:
        return parts[-2]
    return parts[0] if len(parts) == 2 else "library"
