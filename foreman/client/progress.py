"""Live progress of a job being waited for, on a terminal or in a log.

``foreman submit --wait`` and ``foreman wait`` hand each view that
:meth:`~foreman.client.JobsClient.wait` reads of the unfinished job to a
:class:`Progress` on stderr. On a terminal it keeps one status line,
rewritten in place (carriage return, clear to end of line) and redrawn every
second so that the times tick; anywhere else it prints a plain line when the
job's state or queue position changes. It never writes to stdout: the answer
printed there at the end is the same with or without it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, TextIO

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from foreman.client.output import timestamp

#: How often a terminal's status line is redrawn, so that its times tick.
TICK = 1.0
#: ANSI "erase in line", from the cursor to the end.
CLEAR_TO_END = "\x1b[K"
SEPARATOR = " · "


def describe(view: Mapping[str, Any], now: float) -> str:
    """One line about an unfinished job, e.g. ``queued · position 3 · waited 12s``.

    Queued: its position (1: it runs next) and how long since it was
    submitted; loading and working: how long it has been in that state.
    """
    state = view.get("state")
    if state == "queued":
        parts = ["queued"]
        position = view.get("position")
        if isinstance(position, int) and not isinstance(position, bool):
            parts.append(f"position {position}")
        parts.append(_since("waited ", view.get("created_at"), now))
    elif state == "loading":
        model = view.get("model")
        parts = [f"loading {model}" if isinstance(model, str) else "loading"]
        parts.append(_since("", view.get("updated_at"), now))
    else:
        parts = [state if isinstance(state, str) else "?"]
        parts.append(_since("", view.get("updated_at"), now))
    return SEPARATOR.join(part for part in parts if part)


def ticking(seconds: float) -> str:
    """A duration that visibly ticks: ``12s``, ``2m05s``, ``1h02m``."""
    whole = int(max(0.0, seconds))
    if whole < 60:
        return f"{whole}s"
    minutes, whole = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{whole:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _since(label: str, moment: Any, now: float) -> str:
    start = timestamp(moment)
    return "" if start is None else label + ticking(now - start)


class Progress:
    """Shows an unfinished job on ``stream``: a status line (``tty``) or plain lines.

    ``clock`` tells the time and paces the status line's redrawing (a
    :class:`~twisted.internet.task.Clock` in tests); ``columns`` is the
    terminal's width, which the status line never reaches (a wrapped line
    could not be rewritten in place).
    """

    def __init__(
        self, stream: TextIO, clock: IReactorTime, *, tty: bool, columns: int = 80
    ) -> None:
        self._stream = stream
        self._clock = clock
        self.tty = tty
        self._columns = max(2, columns)
        self._view: Mapping[str, Any] | None = None
        #: Plain lines: the (state, position) last printed.
        self._said: tuple[Any, Any] | None = None
        #: Status line: whether one is on the screen.
        self._shown = False
        self._ticker: LoopingCall | None = None
        self._broken = False

    @classmethod
    def on(cls, stream: TextIO, clock: IReactorTime, environ: Mapping[str, str]) -> Progress:
        """For ``stream``: a status line on a terminal (not ``TERM=dumb``), else plain lines."""
        tty = _isatty(stream) and environ.get("TERM") != "dumb"
        return cls(stream, clock, tty=tty, columns=_columns(stream) if tty else 80)

    def show(self, view: Mapping[str, Any]) -> None:
        """The job as ``wait`` last read it (not finished)."""
        self._view = view
        if self.tty:
            if self._ticker is None:
                self._ticker = LoopingCall(self._draw)
                self._ticker.clock = self._clock
                self._ticker.start(TICK, now=False)
            self._draw()
            return
        said = (view.get("state"), view.get("position"))
        if said != self._said:
            self._said = said
            self._write(describe(view, self._clock.seconds()) + "\n")

    def close(self) -> None:
        """Stop redrawing and take the status line away (before anything else is printed)."""
        ticker, self._ticker = self._ticker, None
        if ticker is not None and ticker.running:
            ticker.stop()
        if self._shown:
            self._shown = False
            self._write("\r" + CLEAR_TO_END)

    def _draw(self) -> None:
        if self._view is None:
            return
        line = describe(self._view, self._clock.seconds())
        if len(line) >= self._columns:
            line = line[: self._columns - 2].rstrip() + "…"
        self._shown = True
        self._write("\r" + line + CLEAR_TO_END)

    def _write(self, text: str) -> None:
        # Progress is a courtesy: a stream that cannot take it (closed, a
        # broken pipe) ends the progress, never the wait.
        if self._broken:
            return
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):
            self._broken = True


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _columns(stream: TextIO) -> int:
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 80
    return columns if columns > 0 else 80
