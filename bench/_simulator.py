"""The simulated Ollama of ``bench/scheduler.py``, and foreman in front of it.

The simulator runs inside the benchmark's process, on a real port, so that
loads are counted exactly (``SimulatedOllama.loads``, ``load_history``);
foreman runs under ``twistd`` in its own process, started and stopped from
a thread so that this process's reactor keeps serving the simulator
meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, asynccontextmanager
from typing import Any

import attrs
from twisted.internet import threads
from twisted.internet.interfaces import IListeningPort

from bench._processes import foreman
from bench._workload import sleep
from foreman.testing import DEFAULT_MODELS, SimModel, SimulatedOllama

#: Every load takes 1 s (5-10 s on a laptop), tokens come at 100/s, replies
#: are 20 tokens (0.2 s) and each model serves one request at a time.
LOAD_SECONDS = 1.0
TOKENS_PER_SECOND = 100.0
REPLY_TOKENS = 20
NUM_PARALLEL = 1
#: One reply's tokens, in seconds.
JOB_SECONDS = REPLY_TOKENS / TOKENS_PER_SECOND
#: foreman's default swap grace (250 ms) is sized against a 5-10 s swap; the
#: swaps here take 1 s, so the grace is scaled down with them (250 ms / 6).
SWAP_GRACE = "40ms"

GIB = 1024**3

#: The design's Mac: an M1 Pro with 32 GB, whose GPU may wire about two
#: thirds of it (macOS's default limit), running big models of which one
#: fits beside the embedder and no two fit together. Sizes are those of the
#: Ollama library's downloads.
MAC_GPU_MEMORY = 32 * GIB * 2 // 3
BIG_MODELS: tuple[SimModel, ...] = (
    SimModel(
        name="qwen3:14b", size=9_276_198_565, family="qwen3", parameter_size="14.8B", thinking=True
    ),
    SimModel(
        name="mistral-small3.2:24b",
        size=15_177_384_862,
        family="mistral3",
        parameter_size="24.0B",
        vision=True,
    ),
    SimModel(
        name="gemma3:27b",
        size=17_396_936_941,
        family="gemma3",
        parameter_size="27.4B",
        tools=False,
        vision=True,
    ),
)


def make_simulator(
    reactor: Any, *, max_loaded_models: int, memory_bytes: int | None, shared_bandwidth: bool
) -> SimulatedOllama:
    installed = (*DEFAULT_MODELS, *BIG_MODELS)
    models = tuple(attrs.evolve(m, load_seconds=LOAD_SECONDS) for m in installed)
    return SimulatedOllama(
        reactor,
        models=models,
        tokens_per_second=TOKENS_PER_SECOND,
        reply_tokens=REPLY_TOKENS,
        max_loaded_models=max_loaded_models,
        memory_bytes=memory_bytes,
        num_parallel=NUM_PARALLEL,
        shared_bandwidth=shared_bandwidth,
    )


def the_mac(reactor: Any) -> SimulatedOllama:
    """The design's Mac: one big model fits at a time, generations share the bandwidth."""
    return make_simulator(
        reactor, max_loaded_models=3, memory_bytes=MAC_GPU_MEMORY, shared_bandwidth=True
    )


async def wait_until(reactor: Any, ready: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {seconds} s waiting for {what}")
        await sleep(reactor, 0.05)


@asynccontextmanager
async def listening(reactor: Any, sim: SimulatedOllama) -> AsyncIterator[str]:
    """``sim`` on a free loopback port; yields its base URL."""
    port: IListeningPort = await sim.listen("tcp:0:interface=127.0.0.1", reactor)
    address: Any = port.getHost()
    try:
        yield f"http://127.0.0.1:{address.port}"
    finally:
        stopped = port.stopListening()
        if stopped is not None:
            await stopped
        sim.shutdown()


@asynccontextmanager
async def foreman_in_front(sim_url: str, *arguments: str) -> AsyncIterator[str]:
    """foreman under twistd in front of ``sim_url``; yields its base URL.

    Started from a thread: ``_processes`` waits for ``/healthz`` with blocking
    calls, and this reactor must keep serving the simulator meanwhile.
    """
    process: AbstractContextManager[str] = foreman(sim_url, *arguments)
    url: str = await threads.deferToThread(process.__enter__)
    try:
        yield url
    finally:
        await threads.deferToThread(process.__exit__, None, None, None)
