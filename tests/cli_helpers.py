"""Running the ``foreman`` command in-process against the stub ``/jobs`` server."""

from __future__ import annotations

import io
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock

from foreman.cli import run
from tests.jobs_stub import JobsStub

TOKEN = "cli-t0ken"
SECRET = "cli-s3cret"


@attrs.frozen
class Outcome:
    code: int
    out: str
    err: str


def make_stub(reactor: Any) -> JobsStub:
    """The stub with the command's token and webhook secret, listening."""
    server = JobsStub(reactor, token=TOKEN, webhook_secret=SECRET)
    server.listen()
    return server


def environment(stub: JobsStub) -> dict[str, str]:
    return {"FOREMAN_URL": stub.url, "FOREMAN_TOKEN": TOKEN, "FOREMAN_WEBHOOK_SECRET": SECRET}


def foreman(
    reactor: Any,
    *argv: str,
    env: dict[str, str] | None = None,
    stdin: str = "",
    clock: IReactorTime | None = None,
    stderr: io.StringIO | None = None,
) -> Deferred[Outcome]:
    """``foreman ARGV`` in-process; started at once, awaited when the test likes."""
    out, err = io.StringIO(), stderr or io.StringIO()

    async def command() -> Outcome:
        code = await run(
            reactor,
            argv,
            environ=env or {},
            stdin=io.StringIO(stdin),
            stdout=out,
            stderr=err,
            # A clock nobody advances: a test that needed a real pause would hang.
            clock=clock or Clock(),
        )
        return Outcome(code, out.getvalue(), err.getvalue())

    return Deferred.fromCoroutine(command())
