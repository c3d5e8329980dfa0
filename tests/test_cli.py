"""The ``foreman`` command against the stub ``/jobs`` server: output and exit codes.

Most tests run :func:`foreman.cli.run` in-process (the reactor is already
running); a few run the installed entry point in a child process, to cover
``main``: ``react``, the exit status and Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from tests.cli_helpers import SECRET, TOKEN, environment, foreman, make_stub
from tests.conftest import StartForeman
from tests.jobs_stub import ForemanRig, JobsStub, WatchedClock, chat_completion


@pytest_twisted.async_yield_fixture
async def stub(reactor: Any) -> AsyncIterator[JobsStub]:
    server = make_stub(reactor)
    yield server
    await server.stop()


@pytest_twisted.ensureDeferred
async def test_help_documents_the_exit_codes(reactor: Any) -> None:
    shown = await foreman(reactor, "--help")
    assert shown.code == 0
    assert "3  cannot reach foreman" in shown.out
    assert "4  timed out waiting" in shown.out
    for command in ("submit", "jobs", "job", "wait", "cancel", "ps"):
        assert command in shown.out
    assert "--idempotency-key" in (await foreman(reactor, "submit", "--help")).out


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["submit"],
        ["submit", "--model", "llama3.2"],
        ["submit", "--model", "m", "--prompt", "p", "--metadata", "{not json"],
        ["submit", "--model", "m", "--prompt", "p", "--timeout", "5"],
        ["submit", "--model", "m", "--prompt", "p", "--endpoint", "embed"],
        ["submit", "--model", "m", "--prompt", "p", "--priority", "urgent"],
        ["submit", "--model", "m", "--prompt", "p", "--no-progress"],
        ["submit", "--body", "-", "--prompt", "p"],
        ["submit", "--body", "/no/such/file.json"],
        ["submit", "--body", "-"],
        ["jobs", "--limit", "0"],
        ["jobs", "--state", "sleeping"],
        ["wait", "01ID", "--timeout", "-1"],
        ["job", "01ID", "--token-file", "/no/such/token"],
    ],
)
@pytest_twisted.ensureDeferred
async def test_usage_errors_exit_2_and_send_nothing(
    reactor: Any, stub: JobsStub, argv: list[str]
) -> None:
    result = await foreman(reactor, *argv, env=environment(stub), stdin='{"messages": []}')
    assert result.code == 2, result
    assert result.err
    assert stub.jobs == {}
    assert stub.submissions.pending == []
    assert stub.polls.pending == []


@pytest_twisted.ensureDeferred
async def test_submit_prints_the_job_id(reactor: Any, stub: JobsStub) -> None:
    result = await foreman(
        reactor,
        *["submit", "--model", "llama3.2", "--prompt", "Why?", "--system", "Be brief."],
        *["--metadata", '{"ticket": 7}', "--idempotency-key", "k-7", "--priority", "interactive"],
        env=environment(stub),
    )
    assert result.code == 0, result
    job_id = result.out.strip()
    sent = await stub.submissions.get()
    assert sent.job_id == job_id
    assert sent.body == {
        "model": "llama3.2",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Why?"},
        ],
    }
    assert sent.headers["idempotency-key"] == "k-7"
    job = stub.jobs[job_id]
    # Nobody would be listening once the command has exited.
    assert (job.webhook_url, job.metadata, job.endpoint) == (None, {"ticket": 7}, "chat")
    assert job.priority == "interactive"

    as_json = await foreman(
        reactor,
        *["submit", "-m", "llama3.2", "-p", "x", "--webhook", "http://example.invalid/h"],
        "--json",
        env=environment(stub),
    )
    other = json.loads(as_json.out)["job_id"]
    assert stub.jobs[other].webhook_url == "http://example.invalid/h"
    # No --priority: none is sent, and foreman's default applies.
    assert "priority" not in (await stub.submissions.get()).body
    assert stub.jobs[other].priority == "batch"


@pytest_twisted.ensureDeferred
async def test_submit_a_generate_body_from_stdin(reactor: Any, stub: JobsStub) -> None:
    body = {"model": "other", "prompt": "Once upon a time", "options": {"seed": 1}}
    result = await foreman(
        reactor,
        *["submit", "--body", "-", "--endpoint", "generate", "--model", "llama3.2"],
        env=environment(stub),
        stdin=json.dumps(body),
    )
    assert result.code == 0, result
    sent = await stub.submissions.get()
    assert sent.body == {**body, "model": "llama3.2"}
    assert stub.jobs[result.out.strip()].endpoint == "generate"
    # Without --endpoint, the body's own says which.
    in_body = await foreman(
        reactor,
        *["submit", "--body", "-"],
        env=environment(stub),
        stdin=json.dumps({**body, "model": "llama3.2", "endpoint": "generate"}),
    )
    assert stub.jobs[in_body.out.strip()].endpoint == "generate"
    embed = await foreman(
        reactor,
        *["submit", "--body", "-"],
        env=environment(stub),
        stdin=json.dumps({**body, "endpoint": "embed"}),
    )
    assert embed.code == 2
    assert "endpoint must be chat or generate" in embed.err


@pytest_twisted.ensureDeferred
async def test_submit_wait_prints_the_answer_heard_by_webhook(reactor: Any, stub: JobsStub) -> None:
    running = foreman(
        reactor,
        *["submit", "-m", "llama3.2", "-p", "Sky?", "--wait", "--no-progress"],
        env=environment(stub),
    )
    sent = await stub.submissions.get()
    assert sent.job_id is not None
    webhook = stub.jobs[sent.job_id].webhook_url
    assert webhook is not None and webhook.startswith("http://127.0.0.1:")
    # Its first look found the job queued; it waits on a clock nobody
    # advances, so only the webhook can end the wait.
    assert await stub.polls.get() == sent.job_id
    # Signed with the secret the command was given: accepted.
    assert await stub.move(sent.job_id, "done", completion=chat_completion("Blue.")) == 204
    result = await running
    assert (result.code, result.out, result.err) == (0, "Blue.\n", "")


@pytest.mark.parametrize(
    ("state", "error", "said"),
    [("failed", "model crashed", "failed: model crashed"), ("cancelled", None, "cancelled")],
)
@pytest_twisted.ensureDeferred
async def test_wait_exits_1_for_a_job_that_did_not_finish_well(
    reactor: Any, stub: JobsStub, state: str, error: str | None, said: str
) -> None:
    job_id = (
        await foreman(reactor, "submit", "-m", "llama3.2", "-p", "x", env=environment(stub))
    ).out.strip()
    await stub.move(job_id, state, error=error)
    result = await foreman(reactor, "wait", job_id, env=environment(stub))
    assert (result.code, result.out) == (1, "")
    assert f"job {job_id} {said}" in result.err
    as_json = await foreman(reactor, "wait", job_id, "--json", env=environment(stub))
    assert as_json.code == 1
    assert json.loads(as_json.out)["state"] == state


@pytest_twisted.ensureDeferred
async def test_wait_reads_a_big_answer_from_the_artifact(reactor: Any, stub: JobsStub) -> None:
    stub.inline_limit = 10
    submitted = await foreman(
        reactor,
        "submit",
        "-m",
        "llama3.2",
        "-p",
        "x",
        "--endpoint",
        "generate",
        env=environment(stub),
    )
    job_id = submitted.out.strip()
    await stub.move(job_id, "done", completion={"model": "llama3.2", "response": "Long story."})
    result = await foreman(reactor, "wait", job_id, env=environment(stub))
    assert (result.code, result.out) == (0, "Long story.\n")
    view = json.loads((await foreman(reactor, "wait", job_id, "--json", env=environment(stub))).out)
    assert view["result"] is None


@pytest_twisted.ensureDeferred
async def test_wait_timeout_exits_4(reactor: Any, stub: JobsStub) -> None:
    job_id = (
        await foreman(reactor, "submit", "-m", "llama3.2", "-p", "x", env=environment(stub))
    ).out.strip()
    clock = WatchedClock(reactor)
    running = foreman(reactor, "wait", job_id, "--timeout", "5", env=environment(stub), clock=clock)
    assert await clock.scheduled.get() == 5
    clock.advance(5)
    result = await running
    assert result.code == 4
    assert f"job {job_id} did not finish within 5 s" in result.err
    assert stub.jobs[job_id].state == "queued"


@pytest_twisted.ensureDeferred
async def test_foreman_refusing_or_absent_exits_3(reactor: Any, stub: JobsStub) -> None:
    wrong_token = await foreman(
        reactor, "jobs", env={**environment(stub), "FOREMAN_TOKEN": "wrong"}
    )
    assert wrong_token.code == 3
    assert "foreman answered 401" in wrong_token.err
    unknown = await foreman(reactor, "job", "01NOSUCHJOB", env=environment(stub))
    assert (unknown.code, unknown.out) == (3, "")
    assert "404" in unknown.err
    unknown_model = await foreman(reactor, "submit", "-m", "nope", "-p", "x", env=environment(stub))
    assert unknown_model.code == 3
    assert "model 'nope' not found" in unknown_model.err

    url = stub.url
    await stub.disconnect()
    absent = await foreman(reactor, "ps", "--url", url)
    assert absent.code == 3
    assert f"cannot reach foreman at {url}" in absent.err


@pytest_twisted.ensureDeferred
async def test_jobs_lists_an_aligned_table(reactor: Any, stub: JobsStub) -> None:
    env = environment(stub)
    first = (await foreman(reactor, "submit", "-m", "llama3.2", "-p", "a", env=env)).out.strip()
    second = (
        await foreman(
            reactor, *["submit", "-m", "llama3.2", "-p", "b", "--priority", "interactive"], env=env
        )
    ).out.strip()
    await stub.move(first, "loading")
    await stub.move(first, "done", completion=chat_completion("A."))

    table = await foreman(reactor, "jobs", env=env, clock=reactor)
    assert table.code == 0
    lines = table.out.splitlines()
    assert lines[0].split() == ["ID", "STATE", "MODEL", "PRIORITY", "AGE", "ATTEMPT"]
    assert [line.split() for line in lines[1:]] == [
        [second, "queued", "llama3.2", "interactive", "0s", "0"],
        [first, "done", "llama3.2", "batch", "0s", "1"],
    ]
    # Aligned: every column starts at the same offset on every line.
    assert len({line.index(line.split()[1]) for line in lines}) == 1

    done = await foreman(reactor, "jobs", "--state", "done", "--json", env=env)
    assert [job["job_id"] for job in json.loads(done.out)["jobs"]] == [first]
    page = await foreman(reactor, "jobs", "--limit", "1", env=env)
    assert len(page.out.splitlines()) == 2
    assert f"foreman jobs --before {second}" in page.err


@pytest_twisted.ensureDeferred
async def test_job_shows_one_job(reactor: Any, stub: JobsStub) -> None:
    env = environment(stub)
    job_id = (
        await foreman(reactor, "submit", "-m", "llama3.2", "-p", "a", "--metadata", "[1]", env=env)
    ).out.strip()
    await stub.move(job_id, "done", completion=chat_completion("A."))
    shown = await foreman(reactor, "job", job_id, env=env)
    assert shown.code == 0
    rows = dict(line.split(None, 1) for line in shown.out.splitlines())
    assert rows["job_id"] == job_id
    assert rows["state"] == "done"
    assert rows["error"] == "-"
    assert rows["priority"] == "batch"
    assert rows["position"] == "-"
    assert rows["metadata"] == "[1]"
    assert rows["artifacts"].startswith("completion (application/json, ")
    as_json = await foreman(reactor, "job", job_id, "--json", env=env)
    assert json.loads(as_json.out)["result"]["message"]["content"] == "A."


@pytest_twisted.ensureDeferred
async def test_cancel(reactor: Any, stub: JobsStub) -> None:
    env = environment(stub)
    job_id = (await foreman(reactor, "submit", "-m", "llama3.2", "-p", "a", env=env)).out.strip()
    cancelled = await foreman(reactor, "cancel", job_id, env=env)
    assert (cancelled.code, cancelled.out) == (0, f"{job_id} cancelled\n")
    again = await foreman(reactor, "cancel", job_id, env=env)
    assert again.code == 3
    assert "409" in again.err and "already cancelled" in again.err


@pytest_twisted.ensureDeferred
async def test_ps_shows_models_and_the_queue(reactor: Any, stub: JobsStub) -> None:
    stub.ps_body = {
        "models": [
            {
                "name": "llama3.2:latest",
                "model": "llama3.2:latest",
                "size": 2_019_393_189,
                "size_vram": 2_019_393_189,
                "expires_at": "2318-02-21T04:12:51.123456789+01:00",
            }
        ]
    }
    stub.queue_body = {
        "jobs": [
            {
                "id": "01RUNNING",
                "model": "llama3.2",
                "endpoint": "chat",
                "state": "working",
                "sync": False,
                "priority": "batch",
                "attempt": 1,
                "age_seconds": 4.2,
                "waited_seconds": 0.8,
                "overdue": False,
                "position": 0,
            },
            {
                "id": "01WAITING",
                "model": "qwen3:8b",
                "endpoint": "generate",
                "state": "queued",
                "sync": True,
                "priority": "interactive",
                "attempt": 0,
                "age_seconds": 125.0,
                "waited_seconds": 125.0,
                "overdue": True,
                "position": 1,
            },
        ],
        "depth": 1,
        "max_queue": 256,
        "worker_model": "llama3.2:latest",
    }
    shown = await foreman(reactor, "ps", env=environment(stub))
    assert shown.code == 0
    lines = shown.out.splitlines()
    assert lines[0].split() == ["MODEL", "SIZE", "VRAM", "UNTIL"]
    assert lines[1].split() == ["llama3.2:latest", "2.0", "GB", "2.0", "GB", "forever"]
    assert lines[3] == "queue: 1 waiting (at most 256), worker model llama3.2:latest"
    assert lines[4].split() == [
        *["ID", "MODEL", "ENDPOINT", "PRIORITY", "STATE", "POSITION", "WAITED", "AGE", "ATTEMPT"]
    ]
    waiting = ["01WAITING", "qwen3:8b", "generate", "interactive", "queued", "1"]
    assert [line.split() for line in lines[5:]] == [
        ["01RUNNING", "llama3.2", "chat", "batch", "working", "0", "0s", "4s", "1"],
        [*waiting, "2m", "(overdue)", "2m", "0"],
    ]
    as_json = json.loads((await foreman(reactor, "ps", "--json", env=environment(stub))).out)
    assert as_json["queue"]["depth"] == 1

    stub.ps_body = {"models": []}
    stub.queue_body = {"jobs": [], "depth": 0, "queue": "disabled"}
    quiet = await foreman(reactor, "ps", env=environment(stub))
    assert quiet.out == "no models loaded\n\nqueue: disabled (foreman runs with --no-queue)\n"


@pytest_twisted.ensureDeferred
async def test_secrets_come_from_files_before_the_environment(
    reactor: Any, stub: JobsStub, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    env = {"FOREMAN_URL": stub.url, "FOREMAN_TOKEN": "stale"}
    # The options work before the command and after it.
    before = await foreman(reactor, "--token-file", str(token_file), "jobs", env=env)
    after = await foreman(reactor, "jobs", "--token-file", str(token_file), env=env)
    from_env = await foreman(reactor, "jobs", env={**env, "FOREMAN_TOKEN_FILE": str(token_file)})
    assert (before.code, after.code, from_env.code) == (0, 0, 0)
    stale = await foreman(reactor, "jobs", env=env)
    assert stale.code == 3

    (tmp_path / "empty").write_text("\n")
    empty = await foreman(reactor, "jobs", "--token-file", str(tmp_path / "empty"), env=env)
    assert empty.code == 2
    assert "is empty" in empty.err


def test_the_console_script_is_installed() -> None:
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts["foreman"] == "foreman.cli:main"


class _Child(ProcessProtocol):
    """A child ``foreman`` process: its output, and its exit status when it ends."""

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: Deferred[int] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        value = reason.value
        assert isinstance(value, ProcessDone | ProcessTerminated)
        self.ended.callback(value.exitCode if value.exitCode is not None else -1)


def spawn(reactor: Any, stub: JobsStub, *argv: str) -> tuple[_Child, Any]:
    child = _Child()
    env = {**os.environ, **environment(stub)}
    process = reactor.spawnProcess(
        child, sys.executable, [sys.executable, "-m", "foreman.cli", *argv], env=env
    )
    return child, process


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_the_command_in_its_own_process(reactor: Any, stub: JobsStub) -> None:
    child, _ = spawn(reactor, stub, "submit", "-m", "llama3.2", "-p", "Sky?", "--wait")
    sent = await stub.submissions.get()
    assert sent.job_id is not None
    assert await stub.polls.get() == sent.job_id
    # The webhook or the next poll (real time here) ends the wait; a command
    # that exits while the webhook is on its way may cut it off, so its
    # outcome is not the point.
    delivery = Deferred.fromCoroutine(
        stub.move(sent.job_id, "done", completion=chat_completion("Blue."))
    )
    delivery.addErrback(lambda _: None)
    assert await child.ended == 0, child.err
    assert child.out == b"Blue.\n"

    usage, _ = spawn(reactor, stub, "submit")
    assert await usage.ended == 2
    assert b"--model and --prompt" in usage.err


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_ctrl_c_while_waiting_exits_130(reactor: Any, stub: JobsStub) -> None:
    job_id = (
        await foreman(reactor, "submit", "-m", "llama3.2", "-p", "x", env=environment(stub))
    ).out.strip()
    child, process = spawn(reactor, stub, "wait", job_id)
    # Its first look at the job: it is waiting now.
    assert await stub.polls.get() == job_id
    process.signalProcess(signal.SIGINT)
    assert await child.ended == 130
    assert b"interrupted" in child.err


@pytest_twisted.ensureDeferred
async def test_submit_wait_with_foreman(reactor: Any, start_foreman: StartForeman) -> None:
    rig = await ForemanRig.start(reactor, start_foreman, token=TOKEN, webhook_secret=SECRET)
    try:
        env = {"FOREMAN_URL": rig.url, "FOREMAN_TOKEN": TOKEN, "FOREMAN_WEBHOOK_SECRET": SECRET}
        # Its clock never moves: the signed webhook (or the first look) ends the wait.
        running = foreman(reactor, "submit", "-m", "llama3.2", "-p", "Sky?", "--wait", env=env)
        await rig.finish_the_load()
        answered = await running
        assert answered.code == 0, answered
        assert answered.out.strip()
        listed = await foreman(reactor, "jobs", "--json", env=env)
        (job,) = json.loads(listed.out)["jobs"]
        assert job["state"] == "done"
        shown = await foreman(reactor, "wait", job["job_id"], env=env)
        assert (shown.code, shown.out) == (0, answered.out)
        again = await foreman(reactor, "cancel", job["job_id"], env=env)
        assert again.code == 3
        assert "already done" in again.err
    finally:
        await rig.stop()


@pytest_twisted.ensureDeferred
async def test_launchd_is_a_foreman_command(reactor: Any) -> None:
    import plistlib

    shown = await foreman(reactor, "launchd", "install", "--print", "--embed-model", "all-minilm")
    assert shown.code == 0, shown.err
    plist = plistlib.loads(shown.out.encode())
    arguments = plist["ProgramArguments"]
    assert arguments[0].endswith("twistd") and "foreman" in arguments
    assert "--embed-model=all-minilm" in arguments
    refused = await foreman(reactor, "launchd", "install", "--token", "hunter2")
    assert refused.code == 2 and "hunter2" not in refused.out + refused.err
