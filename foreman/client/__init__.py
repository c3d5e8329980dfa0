"""foreman's Python client and the ``foreman`` command's job commands (ADR-0011).

:class:`JobsClient` submits, lists, waits for and cancels ``/jobs`` jobs,
with an ephemeral webhook receiver of its own. The client is what callers
install on other machines: it imports nothing of foreman's server side,
only :mod:`foreman.wire`.
"""

from foreman.client.jobs_client import (
    DEFAULT_URL,
    TERMINAL_STATES,
    ClientError,
    Endpoint,
    ForemanError,
    ForemanUnreachable,
    JobsClient,
    JobView,
    WaitTimeout,
    terminal,
)

__all__ = [
    "DEFAULT_URL",
    "TERMINAL_STATES",
    "ClientError",
    "Endpoint",
    "ForemanError",
    "ForemanUnreachable",
    "JobView",
    "JobsClient",
    "WaitTimeout",
    "terminal",
]
