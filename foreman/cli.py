"""``foreman``: submit, list, wait for and cancel jobs from a shell (ADR-0011).

The commands live in :mod:`foreman.client.commands`; this module parses the
command line, runs the command on the reactor and turns its failures into the
documented exit codes, so scripts can rely on them. Another module's
commands (``foreman launchd`` is next) join by adding their
``register(subparsers)`` to :data:`REGISTRARS`.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import redirect_stderr, redirect_stdout
from typing import Any, NoReturn, TextIO

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import react

from foreman.client import commands, key_commands
from foreman.client.commands import EPILOG, Context, ExitCode, HelpFormatter, UsageProblem
from foreman.client.jobs_client import ForemanError, ForemanUnreachable, WaitTimeout

__all__ = ["REGISTRARS", "ExitCode", "build_parser", "main", "run"]


#: Every subcommand's ``register(subparsers)``, in the order ``--help`` lists them.
def _register_launchd(subparsers: Any) -> None:
    # The launchd commands run without the reactor's help; they only write a
    # file and, on request, run launchctl.
    from foreman.ops import launchd

    launchd.register(subparsers)
    subparsers.choices["launchd"].set_defaults(handler=_run_launchd)


def _run_launchd(context: Context) -> int:
    with redirect_stdout(context.stdout), redirect_stderr(context.stderr):
        status: int = context.args.func(context.args)
    return status


REGISTRARS: tuple[Callable[[Any], None], ...] = (
    *commands.REGISTRARS,
    key_commands.register,
    _register_launchd,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="foreman",
        description="Submit and follow jobs on a foreman server (the /jobs API).",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    commands.global_options(parser, default=None)
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    subparsers.required = True
    for register in REGISTRARS:
        register(subparsers)
    return parser


async def run(
    reactor: Any,
    argv: Sequence[str],
    *,
    environ: Mapping[str, str] | None = None,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    clock: IReactorTime | None = None,
) -> int:
    """Run one command line; its exit code. The reactor must be running."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    try:
        # argparse prints help and usage errors itself, to the process streams.
        with redirect_stdout(out), redirect_stderr(err):
            args = build_parser().parse_args(list(argv))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else ExitCode.USAGE
    context = Context(
        args,
        reactor,
        clock if clock is not None else reactor,
        os.environ if environ is None else environ,
        stdin or sys.stdin,
        out,
        err,
    )
    try:
        outcome = args.handler(context)
        if inspect.isawaitable(outcome):
            outcome = await outcome
        return int(outcome)
    except UsageProblem as e:
        context.warn(str(e))
        return ExitCode.USAGE
    except (ForemanError, ForemanUnreachable) as e:
        context.warn(str(e))
        return ExitCode.UNREACHABLE
    except WaitTimeout as e:
        context.warn(f"{e}; it goes on (foreman wait {e.job_id})")
        return ExitCode.TIMEOUT
    except CancelledError:
        context.warn("interrupted")
        return ExitCode.INTERRUPTED
    finally:
        await context.close()


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``foreman`` console script."""
    arguments = list(sys.argv[1:] if argv is None else argv)

    def start(reactor: Any) -> Deferred[None]:
        outcome = Deferred.fromCoroutine(_exit_with(run(reactor, arguments)))
        settled: Deferred[None] = Deferred()

        def note(result: object) -> object:
            settled.callback(None)
            return result

        outcome.addBoth(note)

        def interrupted() -> Deferred[None]:
            # Ctrl-C stops the reactor: end the command cleanly (receiver
            # closed, exit code 130) before it does.
            outcome.cancel()
            return settled

        reactor.addSystemEventTrigger("before", "shutdown", interrupted)
        return outcome

    react(start)


async def _exit_with(code: Awaitable[int]) -> None:
    status = await code
    if status:
        raise SystemExit(status)


if __name__ == "__main__":
    main()
