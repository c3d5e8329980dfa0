"""What an attempt's outcome means for its job: done, failed, or back in the queue.

Failures are sorted by what they mean. The target could not be reached: the
job goes back to the queue with exponential backoff, and fails with the last
error only after ``max_attempts``. Ollama answered with an error: the job
fails at once with Ollama's status and message (the relay already passed the
answer on to a waiting caller). Pure functions of the job, the attempt and
the time, so the policy is tested without a worker.
"""

from __future__ import annotations

from typing import Any

import attrs

from foreman.queue.job import Job, JobState
from foreman.relay.forward import Attempt, Outcome

#: Why a job ended without running to the end (its ``last_error``).
LEFT_QUEUED = "the caller disconnected while the job was queued"
LEFT_RUNNING = "the caller disconnected while the job was running"
CANCELLED_QUEUED = "cancelled while queued"
CANCELLED_RUNNING = "cancelled while running"
STOPPED: dict[str, Any] = {"last_error": "foreman stopped", "error_status": 503}


@attrs.frozen
class Retries:
    """How often, and how far apart, a job is tried while the target is unreachable."""

    max_attempts: int = 3
    backoff_base: float = 1.0
    backoff_cap: float = 60.0

    def delay(self, attempt: int) -> float:
        """Seconds before the try after ``attempt`` (1 for the first)."""
        return min(self.backoff_cap, self.backoff_base * 2.0 ** (attempt - 1))


@attrs.frozen
class Settlement:
    #: The job in its new state.
    job: Job
    #: Seconds until the job may run again, when it went back to the queue.
    retry_in: float | None = None
    #: The answer foreman itself owes a waiting caller: (status, message).
    caller_error: tuple[int, str] | None = None


def settle(job: Job, attempt: Attempt, now: float, retries: Retries) -> Settlement:
    """The job's next state after ``attempt`` ended at ``now``."""
    if attempt.outcome is Outcome.UNREACHABLE:
        if job.attempt < retries.max_attempts:
            delay = retries.delay(job.attempt)
            queued = job.moved(
                JobState.QUEUED, now, not_before=now + delay, last_error=attempt.error
            )
            return Settlement(queued, retry_in=delay)
        failed = job.moved(JobState.FAILED, now, last_error=attempt.error, error_status=502)
        return Settlement(failed, caller_error=(502, attempt.error or ""))
    if attempt.outcome is Outcome.DELIVERED:
        result = None if job.sync else attempt.body
        return Settlement(job.moved(JobState.DONE, now, result=result, last_error=None))
    # Refused or broken: the relay already passed it on to a caller.
    status = attempt.status if attempt.outcome is Outcome.REFUSED else 502
    return Settlement(
        job.moved(JobState.FAILED, now, last_error=attempt.error, error_status=status)
    )
