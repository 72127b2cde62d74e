"""``periodic history``: a job's latest runs, as the store recorded them."""

from __future__ import annotations

import datetime
from typing import Any

from ..stores import RunRecord
from .text import iso, relative, span, when

#: Columns an error's line may take, indented under its run.
_ERROR_WIDTH = 76


def history_json(name: str, runs: list[RunRecord]) -> dict[str, Any]:
    """The object ``periodic history --json`` prints."""
    return {
        "job": name,
        "runs": [
            {
                "slot": iso(run.slot),
                "node": run.node,
                "fence": run.fence,
                "started_at": iso(run.started_at),
                "finished_at": iso(run.finished_at),
                "outcome": run.outcome,
                "duration": run.duration,
                "error": run.error,
                "triggered": run.triggered,
            }
            for run in runs
        ],
    }


def render_history(name: str, runs: list[RunRecord], *, now: datetime.datetime) -> list[str]:
    """The lines of ``periodic history``: a table of runs, newest first, each failed one
    followed by the first line of its error; a triggered run's slot is marked ``*``."""
    if not runs:
        return [f"no runs of {name} yet"]
    header = ("SLOT", "OUTCOME", "TOOK", "ENDED", "NODE", "FENCE")
    rows = [
        (
            when(run.slot) + ("*" if run.triggered else ""),
            run.outcome or "unfinished",
            "-" if run.duration is None else _duration(run.duration),
            "-" if run.finished_at is None else relative(run.finished_at, now),
            run.node,
            "-" if run.fence is None else str(run.fence),
        )
        for run in runs
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row, run in zip([header, *rows], [None, *runs], strict=True):
        lines.append(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
        if run is not None and run.error:
            lines.append("  " + _cut(run.error.strip().splitlines()[0], _ERROR_WIDTH))
    if any(run.triggered for run in runs):
        lines.append("* triggered: a run asked for, beside the schedule")
    return lines


def _duration(seconds: float) -> str:
    return f"{seconds:.2f}s" if seconds < 60 else span(seconds)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
