"""The ``foreman`` commands: what each takes, does, prints and exits with.

A command is a ``register(subparsers)`` function that adds its parser (with
:func:`command`) and a ``handler(context) -> int | Awaitable[int]`` that
returns the exit code. Failures are raised, not printed: :func:`foreman.cli.run`
turns them into the documented exit codes in one place.
"""

from __future__ import annotations

import argparse
import enum
import json
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

import attrs
from twisted.internet.interfaces import IReactorTime

from foreman.client import output
from foreman.client.jobs_client import DEFAULT_URL, Endpoint, JobsClient, JobView
from foreman.client.progress import Progress
from foreman.wire.priority import Priority


class ExitCode(enum.IntEnum):
    OK = 0
    JOB_FAILED = 1
    USAGE = 2
    UNREACHABLE = 3
    TIMEOUT = 4
    #: Interrupted (Ctrl-C), as shells report a SIGINT.
    INTERRUPTED = 130


EPILOG = f"""\
exit codes:
  0  success (submit --wait and wait: the job is done)
  1  the job failed or was cancelled
  2  usage error
  3  cannot reach foreman, or foreman answered with an error
  4  timed out waiting (the job itself goes on)

environment:
  FOREMAN_URL                   foreman's base URL [{DEFAULT_URL}]
  FOREMAN_TOKEN                 Bearer token (or FOREMAN_TOKEN_FILE, --token-file)
  FOREMAN_WEBHOOK_SECRET        webhook signing secret (or FOREMAN_WEBHOOK_SECRET_FILE)
"""


class UsageProblem(Exception):
    """Something on the command line (or a file it names) that cannot be used."""


@attrs.define
class Context:
    """What a handler gets: its parsed arguments, the streams and a client."""

    args: argparse.Namespace
    reactor: Any
    clock: IReactorTime
    environ: Mapping[str, str]
    stdin: TextIO
    stdout: TextIO
    stderr: TextIO
    _client: JobsClient | None = None

    def client(self) -> JobsClient:
        """The jobs client, made on first use (so commands that need none read no secrets)."""
        if self._client is None:
            args, env = self.args, self.environ
            self._client = JobsClient(
                getattr(args, "url", None) or env.get("FOREMAN_URL") or DEFAULT_URL,
                token=_secret(getattr(args, "token_file", None), "FOREMAN_TOKEN", "token", env),
                webhook_secret=_secret(
                    getattr(args, "webhook_secret_file", None),
                    "FOREMAN_WEBHOOK_SECRET",
                    "webhook secret",
                    env,
                ),
                reactor=self.reactor,
                clock=self.clock,
            )
        return self._client

    def say(self, text: str = "") -> None:
        print(text, file=self.stdout)

    def warn(self, text: str) -> None:
        print(f"foreman: {text}", file=self.stderr)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


Handler = Callable[[Context], "Awaitable[int] | int"]


def _secret(path: str | None, variable: str, what: str, env: Mapping[str, str]) -> str | None:
    """A file (flag, then ``<variable>_FILE``) beats the variable, as for the daemon."""
    path = path or env.get(f"{variable}_FILE")
    if not path:
        return env.get(variable) or None
    try:
        secret = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except OSError as e:
        raise UsageProblem(f"cannot read the {what} file {path!r}: {e.strerror}") from None
    if not secret:
        raise UsageProblem(f"the {what} file {path!r} is empty")
    return secret


# -- the commands ---------------------------------------------------------------


def global_options(parser: argparse.ArgumentParser, *, default: Any) -> None:
    """On the main parser and on each command, so they may come before or after it."""
    parser.add_argument("--url", default=default, help="foreman's URL (env FOREMAN_URL)")
    parser.add_argument(
        "--token-file", default=default, help="file holding the Bearer token (env FOREMAN_TOKEN)"
    )
    parser.add_argument(
        "--webhook-secret-file",
        default=default,
        help="file holding the webhook signing secret (env FOREMAN_WEBHOOK_SECRET)",
    )


