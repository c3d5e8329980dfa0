"""Batches and files as OpenAI's objects show them, and a finished batch's answers as files.

The ``openai`` SDK parses these objects (``Batch``, ``FileObject``) and the
output file's lines (``{"id", "custom_id", "response": {"status_code",
"request_id", "body"}, "error"}``); the shapes follow OpenAI's reference.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from foreman.jobs.batches.table import BatchRow, FileRow
from foreman.queue.ulid import new_ulid

#: What a line that never ran says in the error file.
NOT_RUN = "This request was not run: its batch was cancelled."


def new_file_id(now: float) -> str:
    return "file-" + new_ulid(now)


def new_batch_id(now: float) -> str:
    return "batch_" + new_ulid(now)


def _seconds(value: float | None) -> int | None:
    return None if value is None else int(value)


def file_object(file: FileRow) -> dict[str, Any]:
    return {
        "id": file.id,
        "object": "file",
        "bytes": file.bytes,
        "created_at": int(file.created_at),
        "filename": file.filename,
        "purpose": file.purpose,
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }


def batch_object(batch: BatchRow) -> dict[str, Any]:
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "errors": None,
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window,
        "status": batch.state,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "created_at": int(batch.created_at),
        "in_progress_at": _seconds(batch.in_progress_at),
        "expires_at": _seconds(batch.expires_at),
        "finalizing_at": _seconds(batch.finalizing_at),
        "completed_at": _seconds(batch.completed_at),
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": _seconds(batch.cancelling_at),
        "cancelled_at": _seconds(batch.cancelled_at),
        "request_counts": {
            "total": batch.total,
            "completed": batch.completed,
            "failed": batch.failed,
        },
        "metadata": None if batch.metadata is None else json.loads(batch.metadata),
    }


def _json(raw: Any) -> Any:
    """A stored reply as JSON (bytes from either engine); text if it is not JSON."""
    if raw is None:
        return None
    text = bytes(raw).decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def _compact(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def answer_files(lines: Sequence[tuple[Any, ...]]) -> tuple[bytes, bytes]:
    """A finished batch's output file (the answers) and error file (the
    refusals, failures, and lines never run), from its lines' jobs."""
    output: list[bytes] = []
    errors: list[bytes] = []
    for job_id, custom_id, state, result, status, error in lines:
        line: dict[str, Any] = {"id": f"batch_req_{job_id}", "custom_id": custom_id}
        if state == "done":
            line["response"] = {"status_code": 200, "request_id": job_id, "body": _json(result)}
            line["error"] = None
            output.append(_compact(line))
        elif state == "failed":
            line["response"] = {
                "status_code": status or 500,
                "request_id": job_id,
                "body": {"error": {"message": error, "type": "server_error", "code": None}},
            }
            line["error"] = None
            errors.append(_compact(line))
        else:
            line["response"] = None
            line["error"] = {"code": "batch_cancelled", "message": NOT_RUN}
            errors.append(_compact(line))
    return b"".join(output), b"".join(errors)
