"""foreman's configuration as one immutable value.

Every setting has a command-line option (see :mod:`foreman.options`) and a
``FOREMAN_*`` environment variable; this module only holds the result.
"""

from __future__ import annotations

import enum
import math
import os
import sys
from pathlib import Path

import attrs

from foreman.http.listen_address import is_loopback_only
from foreman.http.site import DEFAULT_BODY_TIMEOUT, DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT
from foreman.queue.engines import mask_password
from foreman.queue.order import DEFAULT_BATCH_MAX_WAIT, DEFAULT_MAX_WAIT, DEFAULT_SWAP_QUANTUM
from foreman.queue.outage import DEFAULT_CALLER_WAIT
from foreman.queue.scheduler import DEFAULT_MAX_BATCH_QUEUE as DEFAULT_MAX_BATCH_QUEUE
from foreman.relay.inflight import DEFAULT_LOAD_TIMEOUT, DEFAULT_STALL_TIMEOUT

DEFAULT_LISTEN = "tcp:11435:interface=127.0.0.1"
DEFAULT_OLLAMA_URL = "http://127.0.0.1:11434"
DEFAULT_POLL_INTERVAL = 30.0
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_MAX_BODY_SIZE = 64 * 1024 * 1024
DEFAULT_MAX_QUEUE = 256
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_JOB_TTL = 24 * 3600.0
DEFAULT_ARTIFACT_INLINE_LIMIT = 256 * 1024
#: As launchd's own default ``ExitTimeOut``: the plist gives it room on top.
DEFAULT_DRAIN_TIMEOUT = 20.0
DEFAULT_BOX_LEASE = 15.0


class UpstreamMode(enum.Enum):
    """Where generation and metadata calls are sent."""

    #: The Ollama at ``ollama_url``; if it is down foreman reports degraded.
    OLLAMA = "ollama"
    #: The built-in simulated Ollama, started inside the foreman process.
    SIMULATED = "sim"
    #: Probe ``ollama_url`` once at start-up; fall back to the simulator.
    AUTO = "auto"


class SwapRule(enum.Enum):
    """How the worker decides to hold the resident model or swap (ADR-0024)."""

    #: Rent or buy, by measured loads and learned gaps, with the quantum.
    LEARNED = "learned"
    #: The rule before: hold ``--swap-grace`` every time, no quantum (to compare).
    FIXED = "fixed"


class LogFormat(enum.Enum):
    TEXT = "text"
    JSON = "json"


def default_data_dir() -> Path:
    """Where foreman keeps its files when ``FOREMAN_DATA_DIR`` is not set."""
    home = Path.home()
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "foreman"
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else home / ".local" / "share") / "foreman"


