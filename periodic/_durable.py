"""The store's part of :class:`~periodic.Periodic`: registering the job, catching up what
fell due while no process ran it, claiming each slot before its run, recording the run."""

from __future__ import annotations

import contextlib
import datetime
import functools
import inspect
import logging
from typing import TYPE_CHECKING

import trio

from ._clocks import DECIDED, Parts
from ._cron import UTC, IntervalGrid, latest_fire
from ._events import Finished, Skipped, SkipReason
from ._options import CatchUp, DelayMode
from ._runs import Run
from .peers._base import Peer, default_node
from .stores._base import JobPaused, JobState, Store

if TYPE_CHECKING:
    from ._clocks import Trigger, _Outcome, _Schedule

_log = logging.getLogger("periodic")

# Missed slots that catch_up="all" runs (within its window), or a cron job counts, at most.
_MAX_CATCH_UP = 100_000
# The wall clock's resolution: the instant just before another.
_TICK = datetime.timedelta(microseconds=1)
# Error texts kept in a store are cut at this length.
_ERROR_TEXT = 2000
# Why a tick for a store's trigger may start no run and leave the trigger pending.
_REFUSALS = frozenset(
    {SkipReason.GUARD, SkipReason.GUARD_ERROR, SkipReason.OVERLAP, SkipReason.NOT_LEADER}
)


@functools.cache
def _takes_triggers(cls: type[Store]) -> bool:
    """Whether a store's claim takes ``trigger`` (one written before it does not)."""
    return "trigger" in inspect.signature(cls.claim).parameters


@functools.cache
def _process_node() -> str:
    """This process's node in a store's records, for jobs without a peer."""
    return default_node()


