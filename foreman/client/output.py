"""How the ``foreman`` command shows jobs, models and the queue to a person.

Pure functions from JSON (job views, ``/api/ps``, ``/api/foreman/queue``) to
text; ``--json`` bypasses all of this. Fields that are missing or of an
unexpected type show as ``-`` rather than failing: a newer foreman may say
more, or differently, than this client knows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

#: Ollama shows a model pinned forever as expiring some 290 years from now.
_FOREVER = 100 * 365 * 86400.0


def table(headers: Sequence[str] | None, rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, two spaces apart."""
    lines = ([list(headers)] if headers else []) + [list(row) for row in rows]
    if not lines:
        return ""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def jobs_table(jobs: Sequence[Mapping[str, Any]], now: float) -> str:
    rows = [
        [
            plain(job.get("job_id")),
            plain(job.get("state")),
            plain(job.get("model")),
            plain(job.get("priority")),
            age(job.get("created_at"), now),
            plain(job.get("attempt")),
        ]
        for job in jobs
    ]
    return table(["ID", "STATE", "MODEL", "PRIORITY", "AGE", "ATTEMPT"], rows)


def job_details(view: Mapping[str, Any]) -> str:
    names = ["job_id", "state", "position", "model", "endpoint", "priority", "attempt"]
    names += ["created_at", "started_at", "finished_at", "error"]
    rows = [[name, plain(view.get(name))] for name in names]
    artifacts = [
        f"{plain(a.get('name'))} ({plain(a.get('content_type'))}, {plain(a.get('size'))} bytes)"
        for a in view.get("artifacts") or []
        if isinstance(a, Mapping)
    ]
    rows.append(["artifacts", ", ".join(artifacts) or "-"])
    rows.append(["metadata", plain(view.get("metadata"))])
    return table(None, rows)


def ps_report(ps: Mapping[str, Any], queue: Mapping[str, Any], now: float) -> str:
    """Resident models (``/api/ps``), then foreman's queue (``/api/foreman/queue``)."""
    models = [m for m in ps.get("models") or [] if isinstance(m, Mapping)]
    if models:
        rows = [
            [
                plain(m.get("name") or m.get("model")),
                size(m.get("size")),
                size(m.get("size_vram")),
                until(m.get("expires_at"), now),
            ]
            for m in models
        ]
        parts = [table(["MODEL", "SIZE", "VRAM", "UNTIL"], rows)]
    else:
        parts = ["no models loaded"]
    parts.append("")
    if queue.get("queue") == "disabled":
        parts.append("queue: disabled (foreman runs with --no-queue)")
        return "\n".join(parts)
    summary = f"queue: {plain(queue.get('depth', 0))} waiting"
    if queue.get("max_queue") is not None:
        summary += f" (at most {plain(queue['max_queue'])})"
    if queue.get("worker_model"):
        summary += f", worker model {plain(queue['worker_model'])}"
    parts.append(summary)
    jobs = [job for job in queue.get("jobs") or [] if isinstance(job, Mapping)]
    if jobs:
        # Whose each job is, once any was sent with a key (a foreman without
        # keys, or older than them, keeps its columns).
        keyed = any(job.get("caller") is not None for job in jobs)
        rows = [
            [
                plain(job.get("id")),
                *([plain(job.get("caller"))] if keyed else []),
                plain(job.get("model")),
                plain(job.get("endpoint")),
                plain(job.get("priority")),
                plain(job.get("state")),
                plain(job.get("position")),
                waited(job),
                duration(job.get("age_seconds", job.get("age"))),
                plain(job.get("attempt")),
            ]
            for job in jobs
        ]
        headers = ["ID", *(["KEY"] if keyed else []), "MODEL", "ENDPOINT", "PRIORITY", "STATE"]
        headers += ["POSITION", "WAITED", "AGE", "ATTEMPT"]
        parts.append(table(headers, rows))
    boxes = [box for box in queue.get("boxes") or [] if isinstance(box, Mapping)]
    if boxes:
        parts += ["", boxes_report(boxes)]
    return "\n".join(parts)


def boxes_report(boxes: Sequence[Mapping[str, Any]]) -> str:
    """A fleet's boxes (the queue report's ``boxes``): this one marked ``*``."""
    alive = sum(1 for box in boxes if box.get("alive") is True)
    rows = [
        [
            plain(box.get("name")) + (" *" if box.get("this") is True else ""),
            box_state(box),
            plain(box.get("resident")),
            running(box.get("running")),
            waiting_by_model(box.get("waiting")),
            seen(box),
        ]
        for box in boxes
    ]
    headers = ["BOX", "STATE", "RESIDENT", "RUNNING", "WAITING", "SEEN"]
    return f"fleet: {alive} of {len(boxes)} boxes alive\n" + table(headers, rows)


def seen(box: Mapping[str, Any]) -> str:
    if box.get("this") is True:
        return "now"
    seconds = box.get("seen_seconds_ago")
    return f"{duration(seconds)} ago" if isinstance(seconds, int | float) else "-"


def box_state(box: Mapping[str, Any]) -> str:
    if box.get("alive") is not True:
        return "gone"
    return "alive" if box.get("answering") is not False else "alive, ollama silent"


def running(job: Any) -> str:
    if not isinstance(job, Mapping):
        return "-"
    return f"{plain(job.get('id'))} ({plain(job.get('model'))}, {plain(job.get('state'))})"


def waiting_by_model(waiting: Any) -> str:
    """``{"llama3.2:latest": 3}`` as ``3 (llama3.2:latest 3)``; ``0`` when empty."""
    if not isinstance(waiting, Mapping):
        return "-"
    counts = {str(model): n for model, n in waiting.items() if isinstance(n, int) and n > 0}
    if not counts:
        return "0"
    each = ", ".join(f"{model} {n}" for model, n in counts.items())
    return f"{sum(counts.values())} ({each})"


def waited(job: Mapping[str, Any]) -> str:
    """How long a queue entry waited (to start, if it runs), marked once overdue."""
    shown = duration(job.get("waited_seconds"))
    return f"{shown} (overdue)" if job.get("overdue") is True else shown


def answer_text(view: Mapping[str, Any], completion: Any) -> str:
    """What a done job answered: chat's message content, or generate's response."""
    if not isinstance(completion, Mapping):
        return json.dumps(completion)
    if view.get("endpoint") == "generate" or "response" in completion:
        return plain(completion.get("response", ""))
    message = completion.get("message")
    if isinstance(message, Mapping) and isinstance(message.get("content"), str):
        return str(message["content"])
    return json.dumps(completion)


def plain(value: Any) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else json.dumps(value)


def timestamp(text: Any) -> float | None:
    """An RFC 3339 time (Ollama's carry nanoseconds; Python keeps microseconds)."""
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    seconds = max(0.0, float(seconds))
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{int(seconds // length)}{unit}"
    return f"{int(seconds)}s"


def age(created_at: Any, now: float) -> str:
    created = timestamp(created_at)
    return "-" if created is None else duration(now - created)


def until(expires_at: Any, now: float) -> str:
    expires = timestamp(expires_at)
    if expires is None:
        return "-"
    if expires - now > _FOREVER:
        return "forever"
    return "now" if expires <= now else f"in {duration(expires - now)}"


def size(value: Any) -> str:
    """Bytes in decimal units, as ``ollama ps`` shows them."""
    if not isinstance(value, int | float):
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{int(value)} B"
