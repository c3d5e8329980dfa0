"""The simulated Ollama's scheduler in simulated time: loads, keep-alive,
eviction, parallel slots, the queue limit, pacing, backpressure, disconnects."""

from __future__ import annotations

import attrs
import pytest
from twisted.internet.task import Clock

from foreman.testing import DEFAULT_MODELS, SimModel, SimulatedOllama
from tests.test_simulated_ollama import Reply, Wire, call, chat_body


def slow_models(load_seconds: float) -> list[SimModel]:
    return [attrs.evolve(m, load_seconds=load_seconds) for m in DEFAULT_MODELS]


def start(sim: SimulatedOllama, clock: Clock, path: str, body: object, **kwargs: object) -> Wire:
    wire = Wire(sim, clock, **kwargs)  # type: ignore[arg-type]
    wire.send("POST", path, body)
    return wire


def done(wire: Wire) -> Reply:
    reply = wire.reply()
    assert reply is not None and reply.complete, reply
    return reply


def run_for(clock: Clock, seconds: float, step: float = 0.05) -> None:
    """Advance in small steps: a single ``Clock.advance`` runs every due call
    at the end time, so work started on the way would start late."""
    clock.pump([step] * round(seconds / step))


def loaded_call(model: str, keep_alive: object = None) -> dict[str, object]:
    body: dict[str, object] = {"model": model, "messages": []}
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    return body


def ps(sim: SimulatedOllama, clock: Clock) -> list[dict[str, object]]:
    models: list[dict[str, object]] = call(sim, clock, "GET", "/api/ps").json()["models"]
    return models


# --- loading -------------------------------------------------------------------------------


def test_no_header_is_sent_until_the_model_has_loaded() -> None:
    clock = Clock()
    sim = SimulatedOllama(clock, models=slow_models(2.0))
    wire = start(sim, clock, "/api/chat", chat_body())
    assert wire.reply() is None
    assert sim.residency.runners()[0].ready is False
    assert ps(sim, clock)[0]["name"] == "llama3.2:latest"  # ps shows a loading model
    clock.advance(1.9)
    assert wire.reply() is None and sim.loads == 0 and sim.active_generations == 0
    clock.advance(0.1)
    final = done(wire).lines()[-1]
    assert final["load_duration"] == 2_000_000_000
    assert final["total_duration"] == 2_000_000_000
    assert (sim.loads, sim.loaded_models()) == (1, ["llama3.2:latest"])


def test_requests_arriving_during_a_load_share_it() -> None:
    clock = Clock()
    sim = SimulatedOllama(clock, models=slow_models(3.0))
    first = start(sim, clock, "/api/chat", chat_body())
    clock.advance(1.0)
    second = start(sim, clock, "/api/generate", {"model": "llama3.2:latest", "prompt": "x"})
    clock.advance(2.0)
    assert done(first).status == done(second).status == 200
    assert done(second).lines()[-1]["load_duration"] == 2_000_000_000
    assert sim.loads == 1 and sim.completed_generations == 2


def test_loads_of_different_models_overlap() -> None:
    clock = Clock()
    sim = SimulatedOllama(clock, models=slow_models(2.0))
    a = start(sim, clock, "/api/chat", chat_body("llama3.2"))
    b = start(sim, clock, "/api/chat", chat_body("gemma3:12b"))
    clock.advance(2.0)
    assert done(a).status == done(b).status == 200
    assert sim.load_history == ["llama3.2:latest", "gemma3:12b"]


# --- eviction ------------------------------------------------------------------------------


def test_eviction_picks_the_idle_runner_with_the_shortest_keep_alive() -> None:
    clock = Clock()
    sim = SimulatedOllama(clock, max_loaded_models=2)
    call(sim, clock, "POST", "/api/chat", loaded_call("llama3.2", "10m"))
    call(sim, clock, "POST", "/api/chat", loaded_call("qwen3:8b", "1m"))
    call(sim, clock, "POST", "/api/chat", chat_body("gemma3:12b"))
    assert sim.load_history == ["llama3.2:latest", "qwen3:8b", "gemma3:12b"]
    assert sim.unloads == 1
    assert sorted(sim.loaded_models()) == ["gemma3:12b", "llama3.2:latest"]

    # "Forever" sorts last: gemma (5m default) goes before llama (now forever).
    call(sim, clock, "POST", "/api/chat", loaded_call("llama3.2", -1))
    call(sim, clock, "POST", "/api/chat", chat_body("qwen3:8b"))
    assert sorted(sim.loaded_models()) == ["llama3.2:latest", "qwen3:8b"]


