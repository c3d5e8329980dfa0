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


#: A model called again within this long keeps the box it was placed on.
HOME_SECONDS = 60.0


class Homes:
    """Which box each model's calls go to, as this box placed them (ADR-0027).

    A model called through this box keeps going to the box its last call went
    to while it is called at least every :data:`HOME_SECONDS` and that box can
    take it: agents in closed loops then keep their models where they are
    loaded, instead of a model loading on one box and then another. A model
    without a home gets the box with the fewest models at home, then the
    soonest start (a box that holds it first, this box on a tie).
    """

    def __init__(self) -> None:
        self._homes: dict[str, tuple[str, float]] = {}

    def order(self, model: str, found: list[Candidate], now: float) -> list[Candidate]:
        """``found`` (soonest start first) with ``model``'s home first."""
        if not found:
            return found
        wanted = canonical_model_name(model)
        home = self._homes.get(wanted)
        chosen: Candidate | None = None
        if home is not None and now - home[1] <= HOME_SECONDS:
            chosen = next((c for c in found if c.id == home[0]), None)
        if chosen is None:
            active = self._active(now, other_than=wanted)
            chosen = min(found, key=lambda c: (active.get(c.id, 0), found.index(c)))
        self._homes[wanted] = (chosen.id, now)
        return [chosen, *(c for c in found if c is not chosen)]

    def _active(self, now: float, *, other_than: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for model, (box, at) in self._homes.items():
            if model != other_than and now - at <= HOME_SECONDS:
                counts[box] = counts.get(box, 0) + 1
        return counts
