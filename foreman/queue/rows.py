"""A :class:`~foreman.queue.job.Job` as a row of the ``jobs`` table, and back.

The table has columns that are not the job's (its lease, ``lease_until``):
a row read with ``SELECT *`` or ``RETURNING *`` is a job all the same, and
a job written never touches them.
"""

from __future__ import annotations

from typing import Any

import attrs

from foreman.queue.engines import Row
from foreman.queue.job import Job, JobState
from foreman.wire.priority import Priority

#: The job's fields, which are the columns a job is written to.
COLUMNS = tuple(field.name for field in attrs.fields(Job))
_FIELDS = frozenset(COLUMNS)


def row_to_job(row: Row, **missing: object) -> Job:
    """The job in ``row``; ``missing`` gives fields the row was read without."""
    values = {name: value for name, value in zip(row.keys(), row, strict=True) if name in _FIELDS}
    values.update(missing)
    values["state"] = JobState(values["state"])
    values["sync"] = bool(values["sync"])
    values["priority"] = Priority(values["priority"])
    return Job(**values)


def job_to_row(job: Job) -> dict[str, Any]:
    row = attrs.asdict(job, recurse=False)
    row["state"] = job.state.value
    row["sync"] = int(job.sync)
    row["priority"] = job.priority.value
    return row
