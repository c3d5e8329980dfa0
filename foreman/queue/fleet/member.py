"""A box's part in a fleet: its heartbeat, and its share of the fleet's queue (ADR-0026).

Every ``lease / 3`` seconds the box publishes who it is, the models its
Ollama has, the worker's resident model, whether Ollama answers and its
queue in summary (:class:`~foreman.queue.boxes.BoxRecord`), renews the
leases of the jobs it runs, and takes back the jobs of any box whose lease
ran out (no leader: whichever box looks first). Between heartbeats it
follows the fleet's queue (:mod:`foreman.queue.fleet.share`): on a
notification from the database (a hint), after each of its jobs, after a
claim another box won, and at least every ``poll`` seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from foreman.queue.boxes import BoxRecord
from foreman.queue.engines import Connection
from foreman.queue.fleet.identity import BoxIdentity
from foreman.queue.fleet.share import Share, summary
from foreman.queue.job import Job, JobState
from foreman.queue.leases import JOBS_CHANNEL
from foreman.queue.store import JobStore
from foreman.queue.transitions import Transition
from foreman.queue.worker import Worker
from foreman.wire.model_names import canonical_model_name

log = Logger()

#: Default lease of a box's heartbeat and of the jobs it claims.
DEFAULT_LEASE = 15.0
#: The longest a box goes without looking at the fleet's queue.
DEFAULT_POLL = 1.0


class FleetMember(Service):
    def __init__(
        self,
        store: JobStore,
        worker: Worker,
        identity: BoxIdentity,
        clock: IReactorTime,
        *,
        lease: float = DEFAULT_LEASE,
        poll: float = DEFAULT_POLL,
        threads: IReactorThreads | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._worker = worker
        self.identity = identity
        self._clock = clock
        self.lease = lease
        self.poll = poll
        self._threads = threads
        self._wall = wall
        self.started_at = wall()
        #: The boxes as last read, this one included.
        self.boxes: list[BoxRecord] = []
        #: When they were read, on ``clock``: a box's ``seen_seconds_ago`` counts from then.
        self.read_at = clock.seconds()
        #: Why the last heartbeat failed; ``None`` while they succeed.
        self.error: str | None = None
        #: Heartbeats that failed since start (``/metrics``).
        self.heartbeat_failures = 0
        #: When the last heartbeat succeeded (wall clock); ``None`` before the first.
        self.last_heartbeat_at: float | None = None
        #: This box's recent runs, published with its heartbeat for the other
        #: boxes' timelines (set by :class:`foreman.ops.timeline.Timeline`).
        self.history: Callable[[], list[dict[str, Any]]] | None = None
        self.share = Share(store, worker, identity.id, lease=lease)
        self._beating = LoopingCall(self._beat)
        self._beating.clock = clock
        self._polling = LoopingCall(self._poll)
        self._polling.clock = clock
        self._stop_listening = threading.Event()
        self._refresh: Deferred[None] | None = None
        self._again = False
        worker.on_transition(self._heard)
        worker.on_taken = self.refresh_soon
        worker.takes_here = self.share.takes_at_submit
        # The models are known once Ollama first answers: say so at once.
        worker.residency.inventory.on_reachable(self._beat_now)

    # -- the service -----------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._stop_listening.clear()
        self._beating.start(self.lease / 3, now=True)
        self._polling.start(self.poll, now=False)
        if self._threads is not None and self._store.engine.notifies:
            self._threads.callInThread(
                self._store.engine.listen, JOBS_CHANNEL, self._notified, self._stop_listening
            )

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self._stop_listening.set()
        for loop in (self._beating, self._polling):
            if loop.running:
                loop.stop()
        return None

    # -- the heartbeat ------------------------------------------------------------------

    def _beat(self) -> Deferred[None]:
        return ensureDeferred(self.beat())

    def _beat_now(self) -> None:
        if self.running:
            self._beat()

    async def beat(self) -> None:
        """Publish this box, renew its leases, take back the expired ones."""
        try:
            await self._store.publish_box(self.record())
            await self._store.renew_leases(lease=self.lease)
            requeued: list[Transition] = []
            reaped = await self._store.reap_expired(
                now=self._wall(), requeued=self._recorder(requeued)
            )
            for transition in requeued:
                transition.stored()
            for job, previous in reaped:
                log.warn(
                    "Job {job_id} ({previous} on a box whose lease ran out) is back in "
                    "the fleet's queue",
                    job_id=job.id,
                    previous=previous.value,
                )
            self.boxes = await self._store.boxes(lease=self.lease)
            self.read_at = self._clock.seconds()
            self.share.boxes = self.boxes
        except Exception as e:
            self.heartbeat_failures += 1
            self._troubled(e)
            return
        self.last_heartbeat_at = self._wall()
        if self.error is not None:
            log.info("The fleet's store answers again: heartbeats go on")
            self.error = None
        if reaped:
            self.refresh_soon()

    def record(self, *, runs: bool = True) -> BoxRecord:
        """This box as it is now; with ``runs``, its recent runs too (for
        the other boxes' status pages)."""
        worker = self._worker
        inventory = worker.residency.inventory
        report = summary(worker)
        if runs and self.history is not None:
            report["runs"] = self.history()
        return BoxRecord(
            id=self.identity.id,
            name=self.identity.name,
            url=self.identity.url,
            models=tuple(sorted(inventory.model_names)),
            resident=worker.residency.worker_model,
            answering=not worker.outage.target_silent,
            report=report,
            started_at=self.started_at,
        )

    def seen(self, box: BoxRecord) -> tuple[float, bool]:
        """How long ago ``box`` last published, and whether it is alive, now:
        the store's answer at the last heartbeat, aged since."""
        seen = box.seen_seconds_ago + max(0.0, self._clock.seconds() - self.read_at)
        return seen, box.alive and seen <= self.lease

    def report(self, *, runs: bool = True) -> list[dict[str, Any]]:
        """Every box the fleet's store knows, for the queue report and the
        status page: this one as it is now, the others as last published.
        Without ``runs``, this box's recent runs are left out."""
        shown = []
        for box in self.boxes or [attrs.evolve(self.record(runs=runs), alive=True)]:
            this = box.id == self.identity.id
            if this:
                box = attrs.evolve(self.record(runs=runs), alive=True, seen_seconds_ago=0.0)
                seen, alive = 0.0, True
            else:
                seen, alive = self.seen(box)
            report = box.report or {}
            shown.append(
                {
                    "id": box.id,
                    "name": box.name,
                    "url": box.url,
                    "this": this,
                    "alive": alive,
                    "seen_seconds_ago": round(seen, 3),
                    "answering": box.answering,
                    "models": list(box.models),
                    "resident": box.resident,
                    "running": report.get("running"),
                    "waiting": report.get("waiting", {}),
                    "activity": report.get("activity"),
                    "interactive_waiting": report.get("interactive_waiting", 0),
                    "average_job_seconds": report.get("average_job_seconds"),
                    "load_seconds": report.get("load_seconds", {}),
                    "loaded": [
                        str(entry.get("model") or entry.get("name"))
                        for entry in report.get("ps") or []
                    ],
                }
            )
        return shown

    def placing(self) -> list[dict[str, Any]]:
        """The boxes as placement reads them, on every sync call: the report
        without this box's recent runs, which placement does not read."""
        return self.report(runs=False)

    def others(self) -> list[BoxRecord]:
        """The other boxes alive now, as they last published."""
        return [box for box in self.boxes if box.alive and box.id != self.identity.id]

    def has_model(self, model: str) -> bool:
        """Whether a live box's Ollama has ``model`` (any name Ollama takes for it)."""
        wanted = canonical_model_name(model)
        return any(
            box.alive and wanted in {canonical_model_name(name) for name in box.models}
            for box in self.boxes
        )

    def _recorder(self, into: list[Transition]) -> Callable[[Connection, Job, JobState], None]:
        transitions = self._worker.transitions

        def record(db: Connection, job: Job, previous: JobState) -> None:
            transition = transitions.begin(job, previous)
            if transition.write is not None:
                transition.write(db)
            into.append(transition)

        return record

    def _troubled(self, error: Exception) -> None:
        reason = str(error).strip() or type(error).__name__
        if self.error is None:
            log.error(
                "The fleet's store does not answer ({reason}): this box's heartbeat "
                "and leases wait for it",
                reason=reason,
            )
        self.error = reason

    # -- following the fleet's queue ---------------------------------------------------

    def refresh_soon(self) -> None:
        """Look at the fleet's queue now (again, if a look is under way)."""
        if self._refresh is not None:
            self._again = True
            return
        looking = ensureDeferred(self._follow())
        if not looking.called:  # a store on the reactor's thread answers at once
            self._refresh = looking
            looking.addBoth(self._looked)

    def _looked(self, _: object) -> None:
        self._refresh = None

    async def _follow(self) -> None:
        while True:
            self._again = False
            try:
                await self.share.refresh()
            except Exception as e:
                self._troubled(e)
            if not self._again or not self.running:
                return

    def _poll(self) -> None:
        self.refresh_soon()

    def _notified(self, payload: str) -> None:
        # On the listener's thread: a hint, acted on in the reactor.
        self._threads_call(self.refresh_soon)

    def _threads_call(self, work: Callable[[], Any]) -> None:
        if self._threads is not None:
            self._threads.callFromThread(work)

    def _heard(self, job: Job, previous: JobState | None) -> None:
        if job.state.terminal or job.state is JobState.QUEUED:
            self.refresh_soon()
