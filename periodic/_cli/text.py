"""What every subcommand shares: its failure, and how times and spans of time are written."""

from __future__ import annotations

import datetime
import math

UTC = datetime.timezone.utc


class CommandError(Exception):
    """The command cannot do what it was asked: one line for stderr, and an exit status."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def one_line(text: str) -> str:
    """``text`` with its line breaks and runs of spaces made single spaces."""
    return " ".join(text.split())


def iso(moment: datetime.datetime | None) -> str | None:
    """ISO 8601 in UTC (``2026-05-01T12:03:00+00:00``), or ``None``: the JSON form."""
    return None if moment is None else moment.astimezone(UTC).isoformat()


def when(moment: datetime.datetime) -> str:
    """``2026-05-01 12:03:00Z``, with milliseconds when it has a fraction of a second."""
    moment = moment.astimezone(UTC)
    text = moment.strftime("%Y-%m-%d %H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond // 1000:03d}"
    return text + "Z"


def span(seconds: float) -> str:
    """A span of time in two units at most, rounded down: ``41s``, ``3m05s``, ``2h05m``,
    ``3d04h``."""
    whole = math.floor(max(seconds, 0.0))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def relative(moment: datetime.datetime, now: datetime.datetime) -> str:
    """``3m05s ago`` or ``in 41s``."""
    seconds = (moment - now).total_seconds()
    return f"in {span(seconds)}" if seconds > 0 else f"{span(-seconds)} ago"
