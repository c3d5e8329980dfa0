from __future__ import annotations

import math

import pytest

from foreman.wire.durations import (
    FOREVER,
    DurationError,
    format_go_duration,
    parse_go_duration,
    parse_keep_alive,
    parse_setting_duration,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("300ms", 0.3),
        ("1h30m", 5400.0),
        ("2.5s", 2.5),
        ("-1s", -1.0),
        ("10m", 600.0),
        ("24h", 86400.0),
        ("1us", 1e-6),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "5 m", "1d", "m", "1h30"])
def test_malformed_go_durations_are_refused(text: str) -> None:
    with pytest.raises(DurationError):
        parse_go_duration(text)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(0, 0.0), (30, 30.0), (1.5, 1.5), ("5m", 300.0), ("0", 0.0), (-1, FOREVER), ("-1m", FOREVER)],
)
def test_keep_alive_values(value: object, seconds: float) -> None:
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", [True, None, [1], {"a": 1}, "soon"])
def test_keep_alive_refuses_what_ollama_refuses(value: object) -> None:
    with pytest.raises(DurationError):
        parse_keep_alive(value)


def test_settings_accept_plain_seconds_and_go_durations() -> None:
    assert parse_setting_duration("30") == 30.0
    assert parse_setting_duration(" 30s ") == 30.0
    assert parse_setting_duration("-1") == math.inf


def test_format_round_trips() -> None:
    assert format_go_duration(FOREVER) == "-1"
    assert parse_go_duration(format_go_duration(90.0)) == 90.0
    assert parse_go_duration(format_go_duration(0.5)) == 0.5