def test_eviction_waits_for_a_busy_runner() -> None:
    clock = Clock()
    sim = SimulatedOllama(clock, max_loaded_models=1, tokens_per_second=10)
    busy = start(sim, clock, "/api/chat", chat_body("llama3.2"))
    clock.advance(0.5)
    waiting = start(sim, clock, "/api/chat", chat_body("qwen3:8b", think=False))
    clock.advance(0.6)
    assert waiting.reply() is None and sim.loaded_models() == ["llama3.2:latest"]
    clock.advance(0.1)  # llama's 12 tokens end at 1.2s: it unloads at once
    assert done(busy).lines()[-1]["done"] is True
    assert sim.loaded_models() == ["qwen3:8b"] and sim.unloads == 1
    clock.advance(1.2)
    assert done(waiting).lines()[-1]["load_duration"] == 700_000_000


def model_size(name: str) -> int:
    return next(m.size for m in DEFAULT_MODELS if m.name == name)


def test_with_a_memory_budget_models_are_evicted_until_the_new_one_fits() -> None:
    clock = Clock()
    budget = model_size("gemma3:12b") + model_size("llama3.2:latest") - 1
    sim = SimulatedOllama(clock, memory_bytes=budget)
    call(sim, clock, "POST", "/api/embed", {"model": "all-minilm", "input": "x"})
    call(sim, clock, "POST", "/api/chat", chat_body("llama3.2"))
    assert sim.unloads == 0  # the two fit side by side
    call(sim, clock, "POST", "/api/chat", chat_body("gemma3:12b"))
    # Ollama evicts one runner at a time (shortest keep-alive, then name)
    # and checks again: all-minilm goes first and frees too little.
    assert sim.unloads == 2
    assert sim.loaded_models() == ["gemma3:12b"]
    call(sim, clock, "POST", "/api/embed", {"model": "all-minilm", "input": "x"})
    assert sorted(sim.loaded_models()) == ["all-minilm:latest", "gemma3:12b"]


def test_a_memory_budget_waits_for_a_busy_runner_and_never_stops_the_first_load() -> None:
    clock = Clock()
    sim = SimulatedOllama(clock, memory_bytes=1, tokens_per_second=10)
    busy = start(sim, clock, "/api/chat", chat_body("llama3.2"))  # bigger than 1 byte: loads
    clock.advance(0.5)
    waiting = start(sim, clock, "/api/chat", chat_body("qwen3:8b", think=False))
    clock.advance(0.5)
    assert waiting.reply() is None and sim.loaded_models() == ["llama3.2:latest"]
    clock.advance(0.2)
    assert done(busy).status == 200
    assert sim.loaded_models() == ["qwen3:8b"]
    clock.advance(1.2)
    assert done(waiting).status == 200


# --- keep-alive ------------------------------------------------------------------------------


def test_keep_alive_timer_starts_when_the_runner_goes_idle() -> None:
    clock = Clock()
    sim = SimulatedOllama(clock, tokens_per_second=1, reply_tokens=4)
    wire = start(sim, clock, "/api/chat", chat_body())
    clock.advance(4)
    done(wire)
    assert ps(sim, clock)[0]["expires_at"] == "1970-01-01T00:05:04Z"
    clock.advance(299.9)
    assert sim.loaded_models() == ["llama3.2:latest"]
    clock.advance(0.1)
    assert sim.loaded_models() == [] and sim.unloads == 1


def test_a_request_replaces_the_keep_alive() -> None:
    clock = Clock()
    sim = SimulatedOllama(clock, default_keep_alive=60)
    call(sim, clock, "POST", "/api/chat", chat_body(keep_alive="10m"))
    clock.advance(599)
    assert sim.loaded_models() == ["llama3.2:latest"]
    call(sim, clock, "POST", "/api/chat", chat_body(keep_alive=30))
    clock.advance(30)
    assert sim.loaded_models() == []


def test_keep_alive_zero_unloads_after_the_request() -> None:
    clock = Clock()
    sim = SimulatedOllama(clock)
    reply = call(sim, clock, "POST", "/api/chat", chat_body(keep_alive=0, stream=False))
    assert reply.json()["done"] is True
    assert (sim.loads, sim.unloads, sim.loaded_models()) == (1, 1, [])


