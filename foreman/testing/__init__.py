"""A simulated Ollama for tests, benchmarks and ``--upstream`` simulation.

``SimulatedOllama`` serves Ollama's native API from memory, with a faithful
scheduler (loads, keep-alive, eviction, per-model parallelism, the 503 of a
full queue) driven by an injectable clock, deterministic replies and
embeddings, and counters that tests can assert on::

    from twisted.internet.task import Clock
    from treq.testing import StubTreq
    from foreman.testing import SimulatedOllama

    clock = Clock()
    sim = SimulatedOllama(clock)
    client = StubTreq(sim.resource())

Run one standalone with ``python -m foreman.testing --listen tcp:11434``.
"""

from foreman.testing._models import DEFAULT_MODELS, SimModel
from foreman.testing._simulator import RecordedRequest, SimulatedOllama

__all__ = ["DEFAULT_MODELS", "RecordedRequest", "SimModel", "SimulatedOllama"]
