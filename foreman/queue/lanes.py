"""The queue's ready jobs by class and model, kept between choices (ADR-0028).

Each class's ready jobs are kept by key (:class:`KeyedLane`, ADR-0030), a
lane per key. The order (:mod:`foreman.queue.order`) asks three questions of
a class's (or a few keys') ready jobs: the oldest, the oldest for a model,
the oldest for any model but one.
A :class:`Lane` answers each from heaps kept as jobs come and go, so choosing
the next job costs O(log n) however deep the queue is, not a pass over every
job. Removal is lazy: an entry counts while its job's live token is the
entry's own, so a job taken out and queued again is never seen twice.

A plan (positions, the queue report) looks ahead without changing the
queue: :class:`PlannedLane` walks the same heaps in order without popping
them, noting what the plan has taken, so the first k jobs of a plan cost
about k log k, not the whole queue.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Protocol

from foreman.queue.job import Job
from foreman.wire.model_names import canonical_model_name

#: (arrival, id, token, job): ordered by arrival, ties by id; ids are unique.
Entry = tuple[float, str, int, Job]

#: Heaps are rebuilt once dead entries outnumber live ones by this much.
COMPACT_FACTOR = 2
COMPACT_MINIMUM = 256


def arrival(job: Job) -> tuple[float, str]:
    """Arrival order: creation time, ties by id (ids are ULIDs)."""
    return (job.created_at, job.id)


def _earliest(*jobs: Job | None) -> Job | None:
    return min((job for job in jobs if job is not None), key=arrival, default=None)


class Ready(Protocol):
    """One class's (or one key's) ready jobs, as the order reads them."""

    @property
    def size(self) -> int: ...

    def oldest(self) -> Job | None: ...

    def oldest_for(self, model: str | None) -> Job | None: ...

    def oldest_other(self, model: str | None) -> Job | None: ...

    def add(self, job: Job) -> None: ...

    def take(self, job: Job) -> None: ...


class Lane:
    """One class's ready jobs: heaps of all and per model, lazily pruned."""

    def __init__(self) -> None:
        self._all: list[Entry] = []
        self._by_model: dict[str, list[Entry]] = {}
        self._live: dict[str, int] = {}
        self._tokens = 0
        self.size = 0

    def add(self, job: Job) -> None:
        self.take(job)
        self._tokens += 1
        entry = (job.created_at, job.id, self._tokens, job)
        self._live[job.id] = self._tokens
        heapq.heappush(self._all, entry)
        heapq.heappush(self._by_model.setdefault(canonical_model_name(job.model), []), entry)
        self.size += 1

    def take(self, job: Job) -> None:
        if self._live.pop(job.id, None) is not None:
            self.size -= 1
            if len(self._all) > COMPACT_FACTOR * self.size + COMPACT_MINIMUM:
                self._compact()

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._live

    def oldest(self) -> Job | None:
        return self._head(self._all)

    def oldest_for(self, model: str | None) -> Job | None:
        if model is None:
            return None
        heap = self._by_model.get(model)
        return None if heap is None else self._head(heap)

    def oldest_other(self, model: str | None) -> Job | None:
        """The oldest job for any model but ``model``."""
        return _earliest(
            *(self._head(heap) for name, heap in self._by_model.items() if name != model)
        )

    def valid(self, entry: Entry) -> bool:
        return self._live.get(entry[1]) == entry[2]

    def heaps(self) -> tuple[list[Entry], dict[str, list[Entry]]]:
        return self._all, self._by_model

    def planned(self) -> PlannedLane:
        """A view of this lane for a plan, which leaves the lane as it is."""
        return PlannedLane(self)

    def _head(self, heap: list[Entry]) -> Job | None:
        while heap and self._live.get(heap[0][1]) != heap[0][2]:
            heapq.heappop(heap)
        return heap[0][3] if heap else None

    def _compact(self) -> None:
        self._all = [entry for entry in self._all if self.valid(entry)]
        heapq.heapify(self._all)
        for model, heap in list(self._by_model.items()):
            kept = [entry for entry in heap if self.valid(entry)]
            if kept:
                heapq.heapify(kept)
                self._by_model[model] = kept
            else:
                del self._by_model[model]