class Durable(Parts):
    """What a job with a store does besides ticking: see the "Durable jobs" docs page."""

    __slots__ = ()

    async def _register(self, store: Store) -> JobState:
        """The job's record, made on its first serve; its interval grid, if it has one."""
        wall = self._wall_now()
        schedule = self._schedule_text()
        anchor = wall + datetime.timedelta(seconds=self._first_delay)
        if self.overdue_after is None:  # (as a store written before overdue_after takes it)
            record = await store.register(self.name, schedule=schedule, anchor=anchor)
        else:
            record = await store.register(
                self.name, schedule=schedule, anchor=anchor, overdue_after=self.overdue_after
            )
        if self._schedule is None and self.delay_mode is not DelayMode.SHIFTED:
            # The grid is the store's: the same on every process and across restarts.
            self._state.schedule = IntervalGrid.of(record.anchor, self._every)
        return record

    def _schedule_text(self) -> str:
        if self.cron is not None:
            return f"cron {self.cron} {self.tz or 'UTC'}"
        return f"every {self._every:g}s" + (
            " shifted" if self.delay_mode is DelayMode.SHIFTED else ""
        )

    def _plan_from_store(self, record: JobState) -> None:
        """Set the next fire time from what the store knows: the slots that fell due
        after the last claimed one and by now were missed, and ``catch_up`` says what
        becomes of them."""
        state = self._state
        schedule = state.schedule
        assert schedule is not None
        wall = self._wall_now()
        last = record.last_slot
        if record.paused:  # what falls due while paused is never caught up
            state.fire = schedule.next_after(wall).astimezone(UTC)
            return
        if last is not None and record.resumed_at is not None and record.resumed_at > last:
            last = record.resumed_at  # nor what fell due while it was paused
        if last is None:  # a first serve has missed nothing
            if isinstance(schedule, IntervalGrid) and record.anchor >= wall:
                state.fire = record.anchor
            else:
                state.fire = schedule.next_after(wall).astimezone(UTC)
            return
        peer = self.peer
        if peer is not None and not peer.is_leader():
            # A follower: the leader catches up; this process does when it gains.
            state.fire = schedule.next_after(max(last, wall)).astimezone(UTC)
            return
        first = schedule.next_after(last).astimezone(UTC)
        if first > wall:
            state.fire = first
            return
        window = self.catch_up_window
        oldest_kept = None if window is None else wall - datetime.timedelta(seconds=window)
        policy = self.catch_up
        if policy is CatchUp.LATEST:
            latest = self._latest_slot(schedule, first, wall)
            if oldest_kept is None or latest >= oldest_kept:
                # Tick for the oldest: the missed-tick rule moves it to the latest and
                # reports the others.
                state.fire = first
                return
        if policy is CatchUp.ALL:
            assert oldest_kept is not None
            # Run those within the window (a bounded many), count the older ones.
            start = max(first, schedule.next_after(oldest_kept - _TICK).astimezone(UTC))
            dropped = self._count_slots(schedule, first, start - _TICK)
            state.backlog.clear()  # (a replan: what was queued is planned again)
            state.backlog.extend(self._slots(schedule, start, wall))
        else:
            dropped = self._count_slots(schedule, first, wall)
        if dropped:
            self._skip(SkipReason.MISSED, self._cron_due(first), count=dropped)
        state.fire = schedule.next_after(wall).astimezone(UTC)

    def _slots(
        self, schedule: _Schedule, first: datetime.datetime, wall: datetime.datetime
    ) -> list[datetime.datetime]:
        """The slots from ``first`` to ``wall``, both included (at most a bounded many)."""
        slots: list[datetime.datetime] = []
        slot = first
        while slot <= wall and len(slots) < _MAX_CATCH_UP:
            slots.append(slot)
            slot = schedule.next_after(slot).astimezone(UTC)
        return slots

    def _count_slots(
        self, schedule: _Schedule, first: datetime.datetime, until: datetime.datetime
    ) -> int:
        """How many slots from ``first`` to ``until``, both included: exactly for an
        interval grid; for a cron schedule, counted up to ``_MAX_CATCH_UP``."""
        if until < first:
            return 0
        if isinstance(schedule, IntervalGrid):
            return schedule.slots(first - _TICK, until)
        return len(self._slots(schedule, first, until))

    def _latest_slot(
        self, schedule: _Schedule, first: datetime.datetime, wall: datetime.datetime
    ) -> datetime.datetime:
        later = schedule.next_after(first).astimezone(UTC)
        return first if later > wall else latest_fire(schedule, later, wall)

    def _tick_backlog(self, schedule: _Schedule) -> None:
        """Tick for the oldest missed slot of ``catch_up="all"``; the next one follows
        once its run is over."""
        state = self._state
        slot = state.backlog.popleft()
        # (retries of a caught-up slot's run stop at once: see _retry_until)
        state.in_backlog = True
        outcome = self._tick_start(self._cron_due(slot), None, slot.astimezone(schedule.tz))
        if not isinstance(outcome, DECIDED):
            self._hand_over(outcome, self._after_backlog)
        else:
            self._after_backlog(outcome)

    def _after_backlog(self, outcome: _Outcome) -> None:
        self._state.in_backlog = False
        if isinstance(outcome, Run):
            outcome.on_done = self._arm_now
        else:
            self._arm_now()

    def _arm_now(self) -> None:
        state = self._state
        if state.ticking and state.alarm is not None:
            state.alarm.arm(trio.current_time())

    async def _watch_gains(self, peer: Peer, store: Store, held: int | None) -> None:
        """When this process gains the leadership (a fence other than ``held``), catch up
        from the store what the cluster missed (a leader that died, a hand-over)."""
        state = self._state
        while True:
            fence = peer.fence
            if fence == held or fence is None:
                held = fence
                await peer.wait_change()
                continue
            held = fence
            try:
                record = await store.job(self.name)
            except Exception as exc:
                _log.warning(
                    "job %r: leadership gained, but the store could not say what was missed: %r",
                    self.name,
                    exc,
                    extra={"periodic_job": self.name},
                )
                continue
            if record is None or state.alarm is None:
                continue
            state.replan = record
            if state.alarm.armed:  # (else a tick is under way, and re-arms when done)
                state.alarm.arm(trio.current_time())

    async def _claim_and_spawn(
        self,
        scheduled_at: float,
        fence: int | None,
        fire_time: datetime.datetime | None,
        retry_until: float,
        trigger: Trigger | None = None,
    ) -> _Outcome:
        store = self.store
        assert store is not None
        wall = self._wall_now()
        # The slot: a cron fire time or a grid point; else the wall time it was due.
        slot = (
            fire_time.astimezone(UTC)
            if fire_time is not None
            else wall - datetime.timedelta(seconds=trio.current_time() - scheduled_at)
        )
        if trigger == "local" and not _takes_triggers(type(store)):
            trigger = None  # a store written before triggers cannot pause either
        try:
            if trigger is None:
                key = await store.claim(
                    self.name, slot=slot, node=self._node, fence=fence, started_at=wall
                )
            else:
                key = await store.claim(
                    self.name,
                    slot=slot,
                    node=self._node,
                    fence=fence,
                    started_at=wall,
                    trigger=trigger,
                )
        except JobPaused:
            return self._skip(SkipReason.PAUSED, scheduled_at)
        except Exception as exc:  # never run unclaimed
            return self._skip(SkipReason.STORE_ERROR, scheduled_at, error=exc)
        if key is None:
            return self._skip(SkipReason.CLAIMED, scheduled_at)
        if self._state.overdue_alarm is not None:
            self._count_again()
        recorder = functools.partial(self._record_end, store, key)
        run = self._runs.spawn(
            scheduled_at, fence, fire_time or slot, retry_until, recorder=recorder
        )
        if run is None:  # shut down meanwhile: the slot was claimed, and ends unrun
            with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                await store.finish(
                    self.name,
                    key,
                    outcome="cancelled",
                    finished_at=self._wall_now(),
                    duration=0.0,
                    error=None,
                )
        return run

    async def _record_end(self, store: Store, key: int, finished: Finished) -> None:
        error = None
        if finished.error is not None:
            error = f"{type(finished.error).__name__}: {finished.error}"[:_ERROR_TEXT]
        try:
            await store.finish(
                self.name,
                key,
                outcome=finished.outcome.value,
                finished_at=self._wall_now(),
                duration=finished.duration,
                error=error,
            )
        except Exception as exc:  # the run is over either way
            _log.warning(
                "job %r: the store could not record the end of run %d: %r",
                self.name,
                finished.run_id,
                exc,
                extra={"periodic_job": self.name, "periodic_run_id": finished.run_id},
            )

    def _store_triggered(self) -> None:
        """The store says a trigger may be pending for this job: try to take it (in a
        task of serve's nursery; one at a time)."""
        state = self._state
        if state.trigger_task:
            state.trigger_again = True
            return
        nursery = state.nursery
        if nursery is None or not self._runs.accepting:
            return
        state.trigger_task = True
        # In serve's context, as its ticks are (not the notifying task's).
        assert state.context is not None
        state.context.run(nursery.start_soon, self._take_store_triggers)

    async def _take_store_triggers(self) -> None:
        state = self._state
        try:
            while True:
                state.trigger_again = False
                peer = self.peer
                # (a follower leaves the trigger to the leader, without a word)
                if peer is None or peer.is_leader():
                    await self._take_store_trigger()
                if not state.trigger_again:
                    return
        finally:
            state.trigger_task = False

    async def _take_store_trigger(self) -> None:
        """One tick for the store's trigger, through the guards; the claim takes it. A
        tick the guards refuse leaves it pending (tried again as the store repeats it),
        reported once until one is taken."""
        state = self._state
        outcome = await self._explicit_tick("store", quiet=state.trigger_refused)
        state.trigger_refused = isinstance(outcome, Skipped) and outcome.reason in _REFUSALS

    @property
    def _node(self) -> str:
        return self.peer.node if self.peer is not None else _process_node()
