"""The HTTP callers blocked on sync jobs (the native API), by job id.

A sync job's caller waits on a Deferred that fires when the worker is done
with the job; Klein cancels it when the caller hangs up, which is how the
worker learns that nobody is waiting any more.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest

from foreman.http.errors import answer_with_error


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

    def answer_stopped(self, job_id: str) -> None:
        """Tell a caller foreman is stopping, unless its reply has begun."""
        caller = self._waiting.get(job_id)
        if caller is None:
            return
        if not getattr(caller.request, "startedWriting", False):
            message = "foreman is stopping; try again shortly"
            answer_with_error(caller.request, 503, message, {b"Retry-After": b"5"})
        self.release(job_id)
