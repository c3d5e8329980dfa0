"""What foreman learns of each model: what a load costs, how soon its callers come back.

(ADR-0024.)

**A load's cost** is measured on every load the worker makes (the time
making the model resident took, the unload of the model before it included:
that is what a swap costs the queue), smoothed, and kept in the store so a
restart does not forget it. Before the first measurement it is estimated
from the model's size (``/api/tags``): a Mac reads weights at roughly
1.5 GB/s, plus half a second to start a runner. An estimate is never longer
than the longest load measured on this box (nor, for that cap, shorter than
half a second): a guess then errs towards the
callers waiting for the model (a shorter quantum for the model before it, a
shorter hold), and the model's first load corrects it.

**The gap** is how long a model's callers take to come back: from the end of
a job for the model to the arrival of the next call for it, counted only when
nothing else for the model was waiting or running (a closed loop: an agent
reads the answer, runs a tool, sends the next call). The last few gaps make
the expectation, an upper quartile, so that most next calls come within it.

Times are on the reactor's clock.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping

import attrs

from foreman.wire.model_names import canonical_model_name

#: Before any measurement, and without a size: a load of a mid-sized model on a Mac.
DEFAULT_LOAD_SECONDS = 5.0
#: Starting a runner, before any weights are read.
LOAD_BASE_SECONDS = 0.5
#: How fast a Mac reads weights into memory, for the first estimate.
LOAD_BYTES_PER_SECOND = 1.5e9
#: The weight of a new measurement in the smoothed load time.
SMOOTHING = 0.3
#: Gaps kept per model.
HISTORY = 8

#: Told of every new measurement: (model, smoothed seconds, measurements so far).
Remember = Callable[[str, float, int], object]


@attrs.frozen
class LoadCost:
    model: str
    seconds: float
    #: How many loads were measured (0: an estimate).
    samples: int


class ModelCosts:
    def __init__(
        self,
        sizes: Callable[[], Mapping[str, int]] | None = None,
        *,
        remember: Remember | None = None,
        known: Mapping[str, tuple[float, int]] | None = None,
    ) -> None:
        self._sizes = sizes or dict
        self._remember = remember
        #: Measured, smoothed load seconds and how many loads made them.
        self._loads: dict[str, tuple[float, int]] = dict(known or {})
        self._gaps: dict[str, deque[float]] = {}
        #: When the last job of each model ended, while a gap may follow.
        self._ended_at: dict[str, float] = {}
        #: Models whose last gap is a stand-in (a missed hold) for the real one.
        self._standing_in: set[str] = set()

    # -- loads ---------------------------------------------------------------------

    def load_seconds(self, model: str) -> float:
        """What loading ``model`` costs, measured or estimated."""
        return self.load_cost(model).seconds

    def load_cost(self, model: str) -> LoadCost:
        name = canonical_model_name(model)
        measured = self._loads.get(name)
        if measured is not None:
            return LoadCost(name, measured[0], measured[1])
        size = self._sizes().get(name)
        estimate = (
            LOAD_BASE_SECONDS + size / LOAD_BYTES_PER_SECOND if size else DEFAULT_LOAD_SECONDS
        )
        if self._loads:
            # A box whose loads were all near-instant (models Ollama already
            # held) says little of a real load: half a second at least.
            longest = max(seconds for seconds, _ in self._loads.values())
            estimate = min(estimate, max(LOAD_BASE_SECONDS, longest))
        return LoadCost(name, estimate, 0)

    def loaded(self, model: str, seconds: float) -> None:
        """A load of ``model`` took ``seconds``."""
        if not (math.isfinite(seconds) and seconds >= 0):
            return
        name = canonical_model_name(model)
        previous = self._loads.get(name)
        if previous is None:
            smoothed, samples = seconds, 1
        else:
            smoothed = (1 - SMOOTHING) * previous[0] + SMOOTHING * seconds
            samples = previous[1] + 1
        self._loads[name] = (smoothed, samples)
        if self._remember is not None:
            self._remember(name, smoothed, samples)

    def remembered(self, known: Mapping[str, tuple[float, int]]) -> None:
        """What an earlier process measured (its smoothed seconds and load count)."""
        for model, measured in known.items():
            self._loads.setdefault(canonical_model_name(model), measured)

    def known(self) -> list[LoadCost]:
        """Every model with a measured load, by name."""
        return [self.load_cost(name) for name in sorted(self._loads)]

    # -- gaps ----------------------------------------------------------------------

    def job_ended(self, model: str, now: float) -> None:
        self._ended_at[canonical_model_name(model)] = now

    def arrived(self, model: str, now: float, *, others_pending: bool) -> None:
        """A call for ``model`` arrived at ``now``; ``others_pending``: another
        call for it was waiting or running (then this is no closed loop)."""
        name = canonical_model_name(model)
        ended = self._ended_at.pop(name, None)
        standing_in = name in self._standing_in
        self._standing_in.discard(name)
        if ended is None or others_pending:
            return
        if standing_in:
            self._gaps[name].pop()  # the real gap replaces the missed hold's guess
        self._record(name, max(0.0, now - ended))

    def missed(self, model: str, held: float) -> None:
        """A hold of ``held`` seconds for ``model`` ended with no call: its
        callers take longer than that. Twice as long stands in until the
        late call tells how long they do take."""
        name = canonical_model_name(model)
        if name in self._standing_in:
            self._gaps[name].pop()
        self._record(name, 2 * held)
        self._standing_in.add(name)

    def expected_gap(self, model: str) -> float | None:
        """How soon ``model``'s next call is likely to come (an upper
        quartile of its recent gaps); ``None`` before any is known."""
        gaps = self._gaps.get(canonical_model_name(model))
        if not gaps:
            return None
        ordered = sorted(gaps)
        return ordered[min(len(ordered) - 1, math.ceil(0.75 * len(ordered)) - 1)]

    def _record(self, name: str, gap: float) -> None:
        self._gaps.setdefault(name, deque(maxlen=HISTORY)).append(gap)
