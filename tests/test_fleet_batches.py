"""A batch on a fleet (issue 20 on issue 18's rig): created at one box, its lines claimed
and run by every box whose Ollama has their model, each once, its answers served by any box."""

from __future__ import annotations

import io
import json
from typing import Any, Final

import pytest
import pytest_twisted

from tests.fault_helpers import until
from tests.fleet_rig import Fleet
from tests.sdk_helpers import in_thread, openai_client

pytestmark = pytest.mark.postgres

CHAT: Final = "/v1/chat/completions"
OLLAMA = ("--load-seconds", "0.3", "--tokens-per-second", "40", "--reply-tokens", "8")


def batch_file(count: int) -> bytes:
    lines = []
    for n in range(count):
        model = ("llama3.2", "qwen3:8b")[n % 2]
        body = {"model": model, "messages": [{"role": "user", "content": f"fleet-{n}"}]}
        lines.append({"custom_id": f"f{n}", "method": "POST", "url": CHAT, "body": body})
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


@pytest_twisted.ensureDeferred
async def test_a_batch_made_at_one_box_runs_on_the_boxes_that_have_each_model(
    fleet: Fleet,
) -> None:
    a = await fleet.start_box("a", *OLLAMA, "--models", "llama3.2")
    b = await fleet.start_box("b", *OLLAMA, "--models", "qwen3:8b")

    async def knows_b() -> bool:
        response = await fleet.http.get(a.url + "/api/tags")
        names = {m["name"] for m in (await response.json())["models"]}
        return "qwen3:8b" in names

    await until(fleet.reactor, knows_b, "a to know b's models", 10)
    at_a = openai_client(a.url)

    def create() -> Any:
        made = at_a.files.create(file=("in.jsonl", io.BytesIO(batch_file(8))), purpose="batch")
        return at_a.batches.create(input_file_id=made.id, endpoint=CHAT, completion_window="24h")

    batch = await in_thread(create)
    at_b = openai_client(b.url)

    async def completed() -> bool:
        seen = await in_thread(lambda: at_b.batches.retrieve(batch.id))
        return seen.status == "completed"

    await until(fleet.reactor, completed, "the batch to complete", 60)
    seen = await in_thread(lambda: at_b.batches.retrieve(batch.id))
    output_file = seen.output_file_id
    assert output_file is not None
    text = await in_thread(lambda: at_b.files.content(output_file).text)
    assert sorted(json.loads(line)["custom_id"] for line in text.splitlines()) == sorted(
        f"f{n}" for n in range(8)
    )
    for n in range(8):
        expected = (a, b)[n % 2]
        other = (b, a)[n % 2]
        assert (expected.generations(f"fleet-{n}"), other.generations(f"fleet-{n}")) == (1, 0)
