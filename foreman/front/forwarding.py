"""A sync call placed on the fleet's box where it starts soonest, and relayed there (ADR-0027).

:class:`FleetGeneration` stands where the queue stands for a generation call
(:class:`~foreman.relay.generation.GenerationRunner`). It asks placement
(:mod:`foreman.front.placement`) for the boxes that could run the call,
soonest start first. This box's own turn goes to its queue; another box's is
a relay of the call to that box's foreman, exactly as the relay does to
Ollama (streaming line by line or event by event, backpressure, a hang-up
closing the connection, which cancels the work there), before a single byte
has been sent to the caller. The caller's credentials stay here: the other
box is shown the fleet's secret, and the name of the caller's key
(``X-Foreman-Caller``, believed there only beside that secret), so that the
call is that key's there too (its share, its usage). A call that arrives forwarded
(``X-Foreman-Forwarded``) runs where it is, never forwarded again. A box that
cannot be reached before it answers gives the call to the next candidate, and
at last to this box; once it has answered, its answer (an error in the
caller's dialect, or a stream cut with the dialect's error) is the caller's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.web.iweb import IAgent, IRequest

from foreman.front.placement import Candidate, Homes, candidates
from foreman.http.auth import CALLER_HEADER, caller_of
from foreman.relay.forward import Outcome, Relay
from foreman.relay.generation import GenerationCall, GenerationRunner
from foreman.relay.upstream import BytesBodyProducer, Target
from foreman.wire.model_names import canonical_model_name

log = Logger()

#: Marks a call one box forwarded to another; its value is the forwarding box's id.
FORWARDED_HEADER = b"X-Foreman-Forwarded"
#: Says, on the answer, which box ran the call.
BOX_HEADER = b"X-Foreman-Box"


class FleetGeneration:
    def __init__(
        self,
        local: GenerationRunner,
        boxes: Callable[[], Iterable[Mapping[str, Any]]],
        agent: IAgent,
        *,
        me: str,
        name: str,
        secret: str,
        relay_options: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._local = local
        self._boxes = boxes
        self._agent = agent
        self._me = me
        self._name = name
        self._secret = secret
        self._relay_options = dict(relay_options or {})
        self._relays: dict[str, Relay] = {}
        #: Where each model's calls go (affinity: a model stays where it is loaded).
        self.homes = Homes()
        #: Calls sent to another box, and those that came back to be run here.
        self.forwarded = 0
        self.fell_back = 0

    def run(self, call: GenerationCall, request: IRequest) -> Deferred[None]:
        return ensureDeferred(self._run(call, request))

    async def _run(self, call: GenerationCall, request: IRequest) -> None:
        if request.getHeader(FORWARDED_HEADER) is None:
            found = candidates(call.model, self._boxes())
            for candidate in self.homes.order(call.model, found, self._clock()):
                if candidate.this:
                    break
                if await self._forward(candidate, call, request):
                    return
                self.fell_back += 1
        request.setHeader(BOX_HEADER, self._name.encode("utf-8", "replace"))
        await self._local.run(call, request)

    async def _forward(self, box: Candidate, call: GenerationCall, request: IRequest) -> bool:
        """Relay ``call`` to ``box``; whether it answered (else nothing was sent)."""
        assert box.url is not None
        relay = self._relay_to(box.url)
        self._mark_forwarded(request, call.caller)
        try:
            attempt = await relay.relay(
                request, b"POST", request.path, BytesBodyProducer(call.body)
            )
        finally:
            self._unmark(request)
        if attempt.outcome is Outcome.UNREACHABLE:
            log.warn(
                "Box {url} could not take a call for {model} ({error}); trying the next",
                url=box.url,
                model=call.model,
                error=attempt.error,
            )
            return False
        self.forwarded += 1
        return True

    async def elsewhere(self, request: IRequest, model: str, body: bytes | None) -> bool:
        """Relay a call that names ``model`` (an embedding, ``/api/show``) to
        another box whose Ollama has it, one holding it loaded first; whether
        one answered. Never queued there: it is relayed as the box would."""
        if request.getHeader(FORWARDED_HEADER) is not None:
            return False
        wanted = canonical_model_name(model)
        having = [
            box
            for box in self._boxes()
            if not box.get("this")
            and box.get("alive")
            and box.get("answering")
            and box.get("url")
            and wanted in {canonical_model_name(m) for m in box.get("models", ())}
        ]
        having.sort(
            key=lambda box: wanted not in {canonical_model_name(m) for m in box.get("loaded", ())}
        )
        caller = caller_of(request)
        for box in having:
            relay = self._relay_to(str(box["url"]))
            self._mark_forwarded(request, None if caller is None else caller.name)
            try:
                producer = None if body is None else BytesBodyProducer(body)
                attempt = await relay.relay(request, request.method, request.path, producer)
            finally:
                self._unmark(request)
            if attempt.outcome is not Outcome.UNREACHABLE:
                self.forwarded += 1
                return True
        return False

    def _mark_forwarded(self, request: IRequest, caller: str | None) -> None:
        """Say, on the call as it leaves, which box forwards it and whose it is.

        Whatever the caller sent as ``X-Foreman-Caller`` goes: the other box
        believes the header, beside the fleet's secret.
        """
        headers = request.requestHeaders
        headers.setRawHeaders(FORWARDED_HEADER, [self._me.encode("ascii")])
        headers.removeHeader(CALLER_HEADER)
        if caller is not None:
            headers.setRawHeaders(CALLER_HEADER, [caller.encode("utf-8")])

    @staticmethod
    def _unmark(request: IRequest) -> None:
        request.requestHeaders.removeHeader(FORWARDED_HEADER)
        request.requestHeaders.removeHeader(CALLER_HEADER)

    def _relay_to(self, url: str) -> Relay:
        relay = self._relays.get(url)
        if relay is None:
            relay = Relay(self._agent, Target(url, self._secret), **self._relay_options)
            self._relays[url] = relay
        return relay
