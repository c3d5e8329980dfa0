"""``shared_bandwidth``: generations on one GPU share its token rate, in simulated time."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from foreman.testing import SimulatedOllama
from foreman.testing.__main__ import build_simulator, parse_args
from tests.test_simulated_ollama import Wire, chat_body
from tests.test_simulated_ollama_residency import done, run_for, start

# Three models that do not think, so every reply is exactly ``reply_tokens`` tokens.
LLAMA = chat_body("llama3.2", stream=False)
QWEN = chat_body("qwen3:8b", think=False, stream=False)
GEMMA = chat_body("gemma3:12b", stream=False)


def shared(clock: Clock, *, reply_tokens: int = 12, num_parallel: int = 1) -> SimulatedOllama:
    return SimulatedOllama(
        clock,
        tokens_per_second=10,
        shared_bandwidth=True,
        reply_tokens=reply_tokens,
        num_parallel=num_parallel,
    )


def eval_seconds(wire: Wire) -> float:
    seconds: float = done(wire).json()["eval_duration"] / 1e9
    return seconds


def test_off_by_default_two_models_each_at_full_speed() -> None:
    clock = Clock()
    sim = SimulatedOllama(clock, tokens_per_second=10)
    assert sim.shared_bandwidth is False
    wires = [start(sim, clock, "/api/chat", body) for body in (LLAMA, QWEN)]
    run_for(clock, 1.2)
    assert [eval_seconds(w) for w in wires] == [1.2, 1.2]


def test_one_generation_alone_is_unchanged() -> None:
    clock = Clock()
    sim = shared(clock)
    wire = start(sim, clock, "/api/chat", LLAMA)
    run_for(clock, 1.15)
    assert wire.reply() is None
    run_for(clock, 0.05)
    assert eval_seconds(wire) == pytest.approx(1.2)


def test_two_models_at_once_each_take_twice_as_long() -> None:
    clock = Clock()
    sim = shared(clock)
    wires = [start(sim, clock, "/api/chat", body) for body in (LLAMA, QWEN)]
    run_for(clock, 2.35)
    assert [w.reply() for w in wires] == [None, None]
    assert sim.active_generations == 2
    run_for(clock, 0.05)
    assert [eval_seconds(w) for w in wires] == [pytest.approx(2.4)] * 2
    assert sim.max_active_generations == 2 and sim.completed_generations == 2


def test_three_at_once_each_get_a_third() -> None:
    clock = Clock()
    sim = shared(clock, reply_tokens=6)
    wires = [start(sim, clock, "/api/chat", body) for body in (LLAMA, QWEN, GEMMA)]
    run_for(clock, 1.75)
    assert all(w.reply() is None for w in wires)
    run_for(clock, 0.05)
    assert [eval_seconds(w) for w in wires] == [pytest.approx(1.8)] * 3


def test_the_rate_is_re_divided_as_generations_start_and_end() -> None:
    clock = Clock()
    sim = shared(clock)
    first = start(sim, clock, "/api/chat", LLAMA)
    run_for(clock, 0.6)  # 6 of 12 tokens alone
    second = start(sim, clock, "/api/chat", QWEN)
    # Now 5 tokens/s each: the first's last 6 take 1.2 s, to 1.8 s; the
    # second then has 6 of its 12 and makes the rest alone in 0.6 s, to 2.4 s.
    run_for(clock, 1.15)
    assert first.reply() is None
    run_for(clock, 0.05)
    assert eval_seconds(first) == pytest.approx(1.8)
    assert second.reply() is None
    run_for(clock, 0.55)
    assert second.reply() is None
    run_for(clock, 0.05)
    assert eval_seconds(second) == pytest.approx(1.8)


def test_a_client_that_leaves_gives_its_share_back() -> None:
    clock = Clock()
    sim = shared(clock)
    staying = start(sim, clock, "/api/chat", chat_body("llama3.2"))
    leaving = start(sim, clock, "/api/chat", chat_body("qwen3:8b", think=False))
    run_for(clock, 0.6)  # 3 tokens each
    reply = staying.reply()
    assert reply is not None and len(reply.lines()) == 3
    leaving.disconnect()
    run_for(clock, 0.85)  # 9 more alone: 0.9 s
    assert not done_yet(staying)
    run_for(clock, 0.05)
    final = done(staying).lines()[-1]
    assert final["eval_count"] == 12 and final["eval_duration"] == pytest.approx(1.5e9, abs=1e3)
    assert (sim.cancelled_requests, sim.active_generations) == (1, 0)


def test_requests_for_one_model_share_it_too() -> None:
    clock = Clock()
    sim = shared(clock, num_parallel=2)
    wires = [start(sim, clock, "/api/chat", LLAMA) for _ in range(2)]
    run_for(clock, 2.4)
    assert [eval_seconds(w) for w in wires] == [pytest.approx(2.4)] * 2


def test_embeddings_take_no_share() -> None:
    clock = Clock()
    sim = shared(clock)
    wire = start(sim, clock, "/api/chat", LLAMA)
    embedding = start(sim, clock, "/api/embed", {"model": "all-minilm", "input": "x"})
    assert done(embedding).status == 200
    run_for(clock, 1.2)
    assert eval_seconds(wire) == pytest.approx(1.2)


def test_unpaced_stays_unpaced() -> None:
    clock = Clock()
    sim = SimulatedOllama(clock, shared_bandwidth=True)
    wires = [start(sim, clock, "/api/chat", body) for body in (LLAMA, QWEN)]
    assert all(done(w).status == 200 for w in wires)


def test_command_line_flag() -> None:
    assert build_simulator(parse_args([]), Clock()).shared_bandwidth is False
    options = parse_args(["--shared-bandwidth", "--tokens-per-second", "20"])
    sim = build_simulator(options, Clock())
    assert sim.shared_bandwidth is True and sim.tokens_per_second == 20


def done_yet(wire: Wire) -> bool:
    reply = wire.reply()
    return reply is not None and reply.complete
