"""The exceptions ``periodic`` raises on purpose.

Bad options raise the built-in :class:`TypeError` or :class:`ValueError`; misuse of a
scheduler (serving it twice at once, ticking one that is not served) raises
:class:`RuntimeError`. Everything else is a :class:`PeriodicError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._events import Skipped, SkipReason

__all__ = ["JobNotStarted", "NotInManualMode", "PeriodicError"]


class PeriodicError(Exception):
    """Base class of the errors specific to ``periodic``."""


class NotInManualMode(PeriodicError):
    """A manual tick was asked of a scheduler in ``mode="auto"``."""


class JobNotStarted(PeriodicError):
    """:func:`periodic.testing.sync_tick` ticked, and no run started.

    Attributes:
        reason: Why: ``guard``, ``guard_error``, ``overlap`` (or ``not_leader``).
        event: The :class:`~periodic.events.Skipped` event the tick emitted.
    """

    def __init__(self, event: Skipped) -> None:
        self.event = event
        self.reason: SkipReason = event.reason
        detail = f": {event.error!r}" if event.error is not None else ""
        super().__init__(f"job {event.job!r} started no run: {event.reason}{detail}")