def test_negative_keep_alive_means_forever() -> None:
    clock = Clock()
    clock.advance(1_750_000_000)
    sim = SimulatedOllama(clock)
    call(sim, clock, "POST", "/api/chat", chat_body(keep_alive=-1))
    [entry] = ps(sim, clock)
    # Go's largest duration: about 292 years from now.
    assert entry["expires_at"] == "2317-09-25T14:53:56.854775807Z"
    clock.advance(10 * 365 * 86400)
    assert sim.loaded_models() == ["llama3.2:latest"]
    # As in Ollama, a request without keep_alive keeps the runner's setting...
    call(sim, clock, "POST", "/api/chat", chat_body())
    clock.advance(3600)
    assert sim.loaded_models() == ["llama3.2:latest"]
    # ...and one with a keep_alive replaces it.
    call(sim, clock, "POST", "/api/chat", chat_body(keep_alive="1m"))
    clock.advance(60)
    assert sim.loaded_models() == []


def test_ps_shape_and_order() -> None:
    clock = Clock()
    sim = SimulatedOllama(clock)
    call(sim, clock, "POST", "/api/chat", loaded_call("llama3.2", "1m"))
    call(
        sim, clock, "POST", "/api/embed", {"model": "all-minilm", "input": "x", "keep_alive": "1h"}
    )
    first, second = ps(sim, clock)
    assert list(first) == [
        "name",
        "model",
        "size",
        "digest",
        "details",
        "expires_at",
        "size_vram",
        "context_length",
    ]
    assert first["name"] == "all-minilm:latest" and first["context_length"] == 512
    assert second["name"] == "llama3.2:latest" and second["expires_at"] == "1970-01-01T00:01:00Z"
    assert second["size_vram"] == second["size"] == 2019393189


def test_a_different_num_ctx_forces_a_reload() -> None:
    clock = Clock()
    sim = SimulatedOllama(clock)
    call(sim, clock, "POST", "/api/chat", chat_body(options={"num_ctx": 8192}))
    assert ps(sim, clock)[0]["context_length"] == 8192
    call(sim, clock, "POST", "/api/chat", chat_body(options={"num_ctx": 8192}))
    assert sim.loads == 1
    call(sim, clock, "POST", "/api/chat", chat_body())  # the default differs: reload
    assert (sim.loads, sim.unloads) == (2, 1)
    assert ps(sim, clock)[0]["context_length"] == 4096
    call(sim, clock, "POST", "/api/chat", chat_body())
    assert sim.loads == 2


# --- parallel slots and the queue -------------------------------------------------------------


def test_one_request_per_model_at_a_time_in_arrival_order() -> None:
    clock = Clock()
    sim = SimulatedOllama(clock, tokens_per_second=10)
    wires = [start(sim, clock, "/api/chat", chat_body(text=f"request {i}")) for i in range(3)]
    clock.advance(0.1)
    assert wires[0].reply() is not None
    assert wires[1].reply() is None and wires[2].reply() is None
    assert (sim.active_generations, sim.max_active_generations) == (1, 1)
    clock.advance(1.1)
    assert done(wires[0]).lines()[0]["message"]["content"] == "request"
    clock.advance(0.1)
    assert wires[1].reply() is not None and wires[2].reply() is None
    run_for(clock, 2.4)
    assert all(done(w).status == 200 for w in wires)
    assert done(wires[2]).lines()[1]["message"]["content"] == " 2"
    assert (sim.max_active_generations, sim.completed_generations, sim.loads) == (1, 3, 1)


def test_num_parallel_lets_requests_share_a_runner() -> None:
    clock = Clock()
    sim = SimulatedOllama(clock, tokens_per_second=10, num_parallel=2)
    wires = [start(sim, clock, "/api/chat", chat_body()) for _ in range(3)]
    clock.advance(0.1)
    assert [w.reply() is not None for w in wires] == [True, True, False]
    assert sim.active_generations == 2
    run_for(clock, 2.3)
    assert sim.max_active_generations == 2 and sim.completed_generations == 3
    # Embedding models always run one request at a time.
    assert sim.residency.runners()[0].slots.limit == 2


