"""What every benchmark script shares: percentiles and the command line around a run."""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

Figures = Any


def percentile(samples: list[float], fraction: float) -> float:
    """The sample at ``fraction`` of the sorted list (nearest rank); NaN when empty."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main(
    description: str,
    quick_help: str,
    measure: Callable[[Any, argparse.Namespace], Awaitable[Figures]],
    report: Callable[[Figures], str],
    more_options: Callable[[argparse.ArgumentParser], None] = lambda parser: None,
) -> None:
    """Parse ``--quick`` and ``--json`` (and a script's own options), run ``measure``
    on the reactor, print ``report`` of its figures and keep them as JSON if asked."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    more_options(parser)
    arguments = parser.parse_args()

    def go(reactor: Any) -> defer.Deferred[None]:
        async def body() -> None:
            results = await measure(reactor, arguments)
            print(report(results))
            if arguments.json:
                arguments.json.write_text(json.dumps(results, indent=2))

        return defer.ensureDeferred(body())

    task.react(go)
