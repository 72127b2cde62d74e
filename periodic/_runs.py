"""The state a scheduler keeps: its runs, its counters, and their snapshot."""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import attrs
import trio

from ._events import CancelReason, Finished, Outcome, SkipReason

if TYPE_CHECKING:
    from .peers._base import PeerBase


@attrs.frozen(kw_only=True)
class Statistics:
    """A snapshot of a scheduler's counters; see :meth:`Periodic.statistics`.

    Attributes:
        runs_started: Runs started since the :class:`Periodic` was made.
        running: Runs going on now.
        finished: Finished runs by outcome (``"ok"``, ``"error"``, ``"timeout"``,
            ``"cancelled"``), every outcome present.
        skipped: Skipped ticks by reason (``"overlap"``, ``"guard"``, ``"guard_error"``,
            ``"missed"``), every reason present; ``missed`` counts ticks, not events.
        next_tick_at: When the next automatic tick is due (``trio.current_time()``), or
            ``None`` when not served, in manual mode, or in shifted mode while a run goes on.
    """

    runs_started: int
    running: int
    finished: Mapping[str, int]
    skipped: Mapping[str, int]
    next_tick_at: float | None


@attrs.define(eq=False)
class _Run:
    run_id: int
    scheduled_at: float
    fence: int | None
    fire_time: datetime.datetime | None
    scope: trio.CancelScope
    done: trio.Event = attrs.field(factory=trio.Event)
    cancel_reason: CancelReason | None = None
    started: bool = False
    finished: Finished | None = None
    # The two deadlines of the run's scope: its timeout, and the end of the lease it
    # was started under (for a peer-guarded job that cancels on leadership loss).
    timeout_at: float = math.inf
    lease_at: float = math.inf
    # The peer told of this run (PeerBase._run_began), to be told when it ends.
    tracked_by: PeerBase | None = None

    def set_deadlines(
        self, *, timeout_at: float | None = None, lease_at: float | None = None
    ) -> None:
        if timeout_at is not None:
            self.timeout_at = timeout_at
        if lease_at is not None:
            self.lease_at = lease_at
        self.scope.deadline = min(self.timeout_at, self.lease_at)

    # stop_previous reached the run before its task began: StoppedPrevious must still
    # come after its Started, so the run's task emits it.
    stop_pending: bool = False

    def cancel(self, reason: CancelReason) -> None:
        # A run whose timeout already fired stays a timeout.
        if self.cancel_reason is None and not self.scope.cancel_called:
            self.cancel_reason = reason
        self.scope.cancel()


@attrs.define(eq=False)
class _State:
    serving: bool = False
    accepting: bool = False
    nursery: trio.Nursery | None = None
    tick_lock: trio.Lock | None = None
    running: dict[int, _Run] = attrs.field(factory=dict)
    next_run_id: int = 1
    runs_started: int = 0
    finished: dict[str, int] = attrs.field(factory=lambda: dict.fromkeys(Outcome, 0))
    skipped: dict[str, int] = attrs.field(factory=lambda: dict.fromkeys(SkipReason, 0))
    next_tick_at: float | None = None
    thread_limiter: trio.CapacityLimiter | None = None
