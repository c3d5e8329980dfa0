"""Run a simulated Ollama standalone: ``python -m foreman.testing`` (or ``foreman-sim``).

    python -m foreman.testing --listen tcp:11434:interface=127.0.0.1 \\
        --tokens-per-second 20 --load-seconds 2.0 --max-loaded-models 3

It logs, loudly, that it is a simulation, so nobody mistakes it for a real
Ollama in a log file.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import sys
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import react
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver
from twisted.web.server import Site

from foreman.testing._models import DEFAULT_MODELS, SimModel
from foreman.testing._simulator import SimulatedOllama
from foreman.wire.durations import DurationError, parse_setting_duration
from foreman.wire.model_names import canonical_model_name
from foreman.wire.sizes import parse_size

_log = Logger(namespace="foreman.testing")


def _duration(text: str) -> float:
    try:
        return parse_setting_duration(text)
    except DurationError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m foreman.testing",
        description="Serve a SIMULATED Ollama (foreman.testing): the native API with "
        "deterministic replies, for tests, benchmarks and demos.",
    )
    parser.add_argument(
        "--listen",
        default="tcp:11434:interface=127.0.0.1",
        help="Twisted server endpoint (default: %(default)s)",
    )
    parser.add_argument(
        "--tokens-per-second",
        type=float,
        default=0.0,
        help="token pacing; 0 = as fast as the client reads (default)",
    )
    parser.add_argument(
        "--shared-bandwidth",
        action="store_true",
        help="all generations in progress, on any model, share --tokens-per-second "
        "(N at once get 1/N each), as on one bandwidth-bound GPU",
    )
    parser.add_argument(
        "--load-seconds",
        type=float,
        default=None,
        help="load latency of every model (default: each model's own, 0)",
    )
    parser.add_argument("--max-loaded-models", type=int, default=3)
    parser.add_argument(
        "--models",
        default=None,
        help="comma-separated names of the built-in models to install, e.g. "
        "llama3.2,qwen3:8b (default: all of them), so that several simulated "
        "Ollamas can each have a different set",
    )
    parser.add_argument(
        "--memory",
        type=_size,
        default=None,
        help="GPU memory the loaded models share, e.g. 10GiB (a model takes its size); "
        "default: no limit but --max-loaded-models",
    )
    parser.add_argument("--num-parallel", type=int, default=1)
    parser.add_argument("--max-queue", type=int, default=512)
    parser.add_argument(
        "--keep-alive",
        type=_duration,
        default=300.0,
        help="default keep_alive, Go duration or seconds (default: 5m)",
    )
    parser.add_argument("--reply-tokens", type=int, default=12)
    parser.add_argument(
        "--token-size",
        type=int,
        default=0,
        help="make every token exactly N characters (bulk transfer tests)",
    )
    parser.add_argument(
        "--version",
        dest="ollama_version",
        default="0.13.0",
        help="version reported by /api/version",
    )
    parser.add_argument(
        "--check-host",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="refuse non-local Host headers (default: only when listening "
        "on a loopback interface, as Ollama does)",
    )
    return parser.parse_args(argv)


def _listens_on_loopback(endpoint: str) -> bool:
    """Whether a Twisted endpoint description binds only a loopback address."""
    kind, *arguments = re.split(r"(?<!\\):", endpoint)
    if kind == "unix":
        return True
    for argument in arguments:
        if argument.startswith("interface="):
            interface = argument[len("interface=") :].replace("\\:", ":")
            if interface == "localhost":
                return True
            try:
                return ipaddress.ip_address(interface).is_loopback
            except ValueError:
                return False
    return False


def _chosen_models(names: str | None) -> tuple[SimModel, ...]:
    if not names:
        return DEFAULT_MODELS
    by_name = {canonical_model_name(model.name): model for model in DEFAULT_MODELS}
    chosen = []
    for name in filter(None, (each.strip() for each in names.split(","))):
        model = by_name.get(canonical_model_name(name))
        if model is None:
            raise SystemExit(
                f"--models: no built-in model {name!r}; there are: "
                + ", ".join(model.name for model in DEFAULT_MODELS)
            )
        chosen.append(model)
    return tuple(chosen)


def build_simulator(options: argparse.Namespace, clock: Any = None) -> SimulatedOllama:
    models = _chosen_models(getattr(options, "models", None))
    if options.load_seconds is not None:
        models = tuple(attrs.evolve(m, load_seconds=options.load_seconds) for m in models)
    check_host = options.check_host
    if check_host is None:
        check_host = _listens_on_loopback(options.listen)
    return SimulatedOllama(
        clock,
        models=models,
        tokens_per_second=options.tokens_per_second,
        reply_tokens=options.reply_tokens,
        token_size=options.token_size,
        max_loaded_models=options.max_loaded_models,
        num_parallel=options.num_parallel,
        max_queue=options.max_queue,
        default_keep_alive=options.keep_alive,
        version=options.ollama_version,
        check_host=check_host,
        shared_bandwidth=options.shared_bandwidth,
        memory_bytes=options.memory,
    )


def _describe(address: Any) -> str:
    if isinstance(address, (IPv4Address, IPv6Address)):
        host = f"[{address.host}]" if isinstance(address, IPv6Address) else address.host
        return f"http://{host}:{address.port}"
    return str(address)


def _serve(reactor: Any, options: argparse.Namespace) -> Deferred[None]:
    sim = build_simulator(options, reactor)
    site = Site(sim.resource(), parsePOSTFormSubmission=False)  # as Go: no form parsing
    listening: Deferred[IListeningPort] = serverFromString(reactor, options.listen).listen(site)

    def started(port: IListeningPort) -> Deferred[None]:
        _log.info(
            "SIMULATED Ollama (foreman.testing, not a real Ollama) listening on {address}; "
            "models: {models}; tokens/s: {tps}{shared}; host check: {check}",
            address=_describe(port.getHost()),
            models=", ".join(m.name for m in sim.installed_models()),
            tps=options.tokens_per_second or "unpaced",
            shared=" shared by all generations" if sim.shared_bandwidth else "",
            check="on" if sim.check_host else "off",
        )
        # Run until interrupted: react() stops the reactor on SIGINT/SIGTERM.
        return Deferred()

    serving: Deferred[None] = listening.addCallback(started)
    return serving


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_args(argv)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    react(_serve, (options,))


if __name__ == "__main__":
    main()
