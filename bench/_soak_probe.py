"""What ``bench/soak.py`` reads off foreman: its process (``/proc``), ``/metrics``, its files.

Everything here reads; nothing changes foreman. The process figures come from
``/proc/<pid>`` (Linux only): resident memory from ``status``, open file
descriptors from ``fd``, and the TCP connections among them by matching each
socket's inode against ``net/tcp`` and ``net/tcp6`` (which list the whole
network namespace's sockets, so only foreman's own inodes are counted).
"""

from __future__ import annotations

import os
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

#: TCP states in /proc/net/tcp (include/net/tcp_states.h).
_LISTEN = "0A"
_CLOSE_WAIT = "08"


@dataclass
class ProcessSample:
    rss_mb: float
    fds: int
    #: Connections to foreman's port (not the listening socket), by anyone.
    inbound: int
    #: Connections from foreman to the simulated Ollama.
    upstream: int
    #: Other TCP connections of foreman's (webhook deliveries).
    outbound: int
    #: foreman's sockets in CLOSE_WAIT: the peer closed, foreman has not.
    close_wait: int
    #: CPU time foreman has used so far (user + system), seconds.
    cpu_s: float


def _tcp_table(pid: int) -> dict[int, tuple[int, int, str]]:
    """inode -> (local port, remote port, state) for every TCP socket in the namespace."""
    table: dict[int, tuple[int, int, str]] = {}
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 10:
                continue
            local, remote, state, inode = parts[1], parts[2], parts[3], int(parts[9])
            table[inode] = (
                int(local.rsplit(":", 1)[1], 16),
                int(remote.rsplit(":", 1)[1], 16),
                state,
            )
    return table


def _socket_inodes(pid: int) -> tuple[int, list[int]]:
    """How many descriptors the process has open, and the inodes of its sockets."""
    count, inodes = 0, []
    for entry in os.scandir(f"/proc/{pid}/fd"):
        count += 1
        try:
            target = os.readlink(entry.path)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.append(int(target[8:-1]))
    return count, inodes


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_seconds(pid: int) -> float:
    # Fields 14 and 15 of /proc/<pid>/stat, after the command name in parentheses.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sample_process(pid: int, port: int, upstream_port: int) -> ProcessSample:
    fds, inodes = _socket_inodes(pid)
    table = _tcp_table(pid)
    inbound = upstream = outbound = close_wait = 0
    for inode in inodes:
        found = table.get(inode)
        if found is None:
            continue
        local, remote, state = found
        if state == _LISTEN:
            continue
        close_wait += state == _CLOSE_WAIT
        if local == port:
            inbound += 1
        elif remote == upstream_port:
            upstream += 1
        else:
            outbound += 1
    return ProcessSample(
        _rss_mb(pid), fds, inbound, upstream, outbound, close_wait, _cpu_seconds(pid)
    )


# -- /metrics ---------------------------------------------------------------------------

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass
class Metrics:
    """The few figures of foreman's ``/metrics`` that the soak follows."""

    queue_depth: float = 0.0
    worker_busy: float = 0.0
    #: Requests answered, by status code, all routes.
    requests: dict[int, float] = field(default_factory=dict)
    webhooks: dict[str, float] = field(default_factory=dict)
    jobs_finished: dict[str, float] = field(default_factory=dict)
    #: foreman's own count of client connections, its cap, and what the cap did.
    client_connections: float = 0.0
    connections_limit: float = 0.0
    connections_closed_idle: float = 0.0
    connections_refused: float = 0.0
    model_loads: float = 0.0

    @property
    def total(self) -> float:
        return sum(self.requests.values())

    def count(self, low: int, high: int) -> float:
        return sum(n for status, n in self.requests.items() if low <= status <= high)


_CONNECTIONS = {
    "foreman_client_connections": "client_connections",
    "foreman_client_connections_limit": "connections_limit",
    "foreman_client_connections_closed_idle_total": "connections_closed_idle",
    "foreman_client_connections_refused_total": "connections_refused",
    "foreman_model_loads_total": "model_loads",
}


def parse_metrics(text: str) -> Metrics:
    found = Metrics()
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, value = match["name"], float(match["value"])
        labels = dict(_LABEL.findall(match["labels"] or ""))
        if name == "foreman_queue_depth":
            found.queue_depth = value
        elif name == "foreman_worker_busy":
            found.worker_busy = value
        elif name == "foreman_http_requests_total":
            status = int(labels.get("status", "0"))
            found.requests[status] = found.requests.get(status, 0.0) + value
        elif name == "foreman_webhook_deliveries_total":
            found.webhooks[labels.get("outcome", "?")] = value
        elif name == "foreman_jobs_finished_total":
            found.jobs_finished[labels.get("state", "?")] = value
        elif name in _CONNECTIONS:
            setattr(found, _CONNECTIONS[name], value)
    return found


# -- foreman's files ----------------------------------------------------------------------


def pending_webhooks(data_dir: Path) -> int:
    """Rows in foreman's webhook outbox (``deliveries``): events not yet delivered or dropped."""
    database = data_dir / "foreman.sqlite3"
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)
    try:
        (count,) = connection.execute("SELECT count(*) FROM deliveries").fetchone()
    finally:
        connection.close()
    return int(count)


#: Lines of twistd's text log that a soak should not see: errors, and tracebacks.
_BAD_LOG_LINE = re.compile(r"#(error|critical)\]|Traceback \(most recent call last\)|Unhandled")


def log_trouble(data_dir: Path, name: str) -> list[str]:
    """Error-level lines and tracebacks in foreman's log (and its rotated parts)."""
    trouble = []
    for path in sorted(data_dir.glob(name + "*")):
        with path.open(errors="replace") as log:
            trouble += [line.rstrip() for line in log if _BAD_LOG_LINE.search(line)]
    return trouble


def log_warnings(data_dir: Path, name: str) -> dict[str, int]:
    """Warning lines in foreman's log, by what they start with (a rough grouping)."""
    grouped: dict[str, int] = {}
    for path in sorted(data_dir.glob(name + "*")):
        with path.open(errors="replace") as log:
            for line in log:
                if "#warn]" in line:
                    gist = re.sub(r"\b[0-9A-Z]{26}\b", "<job>", line.split("] ", 1)[-1])
                    gist = re.sub(r"\d+", "N", gist)[:60]
                    grouped[gist] = grouped.get(gist, 0) + 1
    return grouped
