"""One inference request's life: waiting for a runner and a slot, streaming, leaving.

An :class:`InferenceCall` is created once a request has passed validation.
It asks the residency scheduler for a runner (nothing is written while the
model loads, as with Ollama), then for a parallel slot, then drives the
reply through an :class:`~foreman.testing._streaming.EventPump`. If the
client goes away at any point it withdraws from whatever it was waiting
for, stops generating, releases the runner and counts the cancellation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request

from foreman.testing._http import (
    JSON_UTF8,
    NDJSON,
    error_body,
    is_over,
    json_body,
    write_and_finish,
)
from foreman.testing._models import SimModel
from foreman.testing._residency import Lease, QueueFull
from foreman.testing._streaming import EventPump, Pace
from foreman.wire.gojson import dumps_line, duration_ns

if TYPE_CHECKING:
    from foreman.testing._simulator import SimulatedOllama

_log = Logger()

Chunk = dict[str, Any]


class InferenceCall:
    """One inference request from arrival to its last byte (or its client leaving)."""

    def __init__(self, sim: SimulatedOllama, request: Request, model: SimModel, name: str) -> None:
        self.sim = sim
        self.request = request
        self.model = model
        #: The model name exactly as the client sent it; Ollama echoes it.
        self.name = name
        self.started = sim.clock.seconds()
        self.loaded_at = self.started
        self.eval_started = self.started
        self.lease: Lease | None = None
        self.waiting: Deferred[Any] | None = None
        self.pump: EventPump[Chunk] | None = None
        self.generating = False
        self.over = False

    def now(self) -> float:
        """The simulator's clock: for waits and durations."""
        return self.sim.clock.seconds()

    def wall(self) -> float:
        """Seconds since the epoch: for the ``created_at`` of a reply."""
        return self.sim.wall()

    # --- waiting for a runner, then a slot -------------------------------------

    def wait_for_runner(
        self, keep_alive: float | None, num_ctx: int | None, then: Callable[[], None]
    ) -> bytes | int:
        try:
            leased = self.sim.residency.request(self.model, keep_alive, num_ctx)
        except QueueFull as e:
            return error_body(self.request, 503, str(e))
        self.request.notifyFinish().addErrback(self._client_gone)
        self.waiting = leased

        def loaded(lease: Lease) -> None:
            self.waiting = None
            self.lease = lease
            self.loaded_at = self.now()
            then()

        leased.addCallback(loaded).addErrback(self._failed)
        return NOT_DONE_YET

    def generate(
        self,
        events: Callable[[], Iterator[Chunk | Pace]],
        stream: bool,
        merge: Callable[[list[Chunk]], Chunk],
    ) -> None:
        assert self.lease is not None
        slot = self.lease.acquire_slot()
        self.waiting = slot

        def start(_: None) -> None:
            self.waiting = None
            self.eval_started = self.now()
            self.generating = True
            self.sim._generation_started()
            bandwidth = self.sim._bandwidth_for_generation()
            if stream:
                self.request.setHeader(b"content-type", NDJSON)
                self.pump = EventPump(
                    self.sim.clock,
                    events(),
                    self._write_line,
                    tokens_per_second=self.sim.tokens_per_second,
                    on_finished=self._stream_finished,
                    bandwidth=bandwidth,
                )
                self.request.registerProducer(self.pump, True)
            else:
                chunks: list[Chunk] = []
                self.pump = EventPump(
                    self.sim.clock,
                    events(),
                    chunks.append,
                    tokens_per_second=self.sim.tokens_per_second,
                    on_finished=lambda: self._whole_finished(merge(chunks)),
                    bandwidth=bandwidth,
                )
            self.pump.start()

        slot.addCallback(start).addErrback(self._failed)

    # --- finishing ----------------------------------------------------------------

    def _write_line(self, chunk: Chunk) -> None:
        self.request.write(dumps_line(chunk))

    def _stream_finished(self) -> None:
        self.request.unregisterProducer()
        if not is_over(self.request):
            self.request.finish()
        self._end(completed=True)

    def _whole_finished(self, response: Chunk) -> None:
        self.respond(200, response)
        self._end(completed=True)

    def respond(self, status: int, value: object, content_type: bytes = JSON_UTF8) -> None:
        body = json_body(self.request, status, value, content_type)
        write_and_finish(self.request, body)

    def respond_raw_json(self, text: str) -> None:
        self.request.setHeader(b"content-type", JSON_UTF8)
        write_and_finish(self.request, text.encode("utf-8"))

    def done_without_generation(self) -> None:
        """Finished a load-only call, an error after load, or an embedding."""
        self._end(completed=False)

    def _end(self, *, completed: bool) -> None:
        if self.over:
            return
        self.over = True
        if self.generating:
            self.generating = False
            self.sim._generation_ended(completed=completed)
        if self.lease is not None:
            self.lease.release()

    def _client_gone(self, reason: Failure) -> None:
        if self.over:
            return
        self.sim._request_cancelled()
        if self.waiting is not None:
            self.waiting.cancel()
        if self.pump is not None:
            self.pump.stopProducing()
        self._end(completed=False)

    def _failed(self, reason: Failure) -> None:
        if reason.check(CancelledError):
            return
        _log.failure("simulated Ollama failed a request", reason)
        if not getattr(self.request, "startedWriting", False):
            self.respond(500, {"error": reason.getErrorMessage()})
        elif not is_over(self.request):
            self.request.finish()
        self._end(completed=False)

    # --- metrics --------------------------------------------------------------------

    def metrics(self, prompt_tokens: int, eval_tokens: int) -> Chunk:
        now = self.now()
        values = {
            "total_duration": duration_ns(now - self.started),
            "load_duration": duration_ns(self.loaded_at - self.started),
            "prompt_eval_count": prompt_tokens,
            "prompt_eval_duration": 0,
            "eval_count": eval_tokens,
            "eval_duration": duration_ns(now - self.eval_started),
        }
        # Go's omitempty drops zero metrics.
        return {key: value for key, value in values.items() if value}
