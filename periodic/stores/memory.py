"""An in-process store, for tests: what a durable store does, kept in memory."""

from __future__ import annotations

import collections
import datetime
import itertools
import json
from collections.abc import Callable

import attrs
import trio

from .._db import utc
from .._options import check_wall_clock
from ._base import (
    FAILURES,
    JobPaused,
    JobState,
    Reminder,
    ReminderStore,
    RunRecord,
    Store,
    check_history,
    check_limit,
    check_overdue_after,
    check_trigger,
    judged,
)

UTC = datetime.timezone.utc


@attrs.define(eq=False)
class _Job:
    state: JobState
    max_fence: int | None = None
    # Run keys, oldest first, with their records and slots.
    runs: collections.OrderedDict[int, RunRecord] = attrs.field(factory=collections.OrderedDict)


@attrs.define(eq=False)
class _Reminder:
    key: str
    fence: int
    fire_at: datetime.datetime
    due_at: datetime.datetime
    payload: str
    attempts: int = 0
    failed: bool = False
    error: str | None = None

    def record(self, attempt: int) -> Reminder:
        return Reminder(
            key=self.key,
            fire_at=self.fire_at,
            payload=json.loads(self.payload),
            fence=self.fence,
            attempt=attempt,
            error=self.error,
        )

    def pending(self) -> Reminder:
        return self.record(self.attempts + 1)


