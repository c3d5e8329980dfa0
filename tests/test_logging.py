from __future__ import annotations

import io
import json
from pathlib import Path
from typing import cast

import pytest
from twisted.application.service import Application
from twisted.logger import ILogObserver, LogEvent, Logger, LogLevel, LogPublisher

from foreman.ops.logging import json_lines_observer
from foreman.service import ForemanService


def test_json_lines_carry_fields_and_message() -> None:
    stream = io.StringIO()
    publisher = LogPublisher(json_lines_observer(stream))
    log = Logger(namespace="foreman.access", observer=publisher)
    log.info("{method} {path} {status}", method="POST", path="/api/chat", status=200, raw=b"\xff")
    record = json.loads(stream.getvalue())
    assert record["message"] == "POST /api/chat 200"
    assert record["level"] == "info"
    assert record["namespace"] == "foreman.access"
    assert record["status"] == 200
    assert record["raw"] == "\ufffd"
    assert stream.getvalue().count("\n") == 1


def test_failures_are_logged_with_their_traceback() -> None:
    stream = io.StringIO()
    log = Logger(observer=LogPublisher(json_lines_observer(stream)))
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.failure("it broke")
    record = json.loads(stream.getvalue())
    assert record["level"] == LogLevel.critical.name
    assert "ZeroDivisionError" in record["failure"]


def test_root_service_offers_its_observer_to_twistd() -> None:
    # twistd starts logging after makeService and uses an ILogObserver
    # component of the application when there is one.
    observer = json_lines_observer(io.StringIO())
    application = Application("foreman")
    ForemanService(observer).setServiceParent(application)
    assert application.getComponent(ILogObserver) is observer


def test_text_format_leaves_twistd_alone() -> None:
    application = Application("foreman")
    ForemanService(None).setServiceParent(application)
    assert application.getComponent(ILogObserver, None) is None


def test_access_events_wait_for_the_reactor_to_send_the_reply() -> None:
    from twisted.internet.base import DelayedCall
    from twisted.internet.task import Clock

    from foreman.http.access_log import AfterSend

    clock = Clock()
    published: list[LogEvent] = []
    after_send = AfterSend(clock, cast(ILogObserver, published.append))
    log = Logger(namespace="foreman.access", observer=after_send)
    log.info("first")
    log.info("second")
    assert published == []
    # One pass of the reactor (the one that sends the reply) goes by before
    # the flush is even scheduled.
    (first_hop,) = cast(list[DelayedCall], clock.getDelayedCalls())
    assert first_hop.func == clock.callLater and first_hop.args == (0, after_send.flush)
    clock.advance(0)
    assert [event["log_format"] for event in published] == ["first", "second"]
    log.info("third")
    after_send.flush()  # as the site does when it stops
    assert len(published) == 3


def test_json_lines_go_to_twistds_log_file_when_one_is_named(tmp_path: Path) -> None:
    from twisted.scripts._twistd_unix import ServerOptions

    from foreman.ops.logging import json_observer

    log_file = tmp_path / "foreman.log"
    options = ServerOptions()
    options.parseOptions([f"--logfile={log_file}", "foreman", "--log-format", "json"])
    config = options.subOptions.config
    assert config.log_file == str(log_file)
    observer = json_observer(config.log_file)
    Logger(namespace="foreman.access", observer=observer).info("{line}", line="GET / 200")
    observer.stream.close()
    (record,) = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert record["line"] == "GET / 200"


def test_without_a_log_file_json_lines_go_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    from foreman.ops.logging import json_observer

    for log_file in (None, "-"):
        publisher = LogPublisher(json_observer(log_file))
        Logger(observer=publisher).info("hello")
    assert [json.loads(line)["message"] for line in capsys.readouterr().out.splitlines()] == [
        "hello",
        "hello",
    ]