def test_generations_on_different_models_run_concurrently() -> None:
    clock = Clock()
    sim = SimulatedOllama(clock, tokens_per_second=10)
    wires = [
        start(sim, clock, "/api/chat", chat_body(m, think=False))
        for m in ("llama3.2", "qwen3:8b", "gemma3:12b")
    ]
    clock.advance(0.1)
    assert sim.active_generations == 3
    # An embedding does not wait for a generation slot.
    embedded = call(sim, clock, "POST", "/api/embed", {"model": "llama3.2", "input": "x"})
    assert embedded.status == 200
    clock.advance(1.1)
    assert all(done(w).status == 200 for w in wires)
    assert (sim.active_generations, sim.max_active_generations) == (0, 3)


def test_a_full_load_queue_answers_503() -> None:
    clock = Clock()
    sim = SimulatedOllama(clock, models=slow_models(1.0), max_loaded_models=1, max_queue=1)
    loading = start(sim, clock, "/api/chat", chat_body("llama3.2"))
    # Like Ollama, the queue head waiting for an unload is out of the queue:
    # max_queue more may wait behind it.
    head = start(sim, clock, "/api/chat", chat_body("qwen3:8b", think=False))
    queued = start(sim, clock, "/api/chat", chat_body("gemma3:12b"))
    refused = start(sim, clock, "/api/chat", chat_body("llama3.2", options={"num_ctx": 2048}))
    reply = done(refused)
    assert reply.status == 503
    assert reply.body == (
        b'{"error":"server busy, please try again.  maximum pending requests exceeded"}'
    )
    # Requests for a model that is loaded (or loading) are never refused.
    same = start(sim, clock, "/api/chat", chat_body("llama3.2"))
    clock.advance(1.0)
    assert done(loading).status == done(same).status == 200
    clock.advance(1.0)
    assert done(head).status == 200
    clock.advance(1.0)
    assert done(queued).status == 200
    assert sim.load_history == ["llama3.2:latest", "qwen3:8b", "gemma3:12b"]


# --- pacing and backpressure ------------------------------------------------------------------


def test_tokens_are_paced_on_the_clock() -> None:
    clock = Clock()
    sim = SimulatedOllama(clock, tokens_per_second=4, reply_tokens=4)
    wire = start(sim, clock, "/api/generate", {"model": "llama3.2", "prompt": "a b c d"})
    assert wire.reply() is None
    seen = []
    for _ in range(4):
        clock.advance(0.25)
        reply = wire.reply()
        assert reply is not None
        seen.append(len(reply.lines()))
    assert seen == [1, 2, 3, 5]  # the final line follows the last token at once
    final = done(wire).lines()[-1]
    assert final["eval_duration"] == 1_000_000_000 and final["eval_count"] == 4
    assert [c["created_at"] for c in done(wire).lines()[:2]] == [
        "1970-01-01T00:00:00.25Z",
        "1970-01-01T00:00:00.5Z",
    ]


def test_stream_false_waits_for_the_whole_reply() -> None:
    clock = Clock()
    sim = SimulatedOllama(clock, tokens_per_second=10)
    wire = start(sim, clock, "/api/chat", chat_body(stream=False))
    clock.advance(1.1)
    assert wire.reply() is None
    clock.advance(0.1)
    assert done(wire).json()["eval_duration"] == 1_200_000_000


def test_a_paused_transport_stops_the_stream() -> None:
    clock = Clock()
    sim = SimulatedOllama(clock, token_size=1000)
    wire = start(sim, clock, "/api/chat", chat_body(options={"num_predict": 5000}), limit=64 * 1024)
    # Unpaced, the simulator writes until the transport says stop.
    assert wire.transport.pauses == 1
    assert 64 * 1024 < len(wire.transport.value()) < 70 * 1024
    assert sim.active_generations == 1
    while not wire.received.endswith(b"\r\n0\r\n\r\n"):
        assert len(wire.transport.value()) < 70 * 1024
        wire.received += wire.transport.drain()
    assert len(wire.received) > 5_000_000 and wire.transport.pauses > 70
    assert done(wire).lines()[-1]["eval_count"] == 5000
    assert sim.completed_generations == 1


def test_pausing_stops_paced_tokens_too() -> None:
    clock = Clock()
    sim = SimulatedOllama(clock, tokens_per_second=10)
    wire = start(sim, clock, "/api/chat", chat_body())
    clock.advance(0.3)
    wire.pause()
    before = len(wire.transport.value())
    clock.advance(5)
    assert len(wire.transport.value()) == before
    wire.resume()
    clock.advance(5)
    assert done(wire).lines()[-1]["eval_count"] == 12


# --- clients going away ----------------------------------------------------------------------


