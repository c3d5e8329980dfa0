"""Runners: which thread a job store call runs on.

foreman runs the store on a dedicated single-thread pool, so a slow disk
never stalls streaming on the reactor thread; tests run it inline, which
keeps scheduling tests deterministic while still using a real SQLite file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")
Runner = Callable[[Callable[[], T]], "Deferred[T]"]


def inline_runner(work: Callable[[], T]) -> Deferred[T]:
    """Run on the calling thread: for tests and tools, never for the daemon."""
    return maybeDeferred(work)


def thread_runner(reactor: Any, pool: ThreadPool) -> Runner[Any]:
    def run(work: Callable[[], T]) -> Deferred[T]:
        return deferToThreadPool(reactor, pool, work)

    return run
