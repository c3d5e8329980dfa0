"""Where a sync call should run in a fleet: the box where it starts soonest (ADR-0027).

What each box published with its heartbeat (:mod:`foreman.queue.fleet.share`'s
summary: its resident model, the people's calls waiting there, whether it is
running, its average job time and what a load of each model costs it) makes an
estimate of when a call would start there: the interactive work ahead of it,
plus a load when the box does not hold the model. The call goes to the box
with the earliest start; on a tie, one that holds the model, then this box.
Boxes that are gone, whose Ollama does not answer, that lack the model or that
others cannot reach are not candidates; with none left, the call stays here
(and gets Ollama's own answer, a ``404`` for a model it lacks).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from foreman.wire.model_names import canonical_model_name

#: A running job is taken to be this far through, on average.
RUNNING_LEFT = 0.5
#: What a load costs when a box did not say (a mid-sized model on a Mac).
UNKNOWN_LOAD_SECONDS = 5.0


@attrs.frozen
class Candidate:
    """A box as placement sees it."""

    id: str
    url: str | None
    this: bool
    resident: str | None
    #: Seconds of people's work ahead of a new call there.
    wait_seconds: float
    #: What loading the model would cost there (0 when it holds it).
    load_seconds: float

    @property
    def start_seconds(self) -> float:
        return self.wait_seconds + self.load_seconds


def candidates(model: str, boxes: Iterable[Mapping[str, Any]]) -> list[Candidate]:
    """The boxes that could run a call for ``model``, soonest start first.

    ``boxes`` are the queue report's ``boxes`` (:meth:`FleetMember.report`):
    this box is always usable if it has the model; another box only while
    alive, answering and reachable.
    """
    wanted = canonical_model_name(model)
    found = []
    for box in boxes:
        models = {canonical_model_name(name) for name in box.get("models", ())}
        if wanted not in models:
            continue
        this = bool(box.get("this"))
        if not this and not (box.get("alive") and box.get("answering") and box.get("url")):
            continue
        found.append(_candidate(wanted, box, this))
    return sorted(found, key=lambda c: (round(c.start_seconds, 3), c.load_seconds > 0, not c.this))


def _candidate(model: str, box: Mapping[str, Any], this: bool) -> Candidate:
    resident = box.get("resident")
    holds = resident is not None and canonical_model_name(resident) == model
    job_seconds = float(box.get("average_job_seconds") or 0.0)
    ahead = float(box.get("interactive_waiting") or 0)
    if box.get("running"):
        ahead += RUNNING_LEFT
    loads: Mapping[str, float] = box.get("load_seconds") or {}
    load = 0.0 if holds else float(loads.get(model, UNKNOWN_LOAD_SECONDS))
    return Candidate(
        id=str(box.get("id")),
        url=box.get("url"),
        this=this,
        resident=resident,
        wait_seconds=ahead * job_seconds,
        load_seconds=load,
    )