class MemoryStore(Store, ReminderStore):
    """A :class:`~periodic.stores.Store` in this process's memory.

    It keeps its claims as a database would, so tests can serve several jobs (or several
    copies of one) on it, restart them, and read their history; it survives nothing. Like
    the durable stores, it must be served to be used, and takes aware datetimes only.

    Args:
        history: Runs kept per job (older ones are pruned as new ones are claimed).
        wall_clock: The store's clock: a callable returning an aware datetime (default:
            the system's UTC time). It stamps ``registered_at``, ``paused_at``,
            ``resumed_at`` and ``triggered_at``, and judges ``overdue``; give it the fake
            wall clock of a virtual-time test (one that follows ``trio.current_time()``).

    Raises:
        TypeError, ValueError: ``history`` is not an int >= 1, or ``wall_clock`` is not
            callable.
    """

    def __init__(
        self,
        *,
        history: int = 100,
        wall_clock: Callable[[], datetime.datetime] | None = None,
    ) -> None:
        self._history = check_history(history)
        self._wall_clock = check_wall_clock(wall_clock)
        self._jobs: dict[str, _Job] = {}
        self._keys = itertools.count(1)
        self._reminders: dict[str, dict[str, _Reminder]] = {}
        self._fences = itertools.count(1)
        self._serving = False

    def __repr__(self) -> str:
        return f"<MemoryStore {len(self._jobs)} jobs>"

    @property
    def serving(self) -> bool:
        return self._serving

    async def serve(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        if self._serving:
            raise RuntimeError(f"{self!r} is already being served")
        self._serving = True
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await self.wait_detached()  # the jobs' last records first
            self._serving = False

    def _check_serving(self) -> None:
        if not self._serving:
            raise RuntimeError(
                f"{self!r} is not being served: start it first, e.g. "
                "await nursery.start(store.serve)"
            )

    def _now(self) -> datetime.datetime:
        """The store's clock."""
        if self._wall_clock is None:
            return datetime.datetime.now(UTC)
        return utc(self._wall_clock(), "wall_clock()")

    def _found(self, name: str) -> _Job:
        job = self._jobs.get(name)
        if job is None:
            raise LookupError(f"job {name!r} is not registered with {self!r}")
        return job

    async def register(
        self,
        name: str,
        *,
        schedule: str,
        anchor: datetime.datetime,
        overdue_after: float | None = None,
    ) -> JobState:
        """See :meth:`Store.register`.

        Raises:
            RuntimeError: The store is not being served.
            TypeError, ValueError: ``overdue_after`` is neither ``None`` nor a positive,
                finite number of seconds; ``anchor`` (or the time ``wall_clock``
                returned) is not timezone-aware.
        """
        self._check_serving()
        anchor = utc(anchor, "anchor")
        overdue_after = check_overdue_after(overdue_after)
        now = self._now()
        await trio.lowlevel.checkpoint()
        job = self._jobs.get(name)
        if job is None:
            job = self._jobs[name] = _Job(
                JobState(
                    name=name,
                    schedule=schedule,
                    anchor=anchor,
                    overdue_after=overdue_after,
                    registered_at=now,
                )
            )
        else:
            job.state = attrs.evolve(job.state, schedule=schedule, overdue_after=overdue_after)
        return judged(job.state, now)

    async def claim(
        self,
        name: str,
        *,
        slot: datetime.datetime,
        node: str,
        fence: int | None,
        started_at: datetime.datetime,
        trigger: str | None = None,
    ) -> int | None:
        """See :meth:`Store.claim`.

        Raises:
            LookupError: The job is not registered.
            JobPaused: ``trigger`` is ``None`` and the job is paused.
            RuntimeError: The store is not being served.
            ValueError: A time is not timezone-aware, or ``trigger`` is unknown.
        """
        self._check_serving()
        slot, started_at = utc(slot, "slot"), utc(started_at, "started_at")
        trigger = check_trigger(trigger)
        await trio.lowlevel.checkpoint()
        job = self._found(name)
        state = job.state
        if trigger is None and state.paused:
            raise JobPaused(f"job {name!r} is paused in {self!r}")
        if trigger == "store" and state.triggered_at is None:
            return None
        scheduled = trigger is None
        if scheduled and state.last_slot is not None and slot <= state.last_slot:
            return None
        if fence is not None and job.max_fence is not None and fence < job.max_fence:
            return None
        if fence is not None:
            job.max_fence = fence if job.max_fence is None else max(fence, job.max_fence)
        if scheduled:
            state = attrs.evolve(
                state,
                last_slot=slot,
                last_node=node,
                last_fence=fence,
                last_started_at=started_at,
            )
        elif trigger == "store":
            state = attrs.evolve(state, triggered_at=None)
        job.state = state
        key = next(self._keys)
        job.runs[key] = RunRecord(
            slot=slot, node=node, fence=fence, started_at=started_at, triggered=not scheduled
        )
        while len(job.runs) > self._history:
            job.runs.popitem(last=False)
        return key

    async def finish(
        self,
        name: str,
        run: int,
        *,
        outcome: str,
        finished_at: datetime.datetime,
        duration: float,
        error: str | None,
    ) -> None:
        self._check_serving()
        finished_at = utc(finished_at, "finished_at")
        await trio.lowlevel.checkpoint()
        job = self._jobs.get(name)
        record = None if job is None else job.runs.get(run)
        if job is None or record is None:
            return
        job.runs[run] = attrs.evolve(
            record, finished_at=finished_at, outcome=outcome, duration=duration, error=error
        )
        state = job.state
        if outcome == "ok" and (state.last_ok_at is None or finished_at > state.last_ok_at):
            state = attrs.evolve(state, last_ok_at=finished_at)
        if not record.triggered and record.slot == state.last_slot:  # the latest scheduled
            failures = state.consecutive_failures + 1 if outcome in FAILURES else 0
            state = attrs.evolve(
                state,
                last_outcome=outcome,
                last_finished_at=finished_at,
                consecutive_failures=failures,
            )
        job.state = state

    async def jobs(self) -> list[JobState]:
        self._check_serving()
        now = self._now()
        await trio.lowlevel.checkpoint()
        return [judged(self._jobs[name].state, now) for name in sorted(self._jobs)]

    async def job(self, name: str) -> JobState | None:
        self._check_serving()
        now = self._now()
        await trio.lowlevel.checkpoint()
        job = self._jobs.get(name)
        return None if job is None else judged(job.state, now)

    async def runs(self, name: str, *, limit: int = 20) -> list[RunRecord]:
        check_limit(limit)
        self._check_serving()
        await trio.lowlevel.checkpoint()
        job = self._jobs.get(name)
        if job is None:
            return []
        return list(reversed(job.runs.values()))[:limit]

    # -- operating --------------------------------------------------------------------

    async def pause(self, name: str, *, note: str | None = None) -> None:
        """See :meth:`Store.pause`.

        Raises:
            LookupError: The job is not registered.
            RuntimeError: The store is not being served.
        """
        self._check_serving()
        now = self._now()
        await trio.lowlevel.checkpoint()
        job = self._found(name)
        state = job.state
        job.state = attrs.evolve(
            state, paused=True, paused_at=state.paused_at or now, pause_note=note
        )

    async def resume(self, name: str) -> None:
        """See :meth:`Store.resume`.

        Raises:
            LookupError: The job is not registered.
            RuntimeError: The store is not being served.
        """
        self._check_serving()
        now = self._now()
        await trio.lowlevel.checkpoint()
        job = self._found(name)
        if job.state.paused:
            job.state = attrs.evolve(
                job.state, paused=False, paused_at=None, pause_note=None, resumed_at=now
            )

    async def trigger(self, name: str) -> None:
        """See :meth:`Store.trigger`: the watchers are told at once.

        Raises:
            LookupError: The job is not registered.
            RuntimeError: The store is not being served.
        """
        self._check_serving()
        now = self._now()
        await trio.lowlevel.checkpoint()
        job = self._found(name)
        if job.state.triggered_at is None:
            job.state = attrs.evolve(job.state, triggered_at=now)
        self._notify_triggers(name)

    # -- reminders ------------------------------------------------------------------------

    async def _of(self, name: str) -> dict[str, _Reminder]:
        self._check_serving()
        await trio.lowlevel.checkpoint()
        return self._reminders.setdefault(name, {})

    def _find(self, name: str, key: str, fence: int) -> _Reminder | None:
        found = self._reminders.get(name, {}).get(key)
        return found if found is not None and found.fence == fence else None

    async def set_reminder(
        self, name: str, key: str, *, fire_at: datetime.datetime, payload: str
    ) -> Reminder:
        fire_at = utc(fire_at, "fire_at")
        found = await self._of(name)
        found[key] = made = _Reminder(key, next(self._fences), fire_at, fire_at, payload)
        self._reminder_set(name)
        return made.pending()

    async def cancel_reminder(self, name: str, key: str) -> bool:
        return (await self._of(name)).pop(key, None) is not None

    async def get_reminder(self, name: str, key: str) -> Reminder | None:
        found = (await self._of(name)).get(key)
        return None if found is None or found.failed else found.pending()

    async def pending_reminders(self, name: str, *, limit: int) -> list[Reminder]:
        check_limit(limit)
        pending = self._pending(await self._of(name))
        return [r.pending() for r in pending[:limit]]

    async def failed_reminders(self, name: str, *, limit: int) -> list[Reminder]:
        check_limit(limit)
        failed = [r for r in (await self._of(name)).values() if r.failed]
        failed.sort(key=lambda r: (r.fire_at, r.fence))
        return [r.record(r.attempts) for r in failed[:limit]]

    async def count_reminders(self, name: str) -> int:
        return sum(not r.failed for r in (await self._of(name)).values())

    async def next_reminder_due(self, name: str) -> datetime.datetime | None:
        found = await self._of(name)
        return min((r.due_at for r in found.values() if not r.failed), default=None)

    @staticmethod
    def _pending(found: dict[str, _Reminder]) -> list[_Reminder]:
        pending = [r for r in found.values() if not r.failed]
        pending.sort(key=lambda r: (r.due_at, r.fence))
        return pending

    async def claim_reminders(
        self, name: str, *, now: datetime.datetime, claim_ttl: float, limit: int
    ) -> list[Reminder]:
        now = utc(now, "now")
        due = [r for r in self._pending(await self._of(name)) if r.due_at <= now][:limit]
        until = now + datetime.timedelta(seconds=claim_ttl)
        for r in due:
            r.due_at = until
            r.attempts += 1
        return [r.record(r.attempts) for r in due]

    async def complete_reminder(self, name: str, key: str, fence: int) -> bool:
        await self._of(name)
        if self._find(name, key, fence) is None:
            return False
        del self._reminders[name][key]
        return True

    async def retry_reminder(
        self,
        name: str,
        key: str,
        fence: int,
        *,
        now: datetime.datetime,
        delay: float | None,
        error: str | None,
    ) -> None:
        now = utc(now, "now")
        await self._of(name)
        found = self._find(name, key, fence)
        if found is None:
            return
        found.error = error
        if delay is None:
            found.failed = True
        else:
            found.due_at = now + datetime.timedelta(seconds=delay)

    async def release_reminder(
        self, name: str, key: str, fence: int, *, now: datetime.datetime
    ) -> None:
        now = utc(now, "now")
        await self._of(name)
        found = self._find(name, key, fence)
        if found is not None:
            found.due_at = now
            found.attempts -= 1
