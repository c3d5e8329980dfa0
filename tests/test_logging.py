from __future__ import annotations

import io
import json

from twisted.application.service import Application
from twisted.logger import ILogObserver, Logger, LogLevel, LogPublisher

from foreman.logging import json_lines_observer
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
