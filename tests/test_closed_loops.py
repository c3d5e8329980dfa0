"""Agents in closed loops, in simulated time (ADR-0024).

Each agent calls its own model, waits for the whole answer, thinks for a
moment, and calls again: its next call is never queued when the worker
becomes free. Played against the real worker, store and residency
(:mod:`tests.scheduling_sim`) with the swap rule as shipped (rent or buy,
and the quantum) and with the rule before it (a fixed 250 ms grace, no
quantum), on the issue's three workloads, with its targets as assertions.
"""

from __future__ import annotations

import math
import tempfile
from collections import Counter
from pathlib import Path

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from foreman.queue.order import Policy
from foreman.wire.model_names import canonical_model_name
from foreman.wire.priority import Priority
from tests.scheduling_sim import MODELS, TOKENS_PER_SECOND, Arrival, Played, Run, play

SHIPPED = Policy()
#: The rule before: hold 250 ms for the resident model's next call, no quantum.
BEFORE = Policy(swap_quantum=0)
#: Half a second of answer at the simulator's rate.
ANSWER_TOKENS = 5


@attrs.frozen
class Loops:
    """What the agents got in ``seconds``."""

    calls: Counter[str]
    loads: int
    #: Each agent's longest wait for a call to start.
    longest_wait: dict[str, float]
    played: Played

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def share(self, model: str) -> float:
        return self.calls[model] / self.total


def agents(
    tmp_path: Path,
    count: int,
    think: float,
    load: float,
    seconds: float,
    *,
    shipped: bool = True,
    swap_grace: float | None = None,
    fresh: bool = False,
) -> Loops:
    models = MODELS[:count]
    # Each agent's first call a moment apart, as agents started by hand are.
    first = [
        Arrival(0.001 * (n + 1), model, Priority.INTERACTIVE, ANSWER_TOKENS)
        for n, model in enumerate(models)
    ]

    def call_again(played: Played, run: Run) -> list[Arrival]:
        assert run.finished_at is not None
        at = run.finished_at + think
        if at >= seconds:
            return []
        return [Arrival(at, run.model, Priority.INTERACTIVE, ANSWER_TOKENS)]

    played = play(
        tmp_path,
        first,
        SHIPPED if shipped else BEFORE,
        on_done=call_again,
        for_seconds=seconds,
        horizon=seconds + 120,
        load_seconds=load,
        swap_grace=swap_grace,
        learned_holds=shipped,
        fresh=fresh,
    )
    finished = [run for run in played.runs.values() if (run.finished_at or math.inf) <= seconds]
    calls = Counter(canonical_model_name(run.model) for run in finished)
    longest: dict[str, float] = {}
    for run in played.runs.values():
        model = canonical_model_name(run.model)
        start = run.started_at if run.started_at is not None else seconds
        longest[model] = max(longest.get(model, 0.0), min(start, seconds) - run.created_at)
    loads = sum(1 for run in played.started() if run.loaded and (run.started_at or 0) < seconds)
    return Loops(calls, loads, longest, played)


def names(count: int) -> list[str]:
    return [canonical_model_name(model) for model in MODELS[:count]]


# -- the three workloads ------------------------------------------------------


#: A foreman that has measured each model's load, and a new one that only
#: estimates them from their sizes (2-6 s here, for loads of 2-3 s).
KNOWN_OR_FRESH = pytest.mark.parametrize("fresh", [False, True], ids=["loads-known", "fresh"])


@KNOWN_OR_FRESH
def test_two_quick_agents_share_the_worker(tmp_path: Path, fresh: bool) -> None:
    # 2 agents, 0.2 s between calls, 3 s loads, 45 s.
    before = agents(tmp_path / "before", 2, think=0.2, load=3.0, seconds=45, shipped=False)
    shipped = agents(tmp_path / "shipped", 2, think=0.2, load=3.0, seconds=45, fresh=fresh)
    a, b = names(2)
    # Before: the first agent kept the model, the other waited the whole time.
    assert min(before.share(a), before.share(b)) < 0.1
    assert max(before.longest_wait.values()) > 40
    # Now: each gets at least 30 % of the calls, nobody waits more than 20 s,
    # and at least twice the calls of a straight connection (a load a call:
    # 45 s / 3.5 s, about 13).
    assert min(shipped.share(a), shipped.share(b)) >= 0.3, shipped.calls
    assert max(shipped.longest_wait.values()) <= 20, shipped.longest_wait
    assert shipped.total >= 2 * 13, shipped.calls


@KNOWN_OR_FRESH
def test_three_slower_agents_no_longer_pay_a_load_a_call(tmp_path: Path, fresh: bool) -> None:
    # 3 agents, 1 s between calls, 2 s loads, 45 s.
    before = agents(tmp_path / "before", 3, think=1.0, load=2.0, seconds=45, shipped=False)
    shipped = agents(tmp_path / "shipped", 3, think=1.0, load=2.0, seconds=45, fresh=fresh)
    # Before: the grace (250 ms) never caught a caller back, a load a call.
    assert before.loads >= before.total - 1
    # Now: at most one load per three calls, each agent at least 20 %, nobody
    # waits more than 30 s, at least as many calls as straight to Ollama (20).
    assert shipped.loads * 3 <= shipped.total, (shipped.loads, shipped.calls)
    # Counted as the benchmark does: every call started in the 45 s, every load
    # made for them (the last calls' too, answered after the end).
    every_load = sum(1 for run in shipped.played.started() if run.loaded)
    assert every_load * 3 <= len(shipped.played.runs), (every_load, len(shipped.played.runs))
    assert min(shipped.share(model) for model in names(3)) >= 0.2, shipped.calls
    assert max(shipped.longest_wait.values()) <= 30, shipped.longest_wait
    assert shipped.total >= 20, shipped.calls