class _Walk:
    """A heap's valid entries in order, without popping it: a frontier of
    indices (a heap's children are never smaller than their parent)."""

    def __init__(self, heap: list[Entry], valid: Callable[[Entry], bool]) -> None:
        self._heap = heap
        self._valid = valid
        self._frontier: list[tuple[float, str, int]] = []
        if heap:
            self._frontier.append((heap[0][0], heap[0][1], 0))

    def head(self) -> Job | None:
        heap, frontier = self._heap, self._frontier
        while frontier:
            index = frontier[0][2]
            entry = heap[index]
            if self._valid(entry):
                return entry[3]
            heapq.heappop(frontier)
            for child in (2 * index + 1, 2 * index + 2):
                if child < len(heap):
                    below = heap[child]
                    heapq.heappush(frontier, (below[0], below[1], child))
        return None


class PlannedLane:
    """A :class:`Lane` as a plan sees it: what the plan takes is only noted,
    and jobs that become ready during the plan join a small lane of their own."""

    def __init__(self, lane: Lane) -> None:
        self._lane = lane
        self._taken: set[str] = set()
        self._joined = Lane()
        self._walks: dict[str | None, _Walk] = {}
        self.size = lane.size

    def add(self, job: Job) -> None:
        self._joined.add(job)
        self.size += 1

    def take(self, job: Job) -> None:
        if job.id in self._joined:
            self._joined.take(job)
        else:
            self._taken.add(job.id)
        self.size -= 1

    def oldest(self) -> Job | None:
        return _earliest(self._walk(None).head(), self._joined.oldest())

    def oldest_for(self, model: str | None) -> Job | None:
        if model is None:
            return None
        return _earliest(self._walk(model).head(), self._joined.oldest_for(model))

    def oldest_other(self, model: str | None) -> Job | None:
        _, by_model = self._lane.heaps()
        heads = (self._walk(name).head() for name in by_model if name != model)
        return _earliest(*heads, self._joined.oldest_other(model))

    def _valid(self, entry: Entry) -> bool:
        return self._lane.valid(entry) and entry[1] not in self._taken

    def _walk(self, model: str | None) -> _Walk:
        walk = self._walks.get(model)
        if walk is None:
            everything, by_model = self._lane.heaps()
            heap = everything if model is None else by_model.get(model, [])
            walk = self._walks[model] = _Walk(heap, self._valid)
        return walk


class KeyedLane:
    """One class's ready jobs by key (ADR-0030): a lane per key with jobs.

    The three questions are asked of every key's lane at once, or, through
    :meth:`among`, of the keys whose turn it is; with one key, the answers
    are that key's lane's own.
    """

    def __init__(self, parts: dict[str | None, Ready] | None = None) -> None:
        self._parts: dict[str | None, Ready] = parts or {}

    @property
    def size(self) -> int:
        return sum(part.size for part in self._parts.values())

    def callers(self) -> list[str | None]:
        """The keys with jobs here."""
        return list(self._parts)

    def among(self, callers: list[str | None]) -> KeyedLane:
        """A view of the jobs of ``callers`` only (read it, do not change it)."""
        if len(callers) == len(self._parts):
            return self
        return KeyedLane({caller: self._parts[caller] for caller in callers})

    def add(self, job: Job) -> None:
        part = self._parts.get(job.caller)
        if part is None:
            part = self._parts[job.caller] = Lane()
        part.add(job)

    def take(self, job: Job) -> None:
        part = self._parts.get(job.caller)
        if part is not None:
            part.take(job)
            if part.size == 0:
                del self._parts[job.caller]

    def oldest(self) -> Job | None:
        return _earliest(*(part.oldest() for part in self._parts.values()))

    def oldest_for(self, model: str | None) -> Job | None:
        return _earliest(*(part.oldest_for(model) for part in self._parts.values()))

    def oldest_other(self, model: str | None) -> Job | None:
        return _earliest(*(part.oldest_other(model) for part in self._parts.values()))

    def planned(self) -> KeyedLane:
        """A view of these lanes for a plan, which leaves them as they are."""
        return KeyedLane(
            {
                caller: part.planned()
                for caller, part in self._parts.items()
                if isinstance(part, Lane)
            }
        )
