"""The :class:`Store` interface, and the records it returns."""

from __future__ import annotations

import abc
import datetime
import logging
from collections.abc import Awaitable, Callable, Iterable

import attrs
import trio

from .._db import FailureStreak, Fault
from .._db.calls import seconds

_log = logging.getLogger("periodic")

#: Outcomes that count as a failure in :attr:`JobState.consecutive_failures`.
FAILURES = frozenset({"error", "timeout"})

#: What :meth:`Store.claim` takes as its ``trigger``.
TRIGGERS = (None, "local", "store")


class JobPaused(Exception):
    """A claim for a scheduled tick was refused because the job is paused in the store."""


def _count(option: str, value: object, what: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{option} must be an int >= 1{what}, got {value!r}")
    if value < 1:
        raise ValueError(f"{option} must be an int >= 1{what}, got {value!r}")
    return value


def check_history(value: object) -> int:
    """The ``history`` option of every store: runs kept per job.

    Raises:
        TypeError: Not an int.
        ValueError: Less than 1.
    """
    return _count("history", value, " (runs kept per job)")


def check_overdue_after(value: object) -> float | None:
    """The ``overdue_after`` of :meth:`Store.register`: ``None``, or seconds.

    Raises:
        TypeError: Neither ``None`` nor a number.
        ValueError: Not positive and finite.
    """
    return None if value is None else seconds("overdue_after", value)


def check_trigger(value: object) -> str | None:
    """The ``trigger`` of :meth:`Store.claim`.

    Raises:
        ValueError: Not ``None``, ``"local"`` or ``"store"``.
    """
    if value not in TRIGGERS:
        raise ValueError(f'trigger must be None, "local" or "store", got {value!r}')
    return value


@attrs.frozen(kw_only=True)
class JobState:
    """What a store knows of a job; see :meth:`Store.jobs`.

    Attributes:
        name: The job's name, its durable identity.
        schedule: The job's schedule as text (``"every 60s"``, ``"cron 0 2 * * * Europe/Berlin"``).
        anchor: Where the job's interval grid starts (aware UTC): slots are ``anchor + k *
            every``. Set with the job's first record, never moved.
        last_slot: The latest scheduled slot claimed (aware UTC), or ``None``. A
            triggered run (see :meth:`Store.claim`) never moves it, nor the other
            ``last_*`` fields but :attr:`last_ok_at`.
        last_outcome: How the run of the latest scheduled slot ended (``"ok"``,
            ``"error"``, ``"timeout"``, ``"cancelled"``), or ``None`` until it ends.
        last_node: The node that claimed the latest scheduled slot.
        last_fence: The fence the latest scheduled slot was claimed with, or ``None``.
        last_started_at: When the run of the latest scheduled slot started (aware UTC).
        last_finished_at: When the run of the latest scheduled slot ended (aware UTC).
        consecutive_failures: Scheduled runs in a row, up to the latest scheduled slot's
            once it ended, whose outcome was ``error`` or ``timeout``.
        paused: Whether the job is paused in the store (:meth:`Store.pause`): its
            scheduled ticks start no run, in any process.
        paused_at: When the current pause began (the store's clock), or ``None`` when the
            job is not paused.
        pause_note: The note given with the current pause, or ``None``.
        triggered_at: When a run was asked for with :meth:`Store.trigger` (the store's
            clock) that no process has taken yet, or ``None``.
        overdue_after: Seconds without a run that ended ``ok`` after which the job is
            overdue, as the latest :meth:`Store.register` gave it, or ``None``.
        registered_at: When the job's record was made (the store's clock); never moved.
        resumed_at: When the job was last resumed (the store's clock), or ``None``.
        last_ok_at: When the latest run that ended ``ok`` ended (a triggered run's
            too), or ``None``.
        overdue: Whether the job is overdue, judged by the store on its own clock as it
            read the record: ``overdue_after`` is set, the job is not paused, and at least
            ``overdue_after`` seconds have passed since the latest of ``last_ok_at``,
            ``registered_at`` and ``resumed_at``.

    ``==`` leaves out ``registered_at`` and ``last_ok_at`` (a store's clock reading, and a
    copy of a finished run's time): two records of the same runs compare equal.
    """

    name: str
    schedule: str
    anchor: datetime.datetime
    last_slot: datetime.datetime | None = None
    last_outcome: str | None = None
    last_node: str | None = None
    last_fence: int | None = None
    last_started_at: datetime.datetime | None = None
    last_finished_at: datetime.datetime | None = None
    consecutive_failures: int = 0
    paused: bool = False
    paused_at: datetime.datetime | None = None
    pause_note: str | None = None
    triggered_at: datetime.datetime | None = None
    overdue_after: float | None = None
    # (Left out of ==: a record's equality is what its runs wrote, as before these fields.)
    registered_at: datetime.datetime | None = attrs.field(default=None, eq=False)
    resumed_at: datetime.datetime | None = None
    last_ok_at: datetime.datetime | None = attrs.field(default=None, eq=False)
    overdue: bool = False


def judged(state: JobState, now: datetime.datetime) -> JobState:
    """``state`` with :attr:`JobState.overdue` judged at ``now``, the store's clock: how
    every store judges it, once it has read the record."""
    since = [t for t in (state.last_ok_at, state.registered_at, state.resumed_at) if t is not None]
    overdue = (
        state.overdue_after is not None
        and not state.paused
        and bool(since)
        and (now - max(since)).total_seconds() >= state.overdue_after
    )
    return state if overdue == state.overdue else attrs.evolve(state, overdue=overdue)


@attrs.frozen(kw_only=True)
class RunRecord:
    """One run of a job, as the store recorded it; see :meth:`Store.runs`.

    Attributes:
        slot: The slot the run was claimed for (aware UTC).
        node: The node that ran it.
        fence: Its leadership fence, or ``None``.
        started_at: When it started (aware UTC).
        finished_at: When it ended, or ``None`` while it runs (or if its process died).
        outcome: ``"ok"``, ``"error"``, ``"timeout"``, ``"cancelled"``, or ``None`` while
            it runs.
        duration: Seconds it took, or ``None``.
        error: The error's text (at most 2 000 characters), or ``None``.
        triggered: Whether the run was triggered (``job.trigger()``, or
            :meth:`Store.trigger`) rather than scheduled: its ``slot`` is then the
            time it was asked for, beside the schedule's grid.
    """

    slot: datetime.datetime
    node: str
    fence: int | None
    started_at: datetime.datetime
    finished_at: datetime.datetime | None = None
    outcome: str | None = None
    duration: float | None = None
    error: str | None = None
    triggered: bool = False


class Store(abc.ABC):
    """Where jobs keep their durable state: the slots they claimed and their runs.

    One store serves any number of jobs (``Periodic(store=...)``), each known by its
    ``name``; serve it with ``await nursery.start(store.serve)`` before the jobs. The
    scheduler calls :meth:`register` when a job is served, :meth:`claim` before each run
    and :meth:`finish` after it, and watches for triggers with :meth:`watch_triggers`;
    :meth:`jobs`, :meth:`job`, :meth:`runs`, :meth:`pause`, :meth:`resume` and
    :meth:`trigger` are for people and tools. See the "Writing a store" section of the
    docs for the contract a backend must keep; every method may raise what its database
    raises (the scheduler then skips the tick with ``Skipped(reason="store_error")`` and
    goes on).
    """

    #: Seconds between reads of the store, while triggers are watched, for the triggers
    #: other processes asked for; ``None`` when the store hears of every one itself.
    trigger_poll: float | None = None

    # Jobs being served with this store (see attach()); set when the last one leaves.
    _attached: int = 0
    _detached: trio.Event | None = None
    # In-process watchers of watch_triggers(), by name; set when one is added.
    _trigger_watchers: dict[str, list[Callable[[], object]]] | None = None
    _watchers_added: trio.Event | None = None
    # Set to read the pending triggers at once rather than at the next poll.
    _poll_soon: trio.Event | None = None

    def attach(self) -> None:
        """A job starts serving with this store; :meth:`detach` follows when it has stopped
        (after its last run's end was recorded).

        ``Periodic.serve`` calls both. A backend's :meth:`serve` awaits
        :meth:`wait_detached` (shielded) before it closes, so that the jobs served in the
        same nursery as their store, all cancelled together, still record how their last
        runs ended.
        """
        self._attached += 1

    def detach(self) -> None:
        """A job that :meth:`attach` announced has stopped serving."""
        self._attached -= 1
        if not self._attached and self._detached is not None:
            self._detached.set()
            self._detached = None

    async def wait_detached(self) -> None:
        """Wait until no job is attached (at once if none is)."""
        while self._attached:
            if self._detached is None:
                self._detached = trio.Event()
            await self._detached.wait()

    @property
    @abc.abstractmethod
    def serving(self) -> bool:
        """Whether :meth:`serve` is running and the store can be used."""

    @abc.abstractmethod
    async def serve(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Make the store usable until cancelled.

        Raises:
            RuntimeError: The store is already being served.
        """

    @abc.abstractmethod
    async def register(
        self,
        name: str,
        *,
        schedule: str,
        anchor: datetime.datetime,
        overdue_after: float | None = None,
    ) -> JobState:
        """Make the job's record unless it exists, and return what the store knows.

        ``anchor`` is used only for a new record: an existing one keeps its own, and its
        ``registered_at``. ``schedule`` is stored as it is given, for people to read, and
        ``overdue_after`` (seconds, or ``None``) as it is given at every call: a new
        deploy may change either.

        Raises:
            TypeError, ValueError: ``overdue_after`` is neither ``None`` nor a positive,
                finite number of seconds.
        """

    @abc.abstractmethod
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
        """Claim ``slot`` for a run, atomically, and record the run's start.

        When ``fence`` is not ``None``, the claim succeeds only if ``fence`` is at least
        the highest fence ever claimed with (which it then raises). Runs beyond the
        store's ``history`` are pruned.

        ``trigger`` says why the run would start: ``None`` for a scheduled tick, which a
        pause in the store refuses (:class:`JobPaused`, and nothing is written);
        ``"local"`` for a run asked for in this process (``job.trigger()``), which runs a
        paused job too; ``"store"`` to take a trigger asked for with :meth:`trigger`: it
        runs a paused job too, and succeeds only if a trigger is pending, which it takes
        (clears) in the same transaction.

        A scheduled claim succeeds only if no scheduled slot at or after ``slot`` was
        claimed for the job, and makes ``slot`` the job's
        :attr:`~JobState.last_slot` (with ``last_node``, ``last_fence`` and
        ``last_started_at``). A triggered claim (``"local"`` or ``"store"``) is beside
        the schedule: its ``slot`` (the time it was asked for) may be at or before
        ``last_slot``, and it changes none of those fields, so the scheduled slots not
        yet claimed stay claimable. Its run's record says ``triggered=True``.

        Returns:
            A key of the run's record (for :meth:`finish`), or ``None`` when the claim was
            refused (with ``trigger="store"``: also when no trigger is pending).

        Raises:
            LookupError: The job was never registered.
            JobPaused: ``trigger`` is ``None`` and the job is paused in the store.
            ValueError: ``trigger`` is none of ``None``, ``"local"``, ``"store"``.
        """

    @abc.abstractmethod
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
        """Record the end of the run ``run`` (a key from :meth:`claim`).

        Updates the job's ``last_outcome``, ``last_finished_at`` and
        ``consecutive_failures`` when the run is the latest scheduled slot's (never for
        a triggered run), and its :attr:`~JobState.last_ok_at` (to the later of the
        two) for any run that ended ``ok``; a run whose record was pruned is ignored.
        """

    @abc.abstractmethod
    async def jobs(self) -> list[JobState]:
        """Every job the store knows, by name."""

    @abc.abstractmethod
    async def job(self, name: str) -> JobState | None:
        """The job called ``name``, or ``None``."""

    @abc.abstractmethod
    async def runs(self, name: str, *, limit: int = 20) -> list[RunRecord]:
        """The job's latest runs, newest first, at most ``limit``."""

    # -- operating: pause, resume, trigger ------------------------------------------------

    async def pause(self, name: str, *, note: str | None = None) -> None:
        """Pause the job in the store: from their next tick on, the processes serving it
        start no scheduled run (a claim refuses them with :class:`JobPaused`) until
        :meth:`resume`. ``paused_at`` is the store's clock; pausing a paused job replaces
        its note and keeps its ``paused_at``.

        Every store of :mod:`periodic.stores` has it; a store of your own written without
        it keeps working for everything else.

        Raises:
            LookupError: The job was never registered.
            NotImplementedError: The store cannot pause jobs.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot pause jobs")

    async def resume(self, name: str) -> None:
        """Resume a paused job (nothing happens to one that is not paused); its
        ``resumed_at`` is the store's clock, and its overdue count starts again from it.

        Raises:
            LookupError: The job was never registered.
            NotImplementedError: The store cannot pause jobs.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot pause jobs")

    async def trigger(self, name: str) -> None:
        """Ask for one run of the job now, paused or not: record a pending trigger
        (``triggered_at``, the store's clock; a second trigger while one is pending is
        the same one) and tell the processes serving the job, which take it with
        ``claim(..., trigger="store")``.

        Raises:
            LookupError: The job was never registered.
            NotImplementedError: The store cannot trigger jobs.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot trigger jobs")

    def watch_triggers(self, name: str, notify: Callable[[], object]) -> Callable[[], None]:
        """Call ``notify()`` whenever a trigger may be pending for ``name``: at once
        when this process asks for one, and as the store hears of other processes'
        (by polling every :attr:`trigger_poll` seconds while it is served, or as the
        database tells it); again while one stays pending.

        ``notify`` must be cheap and must not block; an exception it raises is logged
        and dropped.

        Returns:
            A function that stops the watching (calling it again does nothing).
        """
        watchers = self._trigger_watchers
        if watchers is None:
            watchers = self._trigger_watchers = {}
        mine = watchers.setdefault(name, [])
        mine.append(notify)
        added, self._watchers_added = self._watchers_added, None
        if added is not None:
            added.set()

        def unwatch() -> None:
            if notify in mine:
                mine.remove(notify)
                if not mine and watchers.get(name) is mine:
                    del watchers[name]

        return unwatch

    @property
    def _watched(self) -> bool:
        """Whether any trigger is watched in this process."""
        return bool(self._trigger_watchers)

    async def _wait_watched(self) -> None:
        """Return once a trigger is watched (at once if one is)."""
        while not self._watched:
            if self._watchers_added is None:
                self._watchers_added = trio.Event()
            await self._watchers_added.wait()

    def _notify_triggers(self, name: str) -> None:
        """Tell this process's watchers of ``name`` that a trigger may be pending."""
        for notify in list((self._trigger_watchers or {}).get(name, ())):
            try:
                notify()
            except Exception:
                _log.exception("%r: a watcher of the triggers of %r failed", self, name)

    def _poll_now(self) -> None:
        """Read the pending triggers at once (something may have been missed)."""
        if self._poll_soon is not None:
            self._poll_soon.set()

    async def _poll_triggers(self, pending: Callable[[], Awaitable[Iterable[str]]]) -> None:
        """Until cancelled, while a trigger is watched: every :attr:`trigger_poll`
        seconds (and at once when watching begins, or when :meth:`_poll_now` asks),
        notify the watchers of every job that ``await pending()`` names. A backend's
        ``serve`` runs it; a failed read is logged, and tried again at the next poll."""
        streak = FailureStreak()
        while True:
            await self._wait_watched()
            try:
                names = await pending()
            except Exception as exc:
                if streak.failed(trio.current_time(), Fault.TRANSIENT):
                    _log.warning(
                        "%r: reading the pending triggers failed (%d time(s) in a row): %r",
                        self,
                        streak.attempts,
                        exc,
                    )
            else:
                if streak.attempts:
                    _log.info(
                        "%r: read the pending triggers after %d failure(s)",
                        self,
                        streak.succeeded(),
                    )
                for name in names:
                    self._notify_triggers(name)
            self._poll_soon = soon = trio.Event()
            assert self.trigger_poll is not None
            with trio.move_on_after(self.trigger_poll):
                await soon.wait()


def check_limit(limit: object) -> int:
    """The ``limit`` of :meth:`Store.runs`.

    Raises:
        TypeError: Not an int.
        ValueError: Less than 1.
    """
    return _count("limit", limit)


# -- reminders --------------------------------------------------------------------------------

#: The longest reminder key, in characters.
MAX_KEY = 200


@attrs.frozen(kw_only=True)
class Reminder:
    """One version of a durable reminder; see :class:`periodic.reminders.Reminders`.

    Attributes:
        key: Its key, unique within its :class:`~periodic.reminders.Reminders`' name.
        fire_at: When it is due (aware UTC).
        payload: The JSON value it was set with (decoded afresh from the store).
        fence: The id of this version: setting the key again makes a new version with a
            larger fence. Fences grow strictly across all keys and names of one store,
            so a handler can dedupe (and order) deliveries by it.
        attempt: For a delivery, which delivery of this version it is (1 for the first;
            more after a failed handler or a process that died mid-delivery). For a
            pending reminder, the delivery it waits for; for a failed one, the last.
        error: For a reminder kept as failed (or waiting to be retried), what its last
            delivery raised, as text; else ``None``.
    """

    key: str
    fire_at: datetime.datetime
    payload: object
    fence: int
    attempt: int = 1
    error: str | None = None


class ReminderStore(abc.ABC):
    """Where :class:`~periodic.reminders.Reminders` keep their reminders.

    Every store of :mod:`periodic.stores` implements it. Keys are namespaced by ``name``
    (the ``Reminders``' name). A reminder is *due* when its due time has come: its
    ``fire_at`` at first, then the time of its next retry, or the end of the claim of a
    delivery under way. Payloads are handed over as JSON text and come back decoded.
    Times are aware datetimes; a store with a clock of its own (PostgreSQL) judges
    claims and retries by that clock rather than by the ``now`` it is given.
    """

    #: Seconds between reads of the store by a waiting deliverer, for what other
    #: processes set; ``None`` when the store tells of every change itself.
    reminder_poll: float | None = None

    # In-process listeners of listen_reminders(), by name.
    _reminder_listeners: dict[str, list[Callable[[], object]]] | None = None

    @abc.abstractmethod
    async def set_reminder(
        self, name: str, key: str, *, fire_at: datetime.datetime, payload: str
    ) -> Reminder:
        """Set the reminder ``key`` (replacing any version of it, a failed one included)
        with a new fence, atomically; return it once committed."""

    @abc.abstractmethod
    async def cancel_reminder(self, name: str, key: str) -> bool:
        """Remove the reminder ``key``, pending or failed; whether there was one."""

    @abc.abstractmethod
    async def get_reminder(self, name: str, key: str) -> Reminder | None:
        """The pending (not failed) reminder ``key``, or ``None``."""

    @abc.abstractmethod
    async def pending_reminders(self, name: str, *, limit: int) -> list[Reminder]:
        """Pending reminders, soonest due first (then by fence), at most ``limit``."""

    @abc.abstractmethod
    async def failed_reminders(self, name: str, *, limit: int) -> list[Reminder]:
        """Reminders kept as failed, oldest ``fire_at`` first, at most ``limit``."""

    @abc.abstractmethod
    async def count_reminders(self, name: str) -> int:
        """How many reminders are pending (not failed)."""

    @abc.abstractmethod
    async def next_reminder_due(self, name: str) -> datetime.datetime | None:
        """The soonest due time of a pending reminder (a claimed one: its claim's end)."""

    @abc.abstractmethod
    async def claim_reminders(
        self, name: str, *, now: datetime.datetime, claim_ttl: float, limit: int
    ) -> list[Reminder]:
        """Claim at most ``limit`` due reminders for delivery, soonest due first,
        atomically: each is due again only ``claim_ttl`` seconds later, and its attempt
        counts one more. Returns them with that attempt."""

    @abc.abstractmethod
    async def complete_reminder(self, name: str, key: str, fence: int) -> bool:
        """Delete the reminder ``key`` if its version is still ``fence`` (a newer version
        set meanwhile stays); whether it was deleted."""

    @abc.abstractmethod
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
        """A delivery of version ``fence`` failed: make it due ``delay`` seconds from
        now, or keep it as failed when ``delay`` is ``None``. A newer version is left
        alone."""

    @abc.abstractmethod
    async def release_reminder(
        self, name: str, key: str, fence: int, *, now: datetime.datetime
    ) -> None:
        """A delivery of version ``fence`` was stopped before it ended (a shutdown): make
        it due now, and take back the attempt it counted."""

    async def listen_reminders(
        self,
        name: str,
        notify: Callable[[], object],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Call ``notify()`` when a reminder of ``name`` may have become due sooner,
        until cancelled: here, when this process set one; a backend that hears of other
        processes' changes does more."""
        listeners = self._reminder_listeners
        if listeners is None:
            listeners = self._reminder_listeners = {}
        mine = listeners.setdefault(name, [])
        mine.append(notify)
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            mine.remove(notify)

    def _reminder_set(self, name: str) -> None:
        """Tell this process's listeners of ``name`` that a reminder was set."""
        listeners = self._reminder_listeners
        for notify in listeners.get(name, ()) if listeners else ():
            notify()


def check_reminder_limit(limit: object) -> int:
    """The ``limit`` of the reminder listings.

    Raises:
        TypeError: Not an int.
        ValueError: Less than 1.
    """
    return _count("limit", limit)
