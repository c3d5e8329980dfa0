"""The official ``ollama`` JavaScript client, run by Node, against foreman.

The JS client is the strictest about streams: one that ends without
``done: true`` (or an ``error`` line) is an exception there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.conftest import RunningSimulator, StartForeman, StartSimulator

HERE = Path(__file__).parent / "js"
NODE = shutil.which("node")


def needs(package: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        NODE is None or not (HERE / "node_modules" / package).is_dir(),
        reason=f"needs Node.js and `npm install` in tests/js for {package!r} "
        "(make test does both when npm exists)",
    )


def run_node(url: str, token: str, script: str = "client_check.mjs") -> dict[str, Any]:
    assert NODE is not None
    finished = subprocess.run(
        [NODE, str(HERE / script), url, token],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    results: dict[str, Any] = json.loads(finished.stdout)
    return results


@needs("ollama")
@pytest_twisted.ensureDeferred
async def test_javascript_client_through_foreman(
    simulator: RunningSimulator, start_foreman: StartForeman
) -> None:
    running = await start_foreman(simulator.url, token="js-token")
    results = await deferToThread(run_node, running.url, "js-token")
    for name in ["chat", "chat_stream", "generate", "embed", "list", "ps", "show"]:
        assert results[name]["ok"], (name, results[name])
    assert results["chat"]["value"]["done_reason"] == "stop"
    stream = results["chat_stream"]["value"]
    assert stream["chunks"] > 2 and stream["done"] is True
    assert stream["content"] == results["chat"]["value"]["content"]
    assert results["embed"]["value"] == 2
    assert "llama3.2:latest" in results["list"]["value"]
    assert results["unknown_model"] == {
        "ok": False,
        "error": "model 'no-such-model' not found",
        "status": 404,
    }


@needs("ollama")
@pytest_twisted.ensureDeferred
async def test_javascript_client_is_refused_without_the_token(
    simulator: RunningSimulator, start_foreman: StartForeman
) -> None:
    running = await start_foreman(simulator.url, token="js-token")
    results = await deferToThread(run_node, running.url, "wrong")
    assert results["list"]["ok"] is False
    assert results["list"]["status"] == 401


@needs("openai")
@pytest_twisted.ensureDeferred
async def test_openai_javascript_client_through_foreman(
    start_simulator: StartSimulator, start_foreman: StartForeman
) -> None:
    running_sim = await start_simulator(tokens_per_second=40, reply_tokens=8)
    running = await start_foreman(running_sim.url, token="js-token")
    try:
        results = await deferToThread(run_node, running.url, "js-token", "openai_check.mjs")
        refused = await deferToThread(run_node, running.url, "wrong", "openai_check.mjs")
    finally:
        running_sim.sim.shutdown()
    for name in ["chat", "chat_stream"]:
        assert results[name]["ok"], (name, results[name])
    chat = results["chat"]["value"]
    assert (chat["object"], chat["finish_reason"]) == ("chat.completion", "stop")
    stream = results["chat_stream"]["value"]
    assert stream["chunks"] == 8 and stream["finish_reason"] == "stop"
    assert stream["content"] == chat["content"]
    assert stream["spread_ms"] > 100  # eight tokens at 40/s, passed on one by one
    assert results["unknown_model"] == {
        "ok": False,
        "error": "404 model 'no-such-model' not found",
        "status": 404,
    }
    assert refused["chat"]["ok"] is False and refused["chat"]["status"] == 401
    assert running_sim.sim.completed_generations == 2