def command(subparsers: Any, name: str, handler: Handler, **kwargs: Any) -> Any:
    """Add a command's parser: the global options, ``--json`` and its handler."""
    parser = subparsers.add_parser(name, epilog=EPILOG, formatter_class=HelpFormatter, **kwargs)
    global_options(parser, default=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print foreman's JSON")
    parser.set_defaults(handler=handler)
    return parser


def _register_submit(subparsers: Any) -> None:
    p = command(subparsers, "submit", _submit, help="submit a job (prints its id)")
    p.add_argument("--model", "-m", help="the model (required unless --body names one)")
    p.add_argument("--prompt", "-p", help="the user message (chat) or prompt (generate)")
    p.add_argument("--system", help="a system message")
    p.add_argument(
        "--endpoint", choices=("chat", "generate"), help="default: the body's, else chat"
    )
    p.add_argument("--body", metavar="FILE|-", help="a whole native request body, as JSON")
    p.add_argument(
        "--priority",
        choices=[each.value for each in Priority],
        help="the job's scheduling class (default: the body's, else foreman's: batch)",
    )
    p.add_argument("--metadata", metavar="JSON", type=_json_arg, help="kept with the job")
    p.add_argument("--webhook", metavar="URL", help="state_webhook_url for the job")
    p.add_argument("--idempotency-key", metavar="KEY", help="resubmitting with it is harmless")
    p.add_argument("--wait", action="store_true", help="wait for the job and print its answer")
    p.add_argument("--timeout", type=_seconds, metavar="SECONDS", help="with --wait")
    _progress_option(p, "with --wait: ")


def _progress_option(parser: Any, prefix: str = "") -> None:
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help=prefix + "no live progress on stderr (a status line on a terminal, "
        "else a line per change of state or position)",
    )


def _register_jobs(subparsers: Any) -> None:
    p = command(subparsers, "jobs", _jobs, help="list jobs, newest first")
    p.add_argument(
        "--state", choices=("queued", "loading", "working", "done", "failed", "cancelled")
    )
    p.add_argument("--model", "-m")
    p.add_argument("--limit", type=_count)
    p.add_argument("--before", metavar="ID", help="the page after this id")


def _register_job(subparsers: Any) -> None:
    command(subparsers, "job", _job, help="show one job").add_argument("id")


def _register_wait(subparsers: Any) -> None:
    p = command(subparsers, "wait", _wait, help="wait for a job; print its answer")
    p.add_argument("id")
    p.add_argument("--timeout", type=_seconds, metavar="SECONDS")
    _progress_option(p)


def _register_cancel(subparsers: Any) -> None:
    command(subparsers, "cancel", _cancel, help="cancel a job").add_argument("id")


def _register_ps(subparsers: Any) -> None:
    command(subparsers, "ps", _ps, help="loaded models and foreman's queue")


#: The commands of this module, in the order ``--help`` lists them.
REGISTRARS: tuple[Callable[[Any], None], ...] = (
    _register_submit,
    _register_jobs,
    _register_job,
    _register_wait,
    _register_cancel,
    _register_ps,
)


async def _submit(context: Context) -> int:
    args = context.args
    for flag, given in (
        ("--timeout", args.timeout is not None),
        ("--no-progress", args.no_progress),
    ):
        if given and not args.wait:
            raise UsageProblem(f"{flag} is for --wait")
    body = _submission_body(context)
    chosen = args.endpoint or body.pop("endpoint", None) or "chat"
    if chosen not in ("chat", "generate"):
        raise UsageProblem(f"the body's endpoint must be chat or generate, not {chosen!r}")
    endpoint: Endpoint = "generate" if chosen == "generate" else "chat"
    client = context.client()
    job_id = await client.submit(
        body,
        endpoint=endpoint,
        webhook_url=args.webhook,
        metadata=args.metadata,
        idempotency_key=args.idempotency_key,
        # Only a waiting CLI has a receiver to be told about; it is gone after.
        notify=args.wait,
        priority=args.priority,
    )
    if not args.wait:
        context.say(json.dumps({"job_id": job_id}) if args.json else job_id)
        return ExitCode.OK
    return await _report(context, await _follow(context, job_id))