@attrs.frozen(repr=False)
class Config:
    listen: str = DEFAULT_LISTEN
    ollama_url: str = DEFAULT_OLLAMA_URL
    upstream: UpstreamMode = UpstreamMode.OLLAMA
    #: Bearer token callers must present; ``None`` means no auth.
    token: str | None = None
    #: Bearer token foreman presents to the target Ollama.
    ollama_token: str | None = None
    allow_unauthenticated: bool = False
    data_dir: Path = attrs.field(factory=default_data_dir)
    #: Where the job store lives: ``None`` for the SQLite file in ``data_dir``,
    #: or a ``postgresql://`` URL (which may hold a password: never log it whole).
    database: str | None = None
    #: A box's name in a fleet (default: the host's short name), and the URL
    #: other boxes reach its foreman at (default: from ``listen``).
    box_name: str | None = None
    advertise_url: str | None = None
    #: How long a box's heartbeat, and the jobs it claims, hold without renewal.
    box_lease: float = DEFAULT_BOX_LEASE
    poll_interval: float = DEFAULT_POLL_INTERVAL
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    #: How long Ollama may take to begin a reply (its headers): a cold load.
    load_timeout: float = DEFAULT_LOAD_TIMEOUT
    #: How long a reply that has begun may send nothing.
    stall_timeout: float = DEFAULT_STALL_TIMEOUT
    max_body_size: int = DEFAULT_MAX_BODY_SIZE
    log_format: LogFormat = LogFormat.TEXT
    #: twistd's own ``--logfile`` (JSON lines go there too); ``None``: stdout.
    log_file: str | None = None
    #: Pin for the worker model; ``inf`` is Ollama's "forever" (-1).
    keep_alive: float = math.inf
    #: The small embedding model kept loaded beside the worker model.
    embed_model: str | None = None
    max_queue: int = DEFAULT_MAX_QUEUE
    #: Batch jobs that may wait: their own bound, far above people's.
    max_batch_queue: int = DEFAULT_MAX_BATCH_QUEUE
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    job_ttl: float = DEFAULT_JOB_TTL
    #: The hold for a model whose callers' return is not known yet (ADR-0024);
    #: ``None``: up to a load of it (``--swap-rule fixed``: 250 ms).
    swap_grace: float | None = None
    #: The resident model's quantum while a person's call for another waits,
    #: in loads of the waiting model; 0: none.
    swap_quantum: float = DEFAULT_SWAP_QUANTUM
    swap_rule: SwapRule = SwapRule.LEARNED
    #: An interactive job waiting this long is overtaken no more, and batch
    #: work gets a turn this often (ADR-0021).
    max_wait: float = DEFAULT_MAX_WAIT
    #: The batch class's bound on being overtaken.
    batch_max_wait: float = DEFAULT_BATCH_MAX_WAIT
    #: How long a sync caller waits in the queue for an Ollama that does not answer.
    outage_wait: float = DEFAULT_CALLER_WAIT
    #: On a stop, how long running streams and the running job may take to finish.
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    #: The time a request's headers, then its body, may take to arrive (408 past it).
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    #: An idle keep-alive connection is closed after this long.
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    #: Open client connections allowed; ``None``: derived from the open-files limit.
    max_connections: int | None = None
    #: False relays generation calls at once (diagnostics and benchmarks).
    queue: bool = True
    #: Key for the HMAC-SHA256 signature on state webhooks; ``None``: unsigned.
    webhook_secret: str | None = None
    #: A Standard Webhooks secret: a batch's end goes out as OpenAI's event.
    openai_webhook_secret: str | None = None
    #: Serve ``/metrics`` without the token (for a scraper on a trusted network).
    metrics_public: bool = False
    #: Artifacts up to this many bytes are inlined in job views and webhooks.
    artifact_inline_limit: int = DEFAULT_ARTIFACT_INLINE_LIMIT
    #: Browser origins allowed beside Ollama's defaults (``foreman.http.cors``).
    origins: tuple[str, ...] = ()

    def __repr__(self) -> str:
        # Secrets never reach a log line, even through a repr.
        shown = attrs.asdict(self, recurse=False)
        for secret in ("token", "ollama_token", "webhook_secret", "openai_webhook_secret"):
            if shown[secret] is not None:
                shown[secret] = "<redacted>"
        if shown["database"] is not None:
            shown["database"] = mask_password(shown["database"])
        inner = ", ".join(f"{key}={value!r}" for key, value in shown.items())
        return f"Config({inner})"


class StartupRefused(SystemExit):
    """A configuration foreman will not run with; the message says why."""


def needs_a_credential(config: Config) -> bool:
    """Whether the listener reaches beyond loopback with neither a token nor
    ``--allow-unauthenticated``: then a key must be needed to get in."""
    return not (config.token or config.allow_unauthenticated or is_loopback_only(config.listen))


def check_exposure(config: Config, *, keys: bool = False) -> None:
    """Refuse to listen beyond loopback unauthenticated (ADR-0010); ``keys``:
    whether there are keys (docs/keys.md), which count as a credential."""
    if keys or not needs_a_credential(config):
        return
    raise StartupRefused(
        f"foreman: refusing to listen on {config.listen!r} without a token: set FOREMAN_TOKEN "
        "or --token-file, add a key (foreman keys add, on loopback first), listen on "
        "loopback, or pass --allow-unauthenticated"
    )
