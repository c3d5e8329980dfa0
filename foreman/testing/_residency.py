"""Which models are loaded, and who waits for what: Ollama's scheduler in miniature.

This follows ``server/sched.go``:

- A request for a loaded model (with the same runner options) attaches to
  its runner at once; otherwise it joins one FIFO of requests waiting for a
  load. Only that FIFO is bounded by ``max_queue``.
- The head of the FIFO loads its model when fewer than
  ``max_loaded_models`` runners exist and, with a ``memory_bytes`` budget,
  the model fits beside the loaded ones (a model's memory is its ``size``;
  the first model always loads, as Ollama then offloads part of it to the
  CPU). Otherwise it picks a runner to evict — the idle one with the
  shortest keep-alive (ties by the weights' blob digest, as Ollama orders
  by model path), or, if none is idle, the busy one with the shortest
  keep-alive — sets that
  runner's keep-alive to zero and waits for an unload before trying again.
- A runner's keep-alive is set at load (the request's ``keep_alive`` or the
  default) and replaced by every later request that sends one. The expiry
  timer starts when the runner goes idle; zero unloads at once.
- Each runner serves ``num_parallel`` requests at a time (embedding models
  one); further requests wait FIFO for a slot.
- A different ``num_ctx`` than the runner was loaded with forces a reload,
  unless neither side chose one.

Loads take ``SimModel.load_seconds`` of the injected clock. Unloads are
instantaneous.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

import attrs
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from foreman.testing._models import SimModel
from foreman.wire.gojson import duration_ns, to_ns

#: Ollama's 503 message, two spaces included.
QUEUE_FULL_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"


class QueueFull(Exception):
    """More requests are waiting for a load than ``max_queue`` allows."""

    def __init__(self) -> None:
        super().__init__(QUEUE_FULL_MESSAGE)


@attrs.define(eq=False)
class Runner:
    """One loaded (or loading) model."""

    model: SimModel
    num_ctx: int
    num_ctx_auto: bool
    keep_alive: float
    slots: DeferredSemaphore
    ready: bool = False
    ref_count: int = 0
    #: Unix nanoseconds, set when the runner last went idle (or was told to
    #: unload); like Ollama's, it goes stale while the runner is busy again.
    expires_at_ns: int | None = None
    expiry_timer: IDelayedCall | None = None
    load_timer: IDelayedCall | None = None
    waiters: list[tuple[Deferred[Lease], Lease]] = attrs.Factory(list)

    def expiry_ns(self, now: float) -> int:
        """``expires_at`` as ``/api/ps`` shows it (may be ~292 years away)."""
        if self.expires_at_ns is not None:
            return self.expires_at_ns
        # Never idle yet: Ollama estimates from the keep-alive.
        return to_ns(now) + duration_ns(self.keep_alive)


def _eviction_order(runner: Runner) -> tuple[float, str]:
    # Ollama breaks ties by the model's path, which is its weights' blob
    # (``blobs/sha256-<hex>``): in effect an arbitrary but fixed order.
    return (runner.keep_alive, runner.model.layer_digest)


class Lease:
    """One request's hold on a runner, from attachment until :meth:`release`."""

    def __init__(self, residency: Residency, runner: Runner) -> None:
        self._residency = residency
        self.runner = runner
        self._released = False
        self._holding_slot = False

    def acquire_slot(self) -> Deferred[None]:
        """Wait (FIFO, cancellable) for one of the runner's parallel slots."""
        acquired: Deferred[None] = Deferred(lambda d: waiting.cancel())
        waiting = self.runner.slots.acquire()

        def got_slot(_: object) -> None:
            if self._released:
                self.runner.slots.release()
                return
            self._holding_slot = True
            acquired.callback(None)

        def no_slot(reason: Failure) -> None:
            if not acquired.called:
                acquired.errback(reason)

        waiting.addCallbacks(got_slot, no_slot)
        return acquired

    def release(self) -> None:
        """Give the slot and the runner back; safe to call more than once."""
        if self._released:
            return
        self._released = True
        if self._holding_slot:
            self._holding_slot = False
            self.runner.slots.release()
        self._residency._release(self.runner)


