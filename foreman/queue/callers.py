"""The HTTP callers blocked on sync jobs (the native API), by job id.

A sync job's caller waits on a Deferred that fires when the worker is done
with the job; Klein cancels it when the caller hangs up, which is how the
worker learns that nobody is waiting any more.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest

from foreman.http.errors import answer_with_error, error_line
from foreman.http.site import STOPPING_MESSAGE, STOPPING_RETRY_AFTER


@attrs.define
class Caller:
    request: IRequest
    done: Deferred[None]


class Callers:
    def __init__(self) -> None:
        self._waiting: dict[str, Caller] = {}

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._waiting

    def get(self, job_id: str) -> Caller | None:
        return self._waiting.get(job_id)

    def wait(self, job_id: str, request: IRequest, left: Callable[[str], None]) -> Deferred[None]:
        """What ``request`` waits on until released; ``left(job_id)`` if it hangs up."""
        done: Deferred[None] = Deferred(lambda _: left(job_id))
        self._waiting[job_id] = Caller(request, done)
        return done

    def forget(self, job_id: str) -> None:
        """Drop a caller that has gone already."""
        self._waiting.pop(job_id, None)

    def release(self, job_id: str) -> None:
        """The job is over for its caller: its response is written."""
        caller = self._waiting.pop(job_id, None)
        if caller is not None and not caller.done.called:
            caller.done.callback(None)

    def answer(self, job_id: str, status: int, message: str, retry_after: int) -> None:
        """Answer a caller whose job never started with an error, and release it."""
        caller = self._waiting.get(job_id)
        if caller is None:
            return
        headers = {b"Retry-After": b"%d" % retry_after}
        answer_with_error(caller.request, status, message, headers)
        self.release(job_id)

    def answer_stopped(self, job_id: str) -> None:
        """Tell a caller foreman is stopping, and release it.

        Before its reply began: ``503`` with ``Retry-After``. Mid-stream: the
        dialect's broken-stream ending, so the stream never ends looking whole.
        """
        caller = self._waiting.get(job_id)
        if caller is None:
            return
        request: Any = caller.request
        if not getattr(request, "startedWriting", False):
            self.answer(job_id, 503, STOPPING_MESSAGE, STOPPING_RETRY_AFTER)
            return
        if not getattr(request, "finished", False) and getattr(request, "channel", None):
            ending = error_line(STOPPING_MESSAGE, request.path or b"")
            if ending.startswith((b"data:", b"event:")):
                ending = b"\n" + ending  # in case an event was half-sent
            request.write(ending)
        self.release(job_id)
