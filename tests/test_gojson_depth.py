"""Go's JSON decoder as foreman reads it, at depth: never a ``RecursionError``.

Go's scanner (``foreman.wire.goscan``) walks the bytes without recursion,
so it names the first error of any body, Go's nesting limit included;
``gojson.loads`` reads at most ``MAX_READ_DEPTH`` levels and says so.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from foreman.wire.gojson import MAX_READ_DEPTH, GoJSONError, TooDeep, loads
from foreman.wire.goscan import GO_MAX_DEPTH, first_value_error


def arrays(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def objects(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


@pytest.mark.parametrize("nested", [arrays, objects])
def test_the_read_limit_is_exact(nested: Callable[[int], bytes]) -> None:
    assert loads(nested(MAX_READ_DEPTH)) is not None
    with pytest.raises(TooDeep) as caught:
        loads(nested(MAX_READ_DEPTH + 1))
    assert str(caught.value) == f"JSON nested deeper than {MAX_READ_DEPTH} levels"
    assert caught.value.kind == ("array" if nested is arrays else "object")


@pytest.mark.parametrize("depth", [1000, 5000, GO_MAX_DEPTH])
def test_any_depth_go_reads_is_too_deep_never_a_recursion_error(depth: int) -> None:
    with pytest.raises(TooDeep):
        loads(arrays(depth))
    with pytest.raises(TooDeep):
        loads(objects(depth))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (arrays(GO_MAX_DEPTH + 1), "invalid character '[' exceeded max depth"),
        (arrays(100_000), "invalid character '[' exceeded max depth"),
        (b'{"a":' * (GO_MAX_DEPTH + 1), "invalid character '{' exceeded max depth"),
        (b"[" * 3000 + b"1 2", "invalid character '2' after array element"),
        (b'{"a":' * 3000 + b"}", "invalid character '}' looking for beginning of value"),
        (b"[" * 3000, "unexpected EOF"),
        (b"[" * 3000 + b'"\\q"', "invalid character 'q' in string escape code"),
    ],
)
def test_deep_bodies_get_go_s_own_error_first(body: bytes, message: str) -> None:
    assert first_value_error(body) == message
    with pytest.raises(GoJSONError) as caught:
        loads(body)
    assert str(caught.value) == message
    assert not isinstance(caught.value, TooDeep)


def test_what_follows_the_first_value_is_not_read() -> None:
    assert loads(b"[] " + b"[" * 20_000) == []
    assert first_value_error(b'{"a": [1, {"b": null}]} trailing') is None


def test_many_shallow_containers_are_not_deep() -> None:
    wide = b"[" + b",".join([b'{"a":[1]}'] * 2000) + b"]"
    assert len(loads(wide)) == 2000