@KNOWN_OR_FRESH
def test_a_long_grace_no_longer_starves_the_others(tmp_path: Path, fresh: bool) -> None:
    # 3 agents, 1 s between calls, 2 s loads, --swap-grace 2s, 40 s.
    before = agents(
        tmp_path / "before", 3, think=1.0, load=2.0, seconds=40, shipped=False, swap_grace=2.0
    )
    shipped = agents(
        tmp_path / "shipped", 3, think=1.0, load=2.0, seconds=40, swap_grace=2.0, fresh=fresh
    )
    assert min(before.share(model) for model in names(3)) < 0.1  # 26 / 1 / 1
    assert min(shipped.share(model) for model in names(3)) >= 0.2, shipped.calls
    assert max(shipped.longest_wait.values()) <= 30, shipped.longest_wait


def test_agents_slow_to_come_back_get_no_hold(tmp_path: Path) -> None:
    # 10 s between calls, 2 s loads: holding for them would cost more than
    # loading their model back, so the worker swaps at once once it knows.
    loops = agents(tmp_path, 2, think=10.0, load=2.0, seconds=120)
    hold = loops.played.rig.worker.hold
    assert hold.holds <= 2  # only while their gaps were not known yet
    assert loops.played.rig.worker.costs.expected_gap(MODELS[0]) == pytest.approx(10.0, abs=0.1)


# -- properties over random agents ----------------------------------------------------

EXAMPLES = settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@attrs.frozen
class Agent:
    model: str
    think: float
    tokens: int
    starts_at: float


agent = st.builds(
    Agent,
    model=st.sampled_from(MODELS),
    think=st.sampled_from([0.1, 0.3, 1.0, 3.0, 8.0]),
    tokens=st.integers(2, 30),
    starts_at=st.integers(0, 5000).map(lambda ms: ms / 1000),
)


def play_agents(crowd: list[Agent], seconds: float = 30.0) -> Played:
    first = [
        Arrival(each.starts_at + (index + 1) * 1e-6, each.model, Priority.INTERACTIVE, each.tokens)
        for index, each in enumerate(crowd)
    ]
    by_model: dict[str, list[Agent]] = {}
    for each in crowd:
        by_model.setdefault(each.model, []).append(each)

    def call_again(played: Played, run: Run) -> list[Arrival]:
        # The agent whose call this was: agents of one model take turns.
        mine = by_model[run.model][len(played.runs) % len(by_model[run.model])]
        assert run.finished_at is not None
        at = run.finished_at + mine.think
        return [] if at >= seconds else [Arrival(at, run.model, run.priority, mine.tokens)]

    with tempfile.TemporaryDirectory() as directory:
        return play(
            Path(directory),
            first,
            SHIPPED,
            on_done=call_again,
            for_seconds=seconds,
            horizon=seconds + 600,
        )


@EXAMPLES
@given(st.lists(agent, min_size=2, max_size=5))
def test_the_resident_model_overtakes_for_no_longer_than_its_quantum(crowd: list[Agent]) -> None:
    played = play_agents(crowd)
    costs = played.rig.worker.costs
    started = played.started()
    # When each model's run began: its load done, its first job generating.
    run_began: dict[str, float] = {}
    current: str | None = None
    began = 0.0
    for run in started:
        assert run.started_at is not None
        if run.model != current:
            current = run.model
            began = run.started_at
            if run.loaded and run.finished_at is not None:
                began = run.finished_at - run.tokens / TOKENS_PER_SECOND
        run_began[run.id] = began
    for run in started:
        assert run.started_at is not None
        for other in played.runs.values():
            waiting = other.created_at < run.started_at and (
                other.started_at is None or other.started_at > run.started_at
            )
            if not waiting or other.model == run.model or run.created_at <= other.created_at:
                continue
            # ``run`` overtook ``other``: within the quantum of other's model.
            quantum = SHIPPED.swap_quantum * costs.load_seconds(other.model)
            used = run.started_at - max(run_began[run.id], other.created_at)
            assert used < quantum + 1e-6, (run, other, used, quantum)


@EXAMPLES
@given(st.lists(agent, min_size=1, max_size=5))
def test_a_hold_never_lasts_longer_than_the_load_it_may_save(crowd: list[Agent]) -> None:
    played = play_agents(crowd)
    for holding in played.rig.worker.hold.recent:
        assert holding.until - holding.since <= holding.cost + 1e-9, holding


@EXAMPLES
@given(
    st.lists(agent.map(lambda each: attrs.evolve(each, model=MODELS[0])), min_size=1, max_size=4)
)
def test_one_busy_model_never_swaps_nor_holds(crowd: list[Agent]) -> None:
    played = play_agents(crowd)
    assert played.loads == 1
    assert played.rig.worker.hold.holds == 0


def test_answers_take_what_the_simulator_says() -> None:
    # The workloads above count on half a second per answer.
    assert ANSWER_TOKENS / TOKENS_PER_SECOND == 0.5
