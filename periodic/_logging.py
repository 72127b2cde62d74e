"""The built-in log subscriber: turns events into records on the ``periodic`` logger.

The scheduler never logs directly; this module is one consumer of the event stream, as
Parent's ``Periodic.Logger`` is of its telemetry events.
"""

from __future__ import annotations

import logging
from typing import Any

from ._events import (
    CancelReason,
    Event,
    Finished,
    LeadershipChanged,
    Outcome,
    Overdue,
    Recovered,
    Retrying,
    Skipped,
    SkipReason,
    Started,
    StoppedPrevious,
    Subscription,
    subscribe,
)


class _LastResort(logging.Filter):
    """Lets the warnings and errors of ``periodic`` be seen when nothing is configured.

    The ``periodic`` logger has a ``NullHandler`` (the library convention), which keeps its
    records from Python's last-resort handler (stderr): that would hide a failing job from
    an application that configured no logging at all. So, as a filter of the logger, this
    hands a record to ``logging.lastResort`` itself when the ``NullHandler`` is the only
    handler on the record's way up. Any handler the application adds, anywhere on that
    way, takes over; ``logging.lastResort = None`` silences it as usual.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        last_resort = logging.lastResort
        if (
            last_resort is not None
            and record.levelno >= last_resort.level
            and not _other_handlers(record)
        ):
            last_resort.handle(record)
        return True


def _other_handlers(record: logging.LogRecord) -> bool:
    # Python's own test before it falls back to lastResort: any handler at all.
    current: logging.Logger | None = logging.getLogger(record.name)
    while current is not None:
        if any(handler is not _null_handler for handler in current.handlers):
            return True
        current = current.parent if current.propagate else None
    return False


logger = logging.getLogger("periodic")
_null_handler = logging.NullHandler()
logger.addHandler(_null_handler)
logger.addFilter(_LastResort())

_SKIP_LEVELS = {
    SkipReason.OVERLAP: logging.INFO,
    SkipReason.GUARD: logging.INFO,
    SkipReason.GUARD_ERROR: logging.ERROR,
    SkipReason.MISSED: logging.WARNING,
    # A follower skips every tick: news only when debugging. Who leads is logged by the
    # peer, when it changes.
    SkipReason.NOT_LEADER: logging.DEBUG,
    # Without a peer, every process but one is refused every slot: not news either.
    SkipReason.CLAIMED: logging.DEBUG,
    SkipReason.STORE_ERROR: logging.WARNING,
    # An operator paused it: every skipped tick is not news.
    SkipReason.PAUSED: logging.DEBUG,
}
_SKIP_TEXT = {
    SkipReason.OVERLAP: "skipped a tick: the previous run is still going (on_overlap=ignore)",
    SkipReason.GUARD: "skipped a tick: the when-guard said no",
    SkipReason.GUARD_ERROR: "skipped a tick: the when-guard raised",
    SkipReason.NOT_LEADER: "skipped a tick: this process is not the leader",
    SkipReason.CLAIMED: "skipped a tick: its slot was claimed already (by another process)",
    SkipReason.STORE_ERROR: "skipped a tick: the store could not claim its slot",
    SkipReason.PAUSED: "skipped a tick: the job is paused",
}


def _finished_level(event: Finished) -> int:
    if event.outcome is Outcome.OK:
        return logging.INFO
    if event.will_retry:
        return logging.WARNING
    if event.outcome is Outcome.CANCELLED:
        if event.cancel_reason is CancelReason.SHUTDOWN:
            return logging.INFO
        return logging.WARNING
    return logging.ERROR


class _EventLogger:
    def __init__(self) -> None:
        self.min_level = logging.NOTSET

    def __call__(self, event: Event) -> None:
        if isinstance(event, Started):
            self._started(event)
        elif isinstance(event, Finished):
            self._finished(event)
        elif isinstance(event, Skipped):
            self._skipped(event)
        elif isinstance(event, StoppedPrevious):
            self._log(
                logging.WARNING,
                event,
                "job %r stopping run %d (on_overlap=stop_previous)",
                (event.job, event.run_id),
                {"periodic_run_id": event.run_id},
            )
        elif isinstance(event, LeadershipChanged):
            self._leadership(event)
        elif isinstance(event, Overdue):
            since = "ever" if event.last_ok_at is None else "its last ok run"
            self._log(
                logging.ERROR,
                event,
                "job %r is overdue: no run finished ok for %.3fs (since %s)",
                (event.job, event.overdue_for, since),
                {
                    "periodic_overdue_for": event.overdue_for,
                    "periodic_last_ok_at": event.last_ok_at,
                },
            )
        elif isinstance(event, Recovered):
            self._log(
                logging.INFO,
                event,
                "job %r is not overdue any more (%s)",
                (event.job, event.reason),
                {"periodic_reason": str(event.reason)},
            )
        elif isinstance(event, Retrying):
            self._log(
                logging.INFO,
                event,
                "job %r run %d: try %d begins",
                (event.job, event.run_id, event.attempt),
                {"periodic_run_id": event.run_id, "periodic_attempt": event.attempt},
            )

    def _leadership(self, event: LeadershipChanged) -> None:
        fields = {
            "periodic_peer": event.name,
            "periodic_node": event.node,
            "periodic_fence": event.fence,
            "periodic_leader": event.leader,
            "periodic_reason": event.reason,
        }
        if event.gained:
            self._log(
                logging.INFO,
                event,
                "peer %r is now leader of %r with fence %s (%s)",
                (event.node, event.name, event.fence, event.reason),
                fields,
            )
        else:
            holder = f"; leader now {event.leader!r}" if event.leader else ""
            # A clean stop is news; a lost lease (an error, an expiry) is a warning.
            self._log(
                logging.INFO if event.reason == "stopped" else logging.WARNING,
                event,
                "peer %r lost the leadership of %r (fence %s): %s%s",
                (event.node, event.name, event.fence, event.reason, holder),
                fields,
            )

    def _enabled(self, level: int) -> bool:
        return level >= self.min_level and logger.isEnabledFor(level)

    def _log(
        self,
        level: int,
        event: Event,
        msg: str,
        args: tuple[Any, ...],
        fields: dict[str, Any],
        exc: BaseException | None = None,
    ) -> None:
        if not self._enabled(level):
            return
        extra = {
            "periodic_event": type(event).__name__,
            "periodic_job": getattr(event, "job", None),
            **fields,
        }
        exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
        logger.log(level, msg, *args, extra=extra, exc_info=exc_info)

    def _started(self, event: Started) -> None:
        if not self._enabled(logging.INFO):
            return
        fence = "" if event.fence is None else f" with fence {event.fence}"
        self._log(
            logging.INFO,
            event,
            "job %r run %d started%s, %.3fs after it was due",
            (event.job, event.run_id, fence, event.started_at - event.scheduled_at),
            {
                "periodic_run_id": event.run_id,
                "periodic_scheduled_at": event.scheduled_at,
                "periodic_started_at": event.started_at,
                "periodic_fence": event.fence,
            },
        )

    def _finished(self, event: Finished) -> None:
        level = _finished_level(event)
        if not self._enabled(level):
            return
        how = str(event.outcome)
        if event.cancel_reason is not None:
            how = f"{how} ({event.cancel_reason})"
        if event.attempt > 1 or event.will_retry:
            how = f"{how} at try {event.attempt}"
        msg = "job %r run %d finished %s in %.3fs"
        if event.will_retry:
            msg += "; will retry"
        args: tuple[Any, ...] = (event.job, event.run_id, how, event.duration)
        if event.outcome is Outcome.ERROR and event.error is not None:
            msg += ": %r"
            args += (event.error,)
        fields = {
            "periodic_run_id": event.run_id,
            "periodic_outcome": str(event.outcome),
            "periodic_duration": event.duration,
            "periodic_cancel_reason": (
                None if event.cancel_reason is None else str(event.cancel_reason)
            ),
        }
        if event.attempt > 1 or event.will_retry:  # (only where retries happen)
            fields.update(periodic_attempt=event.attempt, periodic_will_retry=event.will_retry)
        self._log(
            level,
            event,
            msg,
            args,
            fields,
            exc=event.error if event.outcome is Outcome.ERROR else None,
        )

    def _skipped(self, event: Skipped) -> None:
        level = _SKIP_LEVELS.get(event.reason, logging.INFO)
        if not self._enabled(level):
            return
        if event.reason is SkipReason.MISSED:
            text = f"missed {event.count} tick{'s' if event.count != 1 else ''}: it ran late"
        else:
            text = _SKIP_TEXT.get(event.reason, f"skipped a tick ({event.reason})")
        msg = "job %r %s"
        args: tuple[Any, ...] = (event.job, text)
        if event.error is not None:
            # As for a failed run: one-line formats that drop the traceback keep the error.
            msg += ": %r"
            args += (event.error,)
        self._log(
            level,
            event,
            msg,
            args,
            {
                "periodic_reason": str(event.reason),
                "periodic_count": event.count,
                "periodic_scheduled_at": event.scheduled_at,
            },
            exc=event.error,
        )


def _level_number(name: str) -> int:
    # getLevelName maps a registered name to its number (and anything else to a str).
    number = logging.getLevelName(name.upper())
    if isinstance(number, int):
        return number
    raise ValueError(f"level must be a known logging level name, got {name!r}")


_event_logger = _EventLogger()
_subscription: Subscription | None = subscribe(_event_logger)


def configure_logging(*, enabled: bool = True, level: int | str = logging.NOTSET) -> None:
    """Switch the built-in event logger on or off, or raise its threshold.

    By default every event becomes a record on the ``periodic`` logger. That logger has
    only a ``NullHandler``: nothing shows unless the application configures logging,
    except warnings and errors (a failed run), which go to Python's last-resort handler
    (stderr) while no handler is configured anywhere. This changes what ``periodic``
    produces without touching the logging tree.

    Args:
        enabled: ``False`` stops producing records at all.
        level: Produce no record below this level (a number or a level name such as
            ``"WARNING"``), whatever the logger's own level.

    Raises:
        ValueError: ``level`` is an unknown level name.
        TypeError: ``level`` is neither an int nor a str.
    """
    global _subscription
    if isinstance(level, bool) or not isinstance(level, (int, str)):
        raise TypeError(f"level must be a logging level (int or name), got {level!r}")
    if isinstance(level, str):
        level = _level_number(level)
    _event_logger.min_level = level
    if enabled and _subscription is None:
        _subscription = subscribe(_event_logger)
    elif not enabled and _subscription is not None:
        _subscription.close()
        _subscription = None
