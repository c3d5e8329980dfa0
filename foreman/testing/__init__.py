"""A simulated Ollama for tests, benchmarks and ``--upstream`` simulation.

:class:`SimulatedOllama` serves Ollama's native API from memory: the same
paths, status codes, error messages and byte-level JSON as Ollama, a
scheduler that loads, keeps alive, evicts and queues like Ollama's, replies
and embeddings that are deterministic (a reply echoes the last user
message), and counters that tests and benchmarks assert on. All time runs
on an injectable clock. It also speaks Ollama's OpenAI (``/v1/chat/completions``
and friends) and Anthropic (``/v1/messages``) dialects, through the same
native machinery, as Ollama does.

In memory, with simulated time::

    from twisted.internet.task import Clock
    from treq.testing import StubTreq
    from foreman.testing import SimulatedOllama

    clock = Clock()
    sim = SimulatedOllama(clock, tokens_per_second=10)
    client = StubTreq(sim.resource())       # or any twisted.web Site
    ...
    clock.advance(1.2)                      # twelve tokens later
    assert sim.completed_generations == 1

On a real socket (the global reactor is the clock)::

    sim = SimulatedOllama()
    port = await sim.listen("tcp:0:interface=127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}"

Standalone: ``python -m foreman.testing --listen tcp:11434:interface=127.0.0.1``
(also installed as ``foreman-sim``).
"""

from foreman.testing._models import DEFAULT_MODELS, SimModel
from foreman.testing._simulator import RecordedRequest, SimulatedOllama

__all__ = ["DEFAULT_MODELS", "RecordedRequest", "SimModel", "SimulatedOllama"]