def test_disconnect_during_a_load_aborts_it() -> None:
    clock = Clock()
    sim = SimulatedOllama(clock, models=slow_models(5.0))
    wire = start(sim, clock, "/api/chat", chat_body())
    clock.advance(1)
    wire.disconnect()
    assert sim.cancelled_requests == 1
    clock.advance(10)
    assert (sim.loads, sim.loaded_models(), sim.residency.runners()) == (0, [], [])


def test_disconnect_during_a_shared_load_leaves_it_to_the_others() -> None:
    clock = Clock()
    sim = SimulatedOllama(clock, models=slow_models(5.0))
    leaving = start(sim, clock, "/api/chat", chat_body())
    staying = start(sim, clock, "/api/chat", chat_body())
    clock.advance(1)
    leaving.disconnect()
    clock.advance(4)
    assert done(staying).status == 200
    assert (sim.loads, sim.cancelled_requests, sim.completed_generations) == (1, 1, 1)


def test_disconnect_while_queued_for_a_load() -> None:
    clock = Clock()
    sim = SimulatedOllama(clock, models=slow_models(1.0), max_loaded_models=1)
    first = start(sim, clock, "/api/chat", chat_body("llama3.2"))
    queued = start(sim, clock, "/api/chat", chat_body("qwen3:8b"))
    queued.disconnect()
    assert sim.residency.waiting_for_load() == 0
    clock.advance(1)
    assert done(first).status == 200
    assert (sim.load_history, sim.cancelled_requests) == (["llama3.2:latest"], 1)


def test_disconnect_mid_stream_stops_generating() -> None:
    clock = Clock()
    sim = SimulatedOllama(clock, tokens_per_second=10)
    wire = start(sim, clock, "/api/chat", chat_body())
    clock.advance(0.35)
    reply = wire.reply()
    assert reply is not None and len(reply.lines()) == 3
    wire.disconnect()
    assert (sim.cancelled_requests, sim.active_generations, sim.completed_generations) == (1, 0, 0)
    written = len(wire.transport.value())
    clock.advance(10)
    assert len(wire.transport.value()) == written
    # The runner went idle: its keep-alive runs from the disconnect.
    assert ps(sim, clock)[0]["expires_at"] == "1970-01-01T00:05:00.35Z"
    assert sim.clock.getDelayedCalls()[0].getTime() == pytest.approx(300.35)


def test_disconnect_while_waiting_for_a_slot() -> None:
    clock = Clock()
    sim = SimulatedOllama(clock, tokens_per_second=10)
    running = start(sim, clock, "/api/chat", chat_body())
    waiting = start(sim, clock, "/api/chat", chat_body())
    clock.advance(0.5)
    waiting.disconnect()
    clock.advance(5)
    assert done(running).status == 200
    assert (sim.cancelled_requests, sim.completed_generations, sim.max_active_generations) == (
        1,
        1,
        1,
    )
    assert sim.residency.runners()[0].ref_count == 0


def test_disconnect_during_a_non_streamed_reply() -> None:
    clock = Clock()
    sim = SimulatedOllama(clock, tokens_per_second=10)
    wire = start(sim, clock, "/api/generate", {"model": "llama3.2", "prompt": "x", "stream": False})
    clock.advance(0.5)
    wire.disconnect()
    clock.advance(5)
    assert (sim.cancelled_requests, sim.active_generations, sim.completed_generations) == (1, 0, 0)
    assert wire.transport.value() == b""


def test_the_memory_budget_on_the_command_line() -> None:
    from foreman.testing.__main__ import build_simulator, parse_args

    assert build_simulator(parse_args([]), Clock()).residency._memory_bytes is None
    sim = build_simulator(parse_args(["--memory", "2GiB"]), Clock())
    assert sim.residency._memory_bytes == 2 * 1024**3
    with pytest.raises(SystemExit):
        parse_args(["--memory", "lots"])


def test_the_installed_models_on_the_command_line() -> None:
    # Several simulated Ollamas, each with its own models (a fleet's boxes).
    from foreman.testing.__main__ import build_simulator, parse_args

    sim = build_simulator(parse_args(["--models", "llama3.2, qwen3:8b"]), Clock())
    assert [model.name for model in sim.installed_models()] == ["llama3.2:latest", "qwen3:8b"]
    assert len(build_simulator(parse_args([]), Clock()).installed_models()) > 2
    with pytest.raises(SystemExit, match="no built-in model 'nonesuch'"):
        build_simulator(parse_args(["--models", "nonesuch"]), Clock())