def _submission_body(context: Context) -> dict[str, Any]:
    args = context.args
    if args.body is not None:
        if args.prompt is not None or args.system is not None:
            raise UsageProblem("--body carries the whole request: no --prompt or --system")
        body = _read_body(args.body, context.stdin)
        if args.model:
            body["model"] = args.model
        if not isinstance(body.get("model"), str):
            raise UsageProblem("the body names no model: add --model")
        return body
    if not args.model or args.prompt is None:
        raise UsageProblem("submit needs --model and --prompt (or --body)")
    if args.endpoint == "generate":
        body = {"model": args.model, "prompt": args.prompt}
        if args.system is not None:
            body["system"] = args.system
        return body
    messages = [{"role": "system", "content": args.system}] if args.system is not None else []
    messages.append({"role": "user", "content": args.prompt})
    return {"model": args.model, "messages": messages}


def _read_body(source: str, stdin: TextIO) -> dict[str, Any]:
    try:
        text = stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as e:
        raise UsageProblem(f"cannot read {source!r}: {e.strerror}") from None
    try:
        body = json.loads(text)
    except ValueError as e:
        raise UsageProblem(f"the body is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise UsageProblem("the body must be a JSON object")
    return body


async def _jobs(context: Context) -> int:
    args = context.args
    listing = await context.client().list(
        state=args.state, model=args.model, limit=args.limit, before=args.before
    )
    if args.json:
        context.say(json.dumps(listing, indent=2))
        return ExitCode.OK
    context.say(output.jobs_table(listing.get("jobs") or [], context.clock.seconds()))
    if listing.get("next"):
        print(f"more: foreman jobs --before {listing['next']}", file=context.stderr)
    return ExitCode.OK


async def _job(context: Context) -> int:
    view = await context.client().get(context.args.id)
    context.say(json.dumps(view, indent=2) if context.args.json else output.job_details(view))
    return ExitCode.OK


async def _wait(context: Context) -> int:
    return await _report(context, await _follow(context, context.args.id))


async def _follow(context: Context, job_id: str) -> JobView:
    """Wait for the job (``--timeout``), with its progress on stderr (unless ``--no-progress``)."""
    args = context.args
    progress = None
    if not args.no_progress:
        progress = Progress.on(context.stderr, context.clock, context.environ)
    try:
        return await context.client().wait(
            job_id, timeout=args.timeout, progress=None if progress is None else progress.show
        )
    finally:
        # The status line goes before the answer, or the error, is printed.
        if progress is not None:
            progress.close()


async def _cancel(context: Context) -> int:
    view = await context.client().cancel(context.args.id)
    context.say(
        json.dumps(view, indent=2)
        if context.args.json
        else f"{view.get('job_id')} {view.get('state')}"
    )
    return ExitCode.OK


async def _ps(context: Context) -> int:
    client = context.client()
    ps, queue = await client.ps(), await client.queue()
    if context.args.json:
        context.say(json.dumps({"ps": ps, "queue": queue}, indent=2))
    else:
        context.say(output.ps_report(ps, queue, context.clock.seconds()))
    return ExitCode.OK


async def _report(context: Context, view: JobView) -> int:
    """Print a finished job's answer (or, with --json, its view); its exit code."""
    state = view.get("state")
    if context.args.json:
        context.say(json.dumps(view, indent=2))
    elif state == "done":
        completion = view.get("result")
        if completion is None:
            # Too big to be inline: the completion artifact has it.
            raw = await context.client().artifact(str(view.get("job_id")), "completion")
            try:
                completion = json.loads(raw)
            except ValueError:
                completion = raw.decode("utf-8", "replace")
        text = completion if isinstance(completion, str) else output.answer_text(view, completion)
        context.stdout.write(text if text.endswith("\n") else text + "\n")
    if state == "done":
        return ExitCode.OK
    error = view.get("error")
    context.warn(f"job {view.get('job_id')} {state}" + (f": {error}" if error else ""))
    return ExitCode.JOB_FAILED


# -- argument types -----------------------------------------------------------------


def _json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return value


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a whole number above 0: {text!r}")
    return int(text)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's table of exit codes as written."""
