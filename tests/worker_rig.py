"""The queue's parts wired in memory: simulated Ollama, a real store, a Clock.

The store is a new SQLite file in the rig's directory, unless a test says
otherwise (``database``), or runs on each engine (``rigs_on_each_engine``,
which makes :data:`default_database` the test's ``store_engine``).

Nothing here touches a socket or a thread, so the worker's scheduling,
residency, retries and backoff run in simulated time and are deterministic.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import attrs
from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseNeverReceived
from twisted.web.iweb import IAgent, IRequest
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer

from foreman.queue.costs import ModelCosts
from foreman.queue.engines import Engine
from foreman.queue.job import Job, JobState
from foreman.queue.lifecycle import recover_queue
from foreman.queue.order import Policy
from foreman.queue.residency import Residency
from foreman.queue.runners import Runner, inline_runner
from foreman.queue.scheduler import Scheduler
from foreman.queue.store import JobStore
from foreman.queue.ulid import new_ulid
from foreman.queue.worker import Worker
from foreman.relay.forward import Relay
from foreman.relay.generation import GenerationCall
from foreman.relay.inventory import Inventory
from foreman.relay.upstream import BytesBodyProducer, Target
from foreman.testing import DEFAULT_MODELS, SimulatedOllama
from foreman.wire.clocks import Clocks
from foreman.wire.model_names import canonical_model_name
from foreman.wire.priority import Priority

#: Where a rig keeps its store when not told (``None``: a file in its directory).
default_database: Engine | None = None
#: Every rig's store, while a test on each engine runs: closed at its end.
made_stores: list[JobStore] | None = None

#: The calls that generate (a job's own call, or a load); metadata calls are GETs.
_GENERATION_PATHS = (b"/api/chat", b"/api/generate", b"/v1/")


def fired(deferred: Deferred[Any]) -> Any:
    """The result of a Deferred that has fired already (simulated time, inline store)."""
    outcome: list[Any] = []
    deferred.addBoth(outcome.append)
    assert outcome, "not fired yet"
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


def sync_call(
    rig: WorkerRig, marker: str, model: str = "llama3.2"
) -> tuple[Deferred[None], DummyRequest]:
    """A caller waiting on a native chat call (a whole reply: DummyRequest
    cannot take a streamed one, which needs a push producer)."""
    message = {"role": "user", "content": marker}
    body = json.dumps({"model": model, "messages": [message], "stream": False})
    request = DummyRequest([b"api", b"chat"])
    request.path = request.uri = b"/api/chat"  # type: ignore[attr-defined]
    call = GenerationCall("chat", model, body.encode(), False)
    return rig.worker.run(call, cast(IRequest, request)), request


@implementer(IAgent)
class FlakyAgent:
    """An agent whose target can be switched off, as a sleeping laptop is.

    ``down``: every call is refused, metadata polls included (an outage).
    ``refuse_generations``: only generation calls are refused, while the
    target still answers its polls (a fault of the job's own calls).
    """

    def __init__(self, inner: RequestTraversalAgent) -> None:
        self.inner = inner
        self.down = False
        self.refuse_generations = False
        self.refused = 0
        #: Calls to URLs for which this says yes are accepted and never
        #: answered, as by a target stopped with SIGSTOP.
        self.hangs: Callable[[bytes], bool] = lambda uri: False

    def request(self, method: bytes, uri: bytes, headers: Any = None, body: Any = None) -> Any:
        path = b"/" + uri.split(b"/", 3)[-1] if uri.count(b"/") >= 3 else uri
        generation = method == b"POST" and path.startswith(_GENERATION_PATHS)
        if self.down or (self.refuse_generations and generation):
            self.refused += 1
            return fail(ConnectionRefusedError("the target is down"))
        if self.hangs(uri):
            return Deferred(_cancelled_awaiting_reply)
        return self.inner.request(method, uri, headers, body)


def _cancelled_awaiting_reply(hung: Deferred[Any]) -> None:
    # What twisted.web's Agent reports for a call cancelled while it waits
    # for the reply's headers.
    hung.errback(ResponseNeverReceived([Failure(CancelledError())]))


@attrs.define
class WorkerRig:
    clock: Clock
    sim: SimulatedOllama
    agent: FlakyAgent
    store: JobStore
    worker: Worker
    inventory: Inventory

    def flush(self) -> None:
        self.agent.inner.flush()

    def run_until(
        self, condition: Callable[[], bool], *, step: float = 0.05, limit: float = 600.0
    ) -> float:
        """Advance simulated time until ``condition`` holds; return the time taken."""
        start = self.clock.seconds()
        while not condition():
            self.flush()
            if condition():
                break
            if self.clock.seconds() - start > limit:
                raise AssertionError(f"not reached within {limit} simulated seconds")
            self.clock.advance(step)
        return self.clock.seconds() - start

    def submit(
        self,
        model: str,
        marker: str,
        endpoint: str = "chat",
        priority: Priority = Priority.INTERACTIVE,
    ) -> Deferred[Job]:
        now = self.worker.clocks.wall()
        if endpoint == "chat":
            body: dict[str, Any] = {
                "model": model,
                "messages": [{"role": "user", "content": marker}],
            }
        else:
            body = {"model": model, "prompt": marker}
        job = Job(
            id=new_ulid(now),
            model=model,
            endpoint="chat" if endpoint == "chat" else "generate",
            body=json.dumps(body).encode(),
            sync=False,
            created_at=now,
            updated_at=now,
            priority=priority,
        )
        return self.worker.submit(job)

    def load_behind_foremans_back(self, model: str) -> None:
        """Another client loads ``model`` straight on the target."""
        body = BytesBodyProducer(json.dumps({"model": model}).encode())
        self.agent.inner.request(b"POST", b"http://ollama.test/api/generate", None, body)
        self.run_until(lambda: model in self.sim.loaded_models())

    def jobs(self) -> list[Job]:
        rows = self.store._db.execute("SELECT id FROM jobs ORDER BY id").fetchall()
        found = [self.store.get(row[0]) for row in rows]
        return [job for job in (d.result for d in found) if isinstance(job, Job)]

    def all_finished(self) -> bool:
        return all(job.state.terminal for job in self.jobs())

    def generation_markers(self) -> list[str]:
        """The user text of every generation call the simulator received, in order."""
        markers = []
        for request in self.sim.requests:
            if request.path in ("/api/chat", "/api/generate"):
                body = json.loads(request.body)
                text = body.get("prompt") or (body.get("messages") or [{}])[-1].get("content")
                if text:
                    markers.append(text)
        return markers

    def stop(self) -> None:
        self.worker.stopService()
        self.flush()
        self.sim.shutdown()


def make_worker_rig(
    tmp_path: Path,
    *,
    max_attempts: int = 3,
    max_queue: int = 256,
    embed_model: str | None = None,
    database: Path | Engine | None = None,
    runner: Runner[Any] = inline_runner,
    start_at: float = 0.0,
    prepare: Callable[[WorkerRig], object] | None = None,
    policy: Policy | None = None,
    swap_grace: float | None = 0.25,
    caller_wait: float = 30.0,
    known_loads: dict[str, float] | None = None,
    learned_holds: bool = True,
    store_class: type[JobStore] = JobStore,
    wall: Callable[[], float] | None = None,
    relay_limits: dict[str, float] | None = None,
    box: str | None = None,
    **sim_options: Any,
) -> WorkerRig:
    """The rig, its store on ``database`` (a new file in ``tmp_path`` by default)
    recovered as foreman's start-up does, after ``prepare(rig)`` (to add what
    should record or hear recovery's transitions). With ``relay_limits``
    (``load_timeout``, ``stall_timeout``) the relay times Ollama's silence.
    With ``wall``, the worker and the inventory stamp with it, and schedule on
    the ``Clock``: a test can step the wall clock alone."""
    clock = Clock()
    clock.advance(start_at)
    sim_options.setdefault("check_host", False)
    load_seconds = sim_options.pop("load_seconds", None)
    if load_seconds is not None:
        sim_options["models"] = [
            attrs.evolve(model, load_seconds=load_seconds) for model in DEFAULT_MODELS
        ]
    sim = SimulatedOllama(clock, **sim_options)
    agent = FlakyAgent(RequestTraversalAgent(sim.resource()))
    target = Target("http://ollama.test")
    relay = (
        Relay(agent, target)
        if relay_limits is None
        else Relay(agent, target, clock=clock, **relay_limits)
    )
    inventory = Inventory(HTTPClient(agent), target, clock, wall=wall)
    store = store_class(database or default_database or tmp_path / "jobs.sqlite3", runner, box=box)
    if made_stores is not None:
        made_stores.append(store)
    residency = Residency(relay, inventory, embed_model=embed_model)
    worker = Worker(
        store,
        Scheduler(max_queue, policy),
        residency,
        relay,
        clock,
        max_attempts=max_attempts,
        swap_grace=swap_grace,
        clocks=Clocks(clock, wall),
        caller_wait=caller_wait,
        learned_holds=learned_holds,
        costs=ModelCosts(
            inventory.model_sizes,
            known={
                canonical_model_name(model): (seconds, 1)
                for model, seconds in (known_loads or {}).items()
            },
        ),
    )
    rig = WorkerRig(clock, sim, agent, store, worker, inventory)
    if prepare is not None:
        prepare(rig)
    recover_queue(store, worker, worker.clocks.wall())
    inventory.refresh()
    rig.flush()
    return rig


__all__ = ["DEFAULT_MODELS", "JobState", "WorkerRig", "fired", "make_worker_rig", "sync_call"]
