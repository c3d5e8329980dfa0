"""The simulated Ollama as a process of its own, saying on standard output what it is asked.

    python tests/recording_ollama.py --listen tcp:PORT:interface=127.0.0.1 \\
        --tokens-per-second 20 --reply-tokens 10

It takes ``python -m foreman.testing``'s options and serves the same
simulator; besides, for every request it prints one line when the request
has arrived and one when its answer has ended::

    CALL 3 POST /api/chat job-01
    ENDED 3 POST /api/chat job-01 finished

The last field of ``CALL`` is what the call asks (a chat's last message, a
prompt; ``-`` for a call with neither, such as foreman's model loads); an
answer ends ``finished`` or ``cut`` (the connection was lost first). A
process killed with SIGKILL prints nothing more: a ``CALL`` without its
``ENDED`` is a generation that died with it. Tests over real processes
(:mod:`tests.ollama_process`) read these lines to count what Ollama was
asked to generate, and so that no job was generated twice.

It is a script, not a module of the ``tests`` package: it imports only
foreman and Twisted, and runs from any folder.
"""

from __future__ import annotations

import itertools
import json
import sys
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import react
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.python.failure import Failure
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from foreman.testing.__main__ import build_simulator, parse_args


def asked(body: bytes) -> str:
    """What a generation call asks: its last message or prompt, else ``-``."""
    try:
        document = json.loads(body)
    except ValueError:
        return "-"
    if not isinstance(document, dict):
        return "-"
    messages = document.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        content = messages[-1].get("content")
        if isinstance(content, str) and content:
            return content.split()[0]
    prompt = document.get("prompt")
    if isinstance(prompt, str) and prompt:
        return prompt.split()[0]
    return "-"


def say(line: str) -> None:
    print(line, flush=True)


class RecordingSite(Site):
    """A ``Site`` that prints each request's arrival and end."""

    _numbers = itertools.count(1)

    def getResourceFor(self, request: Request) -> IResource:
        number = next(self._numbers)
        method = request.method.decode("ascii", "replace")
        path = request.path.decode("ascii", "replace")
        body = request.content.read() if request.content is not None else b""
        if request.content is not None:
            request.content.seek(0)
        what = asked(body) if method == "POST" else "-"
        say(f"CALL {number} {method} {path} {what}")

        def ended(result: Failure | None) -> None:
            how = "cut" if isinstance(result, Failure) else "finished"
            say(f"ENDED {number} {method} {path} {what} {how}")

        request.notifyFinish().addBoth(ended)
        resource: IResource = super().getResourceFor(request)
        return resource


def serve(reactor: Any, argv: list[str]) -> Deferred[None]:
    options = parse_args(argv)
    sim = build_simulator(options, reactor)
    site = RecordingSite(sim.resource(), timeout=None, parsePOSTFormSubmission=False)
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]
    listening: Deferred[IListeningPort] = serverFromString(reactor, options.listen).listen(site)

    def started(port: IListeningPort) -> Deferred[None]:
        say(f"LISTENING {port.getHost().port}")  # type: ignore[attr-defined]
        return Deferred()  # until SIGTERM (react stops the reactor) or SIGKILL

    serving: Deferred[None] = listening.addCallback(started)
    return serving


if __name__ == "__main__":
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    react(serve, (sys.argv[1:],))
