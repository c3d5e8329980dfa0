"""Who this box is to the fleet: a stable id, a name, and where others reach it (ADR-0026).

The id is made once and kept in the data directory (``box-id``), so a box
that restarts is the same box: its start-up recovery finds the jobs it owned,
and the others do not mistake it for a new one. The name is for people (the
status page, ``foreman ps``); the URL is where the other boxes can reach this
one's foreman.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import attrs

from foreman.queue.ulid import is_ulid, new_ulid

#: The file in the data directory that keeps the box's id.
BOX_ID_FILE = "box-id"


@attrs.frozen
class BoxIdentity:
    id: str
    name: str
    #: Where other boxes reach this box's foreman; ``None``: not said.
    url: str | None


def box_id(data_dir: Path) -> str:
    """The box's id, made and kept in ``data_dir`` on the first call."""
    path = data_dir / BOX_ID_FILE
    try:
        kept = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        kept = ""
    except (OSError, UnicodeDecodeError) as e:
        raise RuntimeError(f"cannot read the box id in {path}: {e}") from None
    if is_ulid(kept):
        return kept
    if kept:
        raise RuntimeError(
            f"{path} holds {kept[:40]!r}, not a box id; remove the file to make a new one"
        )
    made = new_ulid()
    data_dir.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".new")
    temporary.write_text(made + "\n", encoding="ascii")
    temporary.replace(path)
    return made


def default_box_name() -> str:
    """The host's short name, as people call the machine."""
    return socket.gethostname().split(".")[0] or "foreman"


def default_advertise_url(listen: str) -> str | None:
    """``http://<host>:<port>`` from a ``tcp:PORT:…`` listen description."""
    match = re.match(r"^tcp6?:(\d+)(?::|$)", listen)
    if match is None:
        return None
    interface = re.search(r"interface=([^:]+)", listen)
    host = interface.group(1) if interface else socket.gethostname()
    if host in ("0.0.0.0", "::"):
        host = socket.gethostname()
    return f"http://{host}:{match.group(1)}"


def identify(data_dir: Path, name: str | None, url: str | None, listen: str) -> BoxIdentity:
    return BoxIdentity(
        box_id(data_dir), name or default_box_name(), url or default_advertise_url(listen)
    )