@attrs.define(eq=False)
class _Pending:
    model: SimModel
    keep_alive: float | None
    num_ctx: int
    num_ctx_auto: bool
    deferred: Deferred[Lease] | None = None
    done: bool = False


class Residency:
    """The set of runners and the queue of requests waiting for a load."""

    def __init__(
        self,
        clock: IReactorTime,
        *,
        max_loaded_models: int,
        num_parallel: int,
        max_queue: int,
        default_keep_alive: float,
        default_num_ctx: int = 4096,
        memory_bytes: int | None = None,
        on_load: Callable[[SimModel], None] = lambda model: None,
        on_unload: Callable[[SimModel], None] = lambda model: None,
    ) -> None:
        if max_loaded_models < 1 or num_parallel < 1 or max_queue < 0:
            raise ValueError("max_loaded_models and num_parallel must be >= 1, max_queue >= 0")
        self._clock = clock
        self._max_loaded = max_loaded_models
        #: The GPU memory models must share; ``None``: only the count limits.
        self._memory_bytes = memory_bytes
        self._num_parallel = num_parallel
        self._max_queue = max_queue
        self._default_keep_alive = default_keep_alive
        self._default_num_ctx = default_num_ctx
        self._on_load = on_load
        self._on_unload = on_unload
        self._runners: dict[str, Runner] = {}
        self._pending: deque[_Pending] = deque()
        self._head_blocked = False
        self._processing = False
        self._again = False

    # --- what tests and /api/ps look at ---------------------------------------

    def runners(self) -> list[Runner]:
        return list(self._runners.values())

    def waiting_for_load(self) -> int:
        return sum(1 for p in self._pending if not p.done)

    # --- requests ---------------------------------------------------------------

    def request(
        self, model: SimModel, keep_alive: float | None, num_ctx: int | None = None
    ) -> Deferred[Lease]:
        """Get a lease on a loaded runner for ``model``.

        Fires once the model is loaded. Raises :class:`QueueFull` at once if
        the request would have to wait for a load and the queue is full.
        Cancelling the Deferred withdraws the request.
        """
        auto = num_ctx is None
        effective = min(
            max(self._default_num_ctx if num_ctx is None else num_ctx, 4), model.context_length
        )
        pending = _Pending(model, keep_alive, effective, auto)
        deferred: Deferred[Lease] = Deferred(lambda d: self._withdraw(pending))
        pending.deferred = deferred
        runner = self._runners.get(model.key)
        if runner is not None and not self._needs_reload(runner, pending):
            self._attach(pending, runner)
            return deferred
        waiting = self.waiting_for_load() - (1 if self._head_blocked else 0)
        if waiting >= self._max_queue:
            raise QueueFull()
        self._pending.append(pending)
        self._process()
        return deferred

    def expire(self, model: SimModel) -> None:
        """Unload ``model`` now, or as soon as its requests finish (``keep_alive: 0``)."""
        runner = self._runners.get(model.key)
        if runner is None:
            return
        runner.expires_at_ns = to_ns(self._clock.seconds())
        self._cancel_expiry(runner)
        runner.keep_alive = 0.0
        if runner.ref_count <= 0:
            self._unload(runner)

    def shutdown(self) -> None:
        """Drop everything without counting unloads (stops all timers)."""
        for pending in list(self._pending):
            if pending.deferred is not None and not pending.deferred.called:
                pending.deferred.cancel()
        for runner in list(self._runners.values()):
            self._cancel_expiry(runner)
            if runner.load_timer is not None and runner.load_timer.active():
                runner.load_timer.cancel()
            for deferred, _ in list(runner.waiters):
                deferred.cancel()
        self._runners.clear()

    # --- internals ----------------------------------------------------------------

    def _needs_reload(self, runner: Runner, pending: _Pending) -> bool:
        if runner.num_ctx_auto and pending.num_ctx_auto:
            return False
        return runner.num_ctx != pending.num_ctx

    def _attach(self, pending: _Pending, runner: Runner) -> None:
        pending.done = True
        runner.ref_count += 1
        self._cancel_expiry(runner)
        if pending.keep_alive is not None:
            runner.keep_alive = pending.keep_alive
        lease = Lease(self, runner)
        assert pending.deferred is not None
        if runner.ready:
            pending.deferred.callback(lease)
        else:
            runner.waiters.append((pending.deferred, lease))

    def _withdraw(self, pending: _Pending) -> None:
        """The client went away while waiting for a load."""
        if not pending.done:
            pending.done = True
            self._pending.remove(pending)
            return
        for runner in self._runners.values():
            for entry in runner.waiters:
                if entry[0] is pending.deferred:
                    runner.waiters.remove(entry)
                    entry[1].release()
                    return

    def _process(self) -> None:
        """Schedule the queue head(s); re-entrant calls just ask for another pass."""
        if self._processing:
            self._again = True
            return
        self._processing = True
        try:
            self._again = True
            while self._again:
                self._again = False
                self._process_once()
        finally:
            self._processing = False

    def _process_once(self) -> None:
        self._head_blocked = False
        while self._pending:
            head = self._pending[0]
            if head.done:
                self._pending.popleft()
                continue
            runner = self._runners.get(head.model.key)
            if runner is not None and not self._needs_reload(runner, head):
                self._pending.popleft()
                self._attach(head, runner)
                continue
            if runner is None and len(self._runners) < self._max_loaded and self._fits(head.model):
                self._pending.popleft()
                self._start_load(head)
                continue
            victim = runner if runner is not None else self._choose_victim()
            self._cancel_expiry(victim)
            victim.keep_alive = 0.0
            if victim.ref_count <= 0:
                self._unload(victim)
                continue
            # Wait for an unload (any unload, as Ollama does) before retrying.
            self._head_blocked = True
            return

    def _fits(self, model: SimModel) -> bool:
        if self._memory_bytes is None or not self._runners:
            return True
        used = sum(runner.model.size for runner in self._runners.values())
        return used + model.size <= self._memory_bytes

    def _choose_victim(self) -> Runner:
        ordered = sorted(self._runners.values(), key=_eviction_order)
        for runner in ordered:
            if runner.ref_count <= 0:
                return runner
        return ordered[0]

    def _start_load(self, pending: _Pending) -> None:
        model = pending.model
        keep_alive = self._default_keep_alive if pending.keep_alive is None else pending.keep_alive
        slots = 1 if model.embedding_only else self._num_parallel
        runner = Runner(
            model, pending.num_ctx, pending.num_ctx_auto, keep_alive, DeferredSemaphore(slots)
        )
        self._runners[model.key] = runner
        self._attach(pending, runner)
        if model.load_seconds > 0:
            runner.load_timer = self._clock.callLater(model.load_seconds, self._finish_load, runner)
        else:
            self._finish_load(runner)

    def _finish_load(self, runner: Runner) -> None:
        runner.load_timer = None
        runner.ready = True
        self._on_load(runner.model)
        waiters, runner.waiters = runner.waiters, []
        for deferred, lease in waiters:
            deferred.callback(lease)

    def _release(self, runner: Runner) -> None:
        if self._runners.get(runner.model.key) is not runner:
            return
        runner.ref_count -= 1
        if runner.ref_count > 0:
            return
        if not runner.ready:
            # Everyone waiting for this load went away: Ollama aborts the load.
            if runner.load_timer is not None and runner.load_timer.active():
                runner.load_timer.cancel()
            del self._runners[runner.model.key]
            self._process()
            return
        if runner.keep_alive <= 0:
            self._unload(runner)
            return
        runner.expires_at_ns = to_ns(self._clock.seconds()) + duration_ns(runner.keep_alive)
        if not math.isinf(runner.keep_alive):
            runner.expiry_timer = self._clock.callLater(runner.keep_alive, self._expired, runner)

    def _expired(self, runner: Runner) -> None:
        runner.expiry_timer = None
        if runner.ref_count <= 0:
            self._unload(runner)

    def _cancel_expiry(self, runner: Runner) -> None:
        if runner.expiry_timer is not None and runner.expiry_timer.active():
            runner.expiry_timer.cancel()
        runner.expiry_timer = None

    def _unload(self, runner: Runner) -> None:
        if self._runners.get(runner.model.key) is not runner:
            return
        self._cancel_expiry(runner)
        del self._runners[runner.model.key]
        self._on_unload(runner.model)
        self._process()
