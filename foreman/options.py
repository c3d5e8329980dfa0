"""``twistd foreman`` command-line options, each backed by a ``FOREMAN_*`` variable.

Precedence: a command-line flag beats the environment, which beats the
built-in default. Secrets are read from files or the environment only, never
from flags, so they do not show up in ``ps``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from twisted.python import usage

from foreman.config import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_LISTEN,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_BATCH_QUEUE,
    DEFAULT_MAX_QUEUE,
    DEFAULT_OLLAMA_URL,
    Config,
    LogFormat,
    SwapRule,
    UpstreamMode,
    default_data_dir,
)
from foreman.http.cors import OriginError, parse_origins
from foreman.queue.engines import is_postgres_url, mask_password
from foreman.wire.durations import DurationError, parse_setting_duration
from foreman.wire.signature import standard_key
from foreman.wire.sizes import parse_size

#: (option name, environment variable, default shown in --help, help text)
_PARAMETERS: list[tuple[str, str, str | None, str]] = [
    ("listen", "FOREMAN_LISTEN", DEFAULT_LISTEN, "Twisted endpoint to listen on."),
    ("ollama-url", "FOREMAN_OLLAMA_URL", DEFAULT_OLLAMA_URL, "Base URL of the target Ollama."),
    (
        "upstream",
        "FOREMAN_UPSTREAM",
        UpstreamMode.OLLAMA.value,
        "ollama: the Ollama at --ollama-url; sim: the built-in simulated Ollama; "
        "auto: the Ollama if one answers at start-up, else the simulator.",
    ),
    (
        "token-file",
        "FOREMAN_TOKEN_FILE",
        None,
        "File holding the Bearer token callers must send (or set FOREMAN_TOKEN).",
    ),
    (
        "ollama-token-file",
        "FOREMAN_OLLAMA_TOKEN_FILE",
        None,
        "File holding a Bearer token to send to the target (or set FOREMAN_OLLAMA_TOKEN).",
    ),
    (
        "webhook-secret-file",
        "FOREMAN_WEBHOOK_SECRET_FILE",
        None,
        "File holding the key that signs state webhooks (or set FOREMAN_WEBHOOK_SECRET).",
    ),
    (
        "openai-webhook-secret-file",
        "FOREMAN_OPENAI_WEBHOOK_SECRET_FILE",
        None,
        "File holding a Standard Webhooks secret (whsec_...): a batch's end is then sent"
        " as OpenAI's event, signed with it (or set FOREMAN_OPENAI_WEBHOOK_SECRET).",
    ),
    (
        "data-dir",
        "FOREMAN_DATA_DIR",
        None,
        f"Where foreman keeps its files [{default_data_dir()}].",
    ),
    (
        "database",
        "FOREMAN_DATABASE_URL",
        None,
        "Where the job store lives: a postgresql:// URL (queue, jobs, webhooks on "
        "PostgreSQL), or a SQLite file [foreman.sqlite3 in the data directory].",
    ),
    (
        "box-name",
        "FOREMAN_BOX_NAME",
        None,
        "This box's name in a fleet (a PostgreSQL --database) [the host's short name].",
    ),
    (
        "advertise-url",
        "FOREMAN_ADVERTISE_URL",
        None,
        "Where the other boxes of a fleet reach this foreman [http://HOST:PORT from --listen].",
    ),
    (
        "box-lease",
        "FOREMAN_BOX_LEASE",
        "15s",
        "In a fleet: a box whose heartbeat is older than this is gone, and the jobs it "
        "claimed go back to the queue (heartbeats every third of it).",
    ),
    (
        "poll-interval",
        "FOREMAN_POLL_INTERVAL",
        "30s",
        "How often to read the target's /api/tags and /api/ps (Go duration or seconds).",
    ),
    (
        "connect-timeout",
        "FOREMAN_CONNECT_TIMEOUT",
        f"{DEFAULT_CONNECT_TIMEOUT:g}s",
        "Timeout for opening a connection to the target.",
    ),
    (
        "load-timeout",
        "FOREMAN_LOAD_TIMEOUT",
        "10m",
        "How long Ollama may take to begin a reply (a cold model load, a long prompt) "
        "before foreman stops the call.",
    ),
    (
        "stall-timeout",
        "FOREMAN_STALL_TIMEOUT",
        "5m",
        "How long a reply from Ollama that has begun may send nothing before foreman "
        "stops the call.",
    ),
    (
        "max-body-size",
        "FOREMAN_MAX_BODY_SIZE",
        "64MiB",
        "Largest request body accepted; larger ones get 413 (blob uploads exempt).",
    ),
    ("log-format", "FOREMAN_LOG_FORMAT", LogFormat.TEXT.value, "text or json (JSON lines)."),
    (
        "keep-alive",
        "FOREMAN_KEEP_ALIVE",
        "-1",
        "How long the worker model stays loaded when idle (-1: forever; Go duration).",
    ),
    (
        "embed-model",
        "FOREMAN_EMBED_MODEL",
        None,
        "Embedding model to keep loaded forever beside the worker model.",
    ),
    (
        "max-queue",
        "FOREMAN_MAX_QUEUE",
        str(DEFAULT_MAX_QUEUE),
        "Queued generation jobs beyond which callers get 503 + Retry-After.",
    ),
    (
        "max-batch-queue",
        "FOREMAN_MAX_BATCH_QUEUE",
        str(DEFAULT_MAX_BATCH_QUEUE),
        "Queued batch jobs (their own bound, apart from --max-queue) beyond which"
        " a submit gets 503 + Retry-After.",
    ),
    (
        "max-attempts",
        "FOREMAN_MAX_ATTEMPTS",
        str(DEFAULT_MAX_ATTEMPTS),
        "Attempts at a job while the target cannot be reached, before it fails.",
    ),
    (
        "job-ttl",
        "FOREMAN_JOB_TTL",
        "24h",
        "How long finished jobs (and their results) are kept.",
    ),
    (
        "artifact-inline-limit",
        "FOREMAN_ARTIFACT_INLINE_LIMIT",
        "256KiB",
        "Artifacts up to this size are inlined in GET /jobs/{id} and the done webhook.",
    ),
    (
        "swap-grace",
        "FOREMAN_SWAP_GRACE",
        "",
        "How long the worker holds the loaded model for its next call before a swap, "
        "while its callers' return is not yet known (then learned; see --swap-rule). "
        "Unset: up to one load of the model (fixed rule: 250ms).",
    ),
    (
        "swap-quantum",
        "FOREMAN_SWAP_QUANTUM",
        "4",
        "While a call for another model waits, the loaded model's later calls run for at "
        "most this many of that model's load times (0: no limit but --max-wait).",
    ),
    (
        "swap-rule",
        "FOREMAN_SWAP_RULE",
        "learned",
        "learned: hold the loaded model only while its next call is likely sooner than a "
        "load (measured), with the quantum; fixed: always hold --swap-grace, no quantum.",
    ),
    (
        "max-wait",
        "FOREMAN_MAX_WAIT",
        "60s",
        "Once an interactive job has waited this long, nothing later overtakes it; "
        "batch work also runs at least this often.",
    ),
    (
        "batch-max-wait",
        "FOREMAN_BATCH_MAX_WAIT",
        "30m",
        "Once a batch job has waited this long, no later batch job overtakes it.",
    ),
    (
        "outage-wait",
        "FOREMAN_OUTAGE_WAIT",
        "30s",
        "How long a sync caller waits in the queue while Ollama does not answer, "
        "before 503 + Retry-After (asynchronous jobs wait for as long as it takes).",
    ),
    (
        "drain-timeout",
        "FOREMAN_DRAIN_TIMEOUT",
        "20s",
        "On SIGTERM, how long running streams and the running job may take to finish "
        "before they are cut with an explicit error.",
    ),
    (
        "header-timeout",
        "FOREMAN_HEADER_TIMEOUT",
        "60s",
        "Time a request's headers may take to arrive, however slowly they trickle (then 408).",
    ),
    (
        "body-timeout",
        "FOREMAN_BODY_TIMEOUT",
        "60s",
        "Time a request's whole body may take to arrive (then 408; blob uploads exempt).",
    ),
    (
        "idle-timeout",
        "FOREMAN_IDLE_TIMEOUT",
        "75s",
        "An idle keep-alive connection is closed after this long.",
    ),
    (
        "max-connections",
        "FOREMAN_MAX_CONNECTIONS",
        "auto",
        "Open client connections allowed (auto: from the open-files limit); at the cap the "
        "longest-idle connection is closed, or a new one gets 503 if none is idle.",
    ),
    (
        "origins",
        "FOREMAN_ORIGINS",
        None,
        "Comma-separated browser origins allowed beside Ollama's defaults "
        "(as OLLAMA_ORIGINS; one * wildcard each).",
    ),
]

_FLAGS: list[tuple[str, str, str]] = [
    (
        "allow-unauthenticated",
        "FOREMAN_ALLOW_UNAUTHENTICATED",
        "Allow listening beyond loopback without a token.",
    ),
    (
        "metrics-public",
        "FOREMAN_METRICS_PUBLIC",
        "Serve /metrics without the token (the rest of the API still needs it).",
    ),
    (
        "no-queue",
        "FOREMAN_NO_QUEUE",
        "Diagnostics only: relay generation calls at once, leaving scheduling to Ollama.",
    ),
]

_TRUE = {"1", "true", "yes", "on"}


def _read_secret_file(path: str, what: str) -> str:
    try:
        secret = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except OSError as e:
        raise usage.UsageError(f"cannot read {what} file {path!r}: {e.strerror}") from None
    if not secret:
        raise usage.UsageError(f"{what} file {path!r} is empty")
    return secret


class ForemanOptions(usage.Options):
    """The options of ``twistd foreman``."""

    optParameters = [
        [name, None, default, f"{text} (env {env})"] for name, env, default, text in _PARAMETERS
    ]
    optFlags = [[name, None, f"{text} (env {env})"] for name, env, text in _FLAGS]

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        # The environment replaces built-in defaults; flags parsed later win.
        for name, env, _default, _text in _PARAMETERS:
            if self.environ.get(env):
                self[name] = self.environ[env]
        for name, env, _text in _FLAGS:
            if self.environ.get(env, "").strip().lower() in _TRUE:
                self[name] = 1
        self.config: Config | None = None

    def postOptions(self) -> None:
        self.config = self._build_config()

    def _build_config(self) -> Config:
        try:
            upstream = UpstreamMode(self["upstream"])
        except ValueError:
            raise usage.UsageError("--upstream must be one of: ollama, sim, auto") from None
        try:
            log_format = LogFormat(self["log-format"])
        except ValueError:
            raise usage.UsageError("--log-format must be text or json") from None
        url = self["ollama-url"].rstrip("/")
        if not re.match(r"^https?://[^/\s]+", url):
            raise usage.UsageError(f"--ollama-url must be an http(s) URL, not {url!r}")

        token = self.environ.get("FOREMAN_TOKEN") or None
        if self["token-file"]:
            token = _read_secret_file(self["token-file"], "token")
        ollama_token = self.environ.get("FOREMAN_OLLAMA_TOKEN") or None
        if self["ollama-token-file"]:
            ollama_token = _read_secret_file(self["ollama-token-file"], "Ollama token")

        webhook_secret = self.environ.get("FOREMAN_WEBHOOK_SECRET") or None
        if self["webhook-secret-file"]:
            webhook_secret = _read_secret_file(self["webhook-secret-file"], "webhook secret")
        openai_webhook_secret = self.environ.get("FOREMAN_OPENAI_WEBHOOK_SECRET") or None
        if self["openai-webhook-secret-file"]:
            openai_webhook_secret = _read_secret_file(
                self["openai-webhook-secret-file"], "OpenAI webhook secret"
            )
        if openai_webhook_secret is not None:
            try:
                standard_key(openai_webhook_secret)
            except ValueError as e:
                raise usage.UsageError(f"the OpenAI webhook secret: {e}") from None

        fields: dict[str, Any] = {}
        for name, key in (
            ("poll-interval", "poll_interval"),
            ("connect-timeout", "connect_timeout"),
            ("load-timeout", "load_timeout"),
            ("stall-timeout", "stall_timeout"),
            ("max-wait", "max_wait"),
            ("batch-max-wait", "batch_max_wait"),
            ("outage-wait", "outage_wait"),
            ("drain-timeout", "drain_timeout"),
            ("box-lease", "box_lease"),
            ("header-timeout", "header_timeout"),
            ("body-timeout", "body_timeout"),
            ("idle-timeout", "idle_timeout"),
        ):
            try:
                fields[key] = parse_setting_duration(self[name])
            except DurationError as e:
                raise usage.UsageError(f"--{name}: {e}") from None
            if not 0 < fields[key] < float("inf"):
                raise usage.UsageError(f"--{name} must be a positive, finite duration")
        sizes: dict[str, int] = {}
        for name in ("max-body-size", "artifact-inline-limit"):
            try:
                sizes[name] = parse_size(self[name])
            except ValueError as e:
                raise usage.UsageError(f"--{name}: {e}") from None

        data_dir = Path(self["data-dir"]).expanduser() if self["data-dir"] else default_data_dir()
        database = (self["database"] or "").strip() or None
        if database is not None and "://" in database and not is_postgres_url(database):
            raise usage.UsageError(
                f"--database must be a postgresql:// URL or a file, not {mask_password(database)!r}"
            )
        try:
            keep_alive = parse_setting_duration(self["keep-alive"])
            job_ttl = parse_setting_duration(self["job-ttl"])
            swap_grace = parse_setting_duration(self["swap-grace"]) if self["swap-grace"] else None
        except DurationError as e:
            raise usage.UsageError(f"--keep-alive / --job-ttl / --swap-grace: {e}") from None
        if swap_grace is not None and not 0 <= swap_grace < float("inf"):
            raise usage.UsageError("--swap-grace must be a finite duration, 0 or more")
        try:
            swap_quantum = float(self["swap-quantum"])
        except ValueError:
            raise usage.UsageError("--swap-quantum must be a number (of load times)") from None
        if not 0 <= swap_quantum < float("inf"):
            raise usage.UsageError("--swap-quantum must be 0 or more")
        try:
            swap_rule = SwapRule(self["swap-rule"])
        except ValueError:
            raise usage.UsageError("--swap-rule must be learned or fixed") from None
        counts: dict[str, int] = {}
        for name in ("max-queue", "max-batch-queue", "max-attempts"):
            try:
                counts[name] = int(self[name])
            except ValueError:
                raise usage.UsageError(f"--{name} must be a whole number") from None
            if counts[name] < 1:
                raise usage.UsageError(f"--{name} must be at least 1")
        max_connections: int | None = None
        if self["max-connections"].strip().lower() != "auto":
            try:
                max_connections = int(self["max-connections"])
            except ValueError:
                raise usage.UsageError("--max-connections must be a whole number or auto") from None
            if max_connections < 1:
                raise usage.UsageError("--max-connections must be at least 1")
        try:
            origins = parse_origins(self["origins"] or "")
        except OriginError as e:
            raise usage.UsageError(f"--origins: {e}") from None
        # twistd's options (``--logfile``) are this one's parent.
        parent = getattr(self, "parent", None)
        log_file = parent.get("logfile") if parent is not None else None
        return Config(
            listen=self["listen"],
            log_file=log_file or None,
            ollama_url=url,
            upstream=upstream,
            token=token,
            ollama_token=ollama_token,
            allow_unauthenticated=bool(self["allow-unauthenticated"]),
            data_dir=data_dir,
            database=database,
            box_name=(self["box-name"] or "").strip() or None,
            advertise_url=_advertise_url(self["advertise-url"]),
            max_body_size=sizes["max-body-size"],
            artifact_inline_limit=sizes["artifact-inline-limit"],
            webhook_secret=webhook_secret,
            openai_webhook_secret=openai_webhook_secret,
            log_format=log_format,
            keep_alive=keep_alive,
            embed_model=self["embed-model"] or None,
            max_queue=counts["max-queue"],
            max_batch_queue=counts["max-batch-queue"],
            max_attempts=counts["max-attempts"],
            job_ttl=job_ttl,
            swap_grace=swap_grace,
            swap_quantum=swap_quantum,
            swap_rule=swap_rule,
            queue=not self["no-queue"],
            metrics_public=bool(self["metrics-public"]),
            origins=origins,
            max_connections=max_connections,
            **fields,
        )


def _advertise_url(text: str | None) -> str | None:
    url = (text or "").strip().rstrip("/")
    if not url:
        return None
    if not re.match(r"^https?://[^/\s]+$", url):
        raise usage.UsageError(f"--advertise-url must be http(s)://HOST[:PORT], not {url!r}")
    return url
