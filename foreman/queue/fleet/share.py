"""Which of the fleet's queued jobs this box takes (ADR-0026).

Every box keeps, in its own scheduler, the fleet's queued ``/jobs`` jobs it
could run, and orders them with the same rules as its own (overdue first,
people before batches, drain by model, the quantum); it claims a job in the
store just before it starts it, so a job another box took first is only let
go. Sync calls stay on the box that received them.

What a box may take draws the fleet's drain by model:

- only jobs for models its Ollama has;
- not a model another live box is running or holds resident, unless that
  model's queue is long enough to pay for loading it here too: its waiting
  jobs' time, shared by two boxes, saves more than a load of it costs
  (:data:`SPREAD_LOADS` loads);
- a model no live box holds goes to whichever free box claims it first.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from foreman.queue.boxes import BoxRecord
from foreman.queue.job import Job, JobState
from foreman.queue.store import JobStore
from foreman.queue.worker import Worker
from foreman.wire.model_names import canonical_model_name

#: A model busy on another box spreads to this one when its queue holds more
#: than this many of its loads of work: split between two boxes, it saves
#: half of that, more than the load it costs.
SPREAD_LOADS = 2.0


class Share:
    def __init__(self, store: JobStore, worker: Worker, me: str, *, lease: float) -> None:
        self._store = store
        self._worker = worker
        self._me = me
        self._lease = lease
        #: The boxes as the last heartbeat read them.
        self.boxes: list[BoxRecord] = []
        #: Models busy on another box as of the last look (for views and tests).
        self.elsewhere: frozenset[str] = frozenset()
        #: Looks at the fleet's queue since start.
        self.looks = 0

    async def refresh(self) -> None:
        """Follow the fleet's queue: adopt what this box may run, let go of
        what another box took or cancelled, and stop the running job if the
        fleet took it back."""
        self.looks += 1
        worker = self._worker
        models = worker.residency.inventory.model_names
        # Without bodies: a job adopted here gets its body from its claim, and
        # a deep fleet queue (a batch's thousands) is read often.
        waiting = await self._store.fleet_queue(models, bodies=False)
        running = await self._store.running()
        elsewhere = self._busy_elsewhere(running)
        self.elsewhere = frozenset(elsewhere)
        per_model = Counter(canonical_model_name(job.model) for job in waiting)
        mine = [job for job in waiting if self._may_take(job, per_model, elsewhere)]
        worker.adopt(mine)
        wanted = {job.id for job in mine}
        unsure = [job_id for job_id in worker.queued_here() if job_id not in wanted]
        current = worker.current
        # The running job, once its claim is in (until then it is not yet this box's).
        claimed = current is not None and not current.sync and current.box == self._me
        asked = unsure + ([current.id] if claimed and current is not None else [])
        if not asked:
            return
        states = await self._store.states(asked)
        gone = []
        for job_id in unsure:
            state, box = states.get(job_id, (JobState.CANCELLED, None))
            if (
                state is not JobState.QUEUED
                or box not in (None, self._me)
                or self._elsewhere_now(job_id, elsewhere)
            ):
                gone.append(job_id)
        worker.let_go(gone)
        if claimed and current is not None and current.id in states:
            state, box = states[current.id]
            if not state.running or box != self._me:
                # Reaped (its lease ran out), claimed elsewhere, or cancelled.
                worker.fence_current(current.id)

    def has_model_here(self, job: Job) -> bool:
        """Whether this box's Ollama has ``job``'s model (else another box's does)."""
        return canonical_model_name(job.model) in self._worker.residency.inventory.model_names

    def takes_at_submit(self, job: Job) -> bool:
        """Whether a job submitted at this box is queued here at once: its model
        is here, and no other live box runs it or holds it resident (as of the
        last look), unless it is this box's resident model too. Otherwise the
        look that the job's ``NOTIFY`` brings decides, as for any job of the
        fleet's queue: the box holding the model takes it, and it spreads here
        only when its queue pays. (Queued here at once, an idle box would start
        it, and load its model, before that look.)"""
        if not self.has_model_here(job):
            return False
        model = canonical_model_name(job.model)
        return model not in self.elsewhere or model == self._resident()

    def _busy_elsewhere(self, running: list[tuple[str | None, str]]) -> set[str]:
        busy = {
            canonical_model_name(model) for box, model in running if box not in (None, self._me)
        }
        for box in self.boxes:
            if box.alive and box.id != self._me and box.answering and box.resident:
                busy.add(canonical_model_name(box.resident))
        return busy

    def _may_take(self, job: Job, per_model: Counter[str], elsewhere: set[str]) -> bool:
        model = canonical_model_name(job.model)
        if model not in elsewhere or model == self._resident():
            return True
        return self._pays(model, per_model[model])

    def _pays(self, model: str, queued: int) -> bool:
        worker = self._worker
        work = queued * worker.average_job_seconds
        return work > SPREAD_LOADS * worker.costs.load_seconds(model)

    def _elsewhere_now(self, job_id: str, elsewhere: set[str]) -> bool:
        job = self._worker.scheduler.get(job_id)
        if job is None:
            return False
        model = canonical_model_name(job.model)
        return model in elsewhere and model != self._resident()

    def _resident(self) -> str | None:
        resident = self._worker.residency.worker_model
        return None if resident is None else canonical_model_name(resident)


def summary(worker: Worker) -> dict[str, Any]:
    """A box's queue in brief, for the fleet's views and for placing calls
    (ADR-0027): what runs, what waits here by model, the people's calls
    waiting, the average job time, and what a load of each model costs here."""
    current = worker.current
    models = worker.residency.inventory.model_names
    return {
        "running": None
        if current is None
        else {"id": current.id, "model": current.model, "state": current.state.value},
        "waiting": worker.scheduler.waiting_by_model(),
        "interactive_waiting": worker.scheduler.interactive_depth,
        "depth": worker.scheduler.depth,
        "activity": worker.activity.now,
        "average_job_seconds": round(worker.average_job_seconds, 3),
        "load_seconds": {
            name: round(worker.costs.load_seconds(name), 3) for name in sorted(models)
        },
        # Ollama's own entries, for the fleet's /api/tags, /v1/models and /api/ps.
        "tags": worker.residency.inventory.tags_entries,
        "ps": worker.residency.inventory.ps_entries,
    }
