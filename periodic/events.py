"""The events a scheduler emits, and :func:`subscribe` to receive them.

Every event is a frozen record with a ``job`` field (the job's name). Each run emits
exactly one :class:`Started` and one last :class:`Finished` (with a ``retry`` policy, a
failed try that is tried again ends in a ``Finished(will_retry=True)``, and the next try
begins with a :class:`Retrying`); each tick that starts no run emits
one :class:`Skipped`; ``on_overlap="stop_previous"`` emits a :class:`StoppedPrevious` for
each run it cancels. Peers emit :class:`LeadershipChanged` when they gain or lose the
leadership of their election. A job with ``overdue_after`` emits :class:`Overdue` when no
run finished ``ok`` for that long, and :class:`Recovered` when it is not overdue any more.
"""

from ._events import CancelReason as CancelReason
from ._events import Event as Event
from ._events import Finished as Finished
from ._events import Handler as Handler
from ._events import LeadershipChanged as LeadershipChanged
from ._events import Outcome as Outcome
from ._events import Overdue as Overdue
from ._events import Recovered as Recovered
from ._events import RecoveredBy as RecoveredBy
from ._events import Retrying as Retrying
from ._events import Skipped as Skipped
from ._events import SkipReason as SkipReason
from ._events import Started as Started
from ._events import StoppedPrevious as StoppedPrevious
from ._events import Subscription as Subscription
from ._events import subscribe as subscribe

__all__ = [
    "CancelReason",
    "Event",
    "Finished",
    "Handler",
    "LeadershipChanged",
    "Outcome",
    "Overdue",
    "Recovered",
    "RecoveredBy",
    "Retrying",
    "SkipReason",
    "Skipped",
    "Started",
    "StoppedPrevious",
    "Subscription",
    "subscribe",
]
